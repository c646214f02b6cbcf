//! Streams and consumers as files, in the nats CLI's JSON format:
//! `weir streams apply DIR` creates or updates them, idempotently.
//!
//! A stream file is a stream config (`nats stream add --config FILE`). A
//! consumer file is `{"stream_name": "...", "config": {...}}`, the shape
//! `nats consumer info --json` prints.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, ErrorCode, consumer::pull, context::GetStreamErrorKind, stream};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::Value;

/// One definition read from a file.
#[derive(Debug, Clone)]
pub enum Definition {
    /// A stream.
    Stream(Box<stream::Config>),
    /// A durable consumer on a stream.
    Consumer {
        /// The stream it reads.
        stream: String,
        /// Its config.
        config: Box<pull::Config>,
    },
}

#[derive(Deserialize)]
struct ConsumerFile {
    stream_name: String,
    config: pull::Config,
}

/// Parses one definition file.
pub fn parse(path: &Path, text: &str) -> anyhow::Result<Definition> {
    let value: Value =
        serde_json::from_str(text).with_context(|| format!("{}: not JSON", path.display()))?;
    if value.get("stream_name").is_some() {
        let f: ConsumerFile = serde_json::from_value(value)
            .with_context(|| format!("{}: not a consumer definition", path.display()))?;
        if f.config.durable_name.is_none() {
            bail!(
                "{}: a consumer definition needs a durable_name",
                path.display()
            );
        }
        return Ok(Definition::Consumer {
            stream: f.stream_name,
            config: Box::new(f.config),
        });
    }
    let config: stream::Config = serde_json::from_value(value)
        .with_context(|| format!("{}: not a stream definition", path.display()))?;
    if config.name.is_empty() {
        bail!("{}: the stream has no name", path.display());
    }
    Ok(Definition::Stream(Box::new(config)))
}

/// Reads every `*.json` file of a directory, streams before consumers and
/// source streams before the streams that source them.
pub fn load_dir(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Definition)>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut defs = Vec::new();
    for p in paths {
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        defs.push((p.clone(), parse(&p, &text)?));
    }
    defs.sort_by_key(|(_, d)| match d {
        Definition::Stream(c) if c.sources.as_ref().is_none_or(Vec::is_empty) => 0,
        Definition::Stream(_) => 1,
        Definition::Consumer { .. } => 2,
    });
    Ok(defs)
}

/// Top-level fields of `wanted` whose value differs in `actual`.
fn changed_fields(
    wanted: &impl serde::Serialize,
    actual: &impl serde::Serialize,
) -> BTreeSet<String> {
    let (Ok(Value::Object(w)), Ok(Value::Object(a))) =
        (serde_json::to_value(wanted), serde_json::to_value(actual))
    else {
        return BTreeSet::new();
    };
    w.iter()
        .filter(|(k, v)| a.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Creates or updates each definition; returns one line per definition
/// saying what changed.
pub async fn apply(
    js: &jetstream::Context,
    defs: &[(PathBuf, Definition)],
) -> anyhow::Result<Vec<String>> {
    let mut report = Vec::new();
    for (path, def) in defs {
        let line = match def {
            Definition::Stream(wanted) => apply_stream(js, wanted).await,
            Definition::Consumer { stream, config } => apply_consumer(js, stream, config).await,
        }
        .with_context(|| format!("applying {}", path.display()))?;
        report.push(line);
    }
    Ok(report)
}

async fn apply_stream(js: &jetstream::Context, wanted: &stream::Config) -> anyhow::Result<String> {
    let name = &wanted.name;
    match js.get_stream(name).await {
        Ok(mut s) => {
            let actual = s.info().await?.config.clone();
            let diff = changed_fields(wanted, &actual);
            if diff.is_empty() {
                return Ok(format!("stream {name}: unchanged"));
            }
            js.update_stream(wanted)
                .await
                .with_context(|| format!("cannot update stream {name}"))?;
            Ok(format!(
                "stream {name}: updated {}",
                diff.into_iter().collect::<Vec<_>>().join(", ")
            ))
        }
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(err) if err.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            js.create_stream(wanted.clone())
                .await
                .with_context(|| format!("cannot create stream {name}"))?;
            Ok(format!("stream {name}: created"))
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot look up stream {name}"))),
    }
}

async fn apply_consumer(
    js: &jetstream::Context,
    stream_name: &str,
    wanted: &pull::Config,
) -> anyhow::Result<String> {
    let durable = wanted.durable_name.clone().unwrap_or_default();
    let stream = js.get_stream(stream_name).await.with_context(|| {
        format!("consumer {durable} needs stream {stream_name}, which does not exist")
    })?;
    let verb = match stream.consumer_info(&durable).await {
        Ok(info) => {
            let diff = changed_fields(wanted, &info.config);
            if diff.is_empty() {
                return Ok(format!("consumer {stream_name}/{durable}: unchanged"));
            }
            format!(
                "updated {}",
                diff.into_iter().collect::<Vec<_>>().join(", ")
            )
        }
        Err(_) => "created".to_owned(),
    };
    stream
        .create_consumer(wanted.clone())
        .await
        .with_context(|| format!("cannot create or update consumer {durable} on {stream_name}"))?;
    Ok(format!("consumer {stream_name}/{durable}: {verb}"))
}

/// One line per stream: name, subjects, messages, bytes, consumers.
pub async fn list(js: &jetstream::Context) -> anyhow::Result<Vec<String>> {
    let mut infos: Vec<stream::Info> = js
        .streams()
        .try_collect()
        .await
        .context("cannot list streams")?;
    infos.sort_by(|a, b| a.config.name.cmp(&b.config.name));
    Ok(infos
        .iter()
        .map(|i| {
            format!(
                "{:<16} {:<40} {:>10} msgs {:>12} bytes {:>3} consumers",
                i.config.name,
                i.config.subjects.join(","),
                i.state.messages,
                i.state.bytes,
                i.state.consumer_count
            )
        })
        .collect())
}

/// A stream's config and state as pretty JSON.
pub async fn info(js: &jetstream::Context, name: &str) -> anyhow::Result<String> {
    let mut s = js
        .get_stream(name)
        .await
        .with_context(|| format!("no stream {name}"))?;
    let info = s.info().await?;
    let st = &info.state;
    let v = serde_json::json!({
        "config": info.config,
        "state": {
            "messages": st.messages,
            "bytes": st.bytes,
            "first_seq": st.first_sequence,
            "last_seq": st.last_sequence,
            "consumer_count": st.consumer_count,
        },
    });
    Ok(serde_json::to_string_pretty(&v)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_definitions_parse() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/streams"));
        let defs = load_dir(dir).unwrap();
        let names: Vec<String> = defs
            .iter()
            .map(|(_, d)| match d {
                Definition::Stream(c) => c.name.clone(),
                Definition::Consumer { stream, config } => {
                    format!("{stream}/{}", config.durable_name.clone().unwrap())
                }
            })
            .collect();
        for want in [
            "TRADE",
            "RECORD",
            "ALERTS",
            "JOBS",
            "DLQ",
            "MARKET_DATA",
            "PREDICTIONS",
            "TRADE/sma-crossover",
        ] {
            assert!(
                names.contains(&want.to_owned()),
                "{want} missing from {names:?}"
            );
        }
        // RECORD sources TRADE, so TRADE is applied first; consumers come last.
        let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
        assert!(pos("TRADE") < pos("RECORD"));
        assert_eq!(pos("TRADE/sma-crossover"), names.len() - 1);
        let Definition::Stream(trade) = &defs[pos("TRADE")].1 else {
            panic!()
        };
        assert_eq!(trade.max_age, std::time::Duration::from_secs(5));
        assert!(trade.no_ack);
    }

    #[test]
    fn bad_files_are_named() {
        let e = parse(Path::new("x.json"), "{").unwrap_err();
        assert!(format!("{e:#}").contains("x.json"));
        let e = parse(
            Path::new("c.json"),
            r#"{"stream_name":"T","config":{"ack_policy":"explicit","replay_policy":"instant"}}"#,
        )
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("c.json")
                && (msg.contains("durable_name") || msg.contains("missing field")),
            "{msg}"
        );
    }
}
