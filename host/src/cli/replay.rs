//! `weir replay`: the command-line side of [`weir::replay`].

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use weir::bus::NatsBus;
use weir::manifest::{LogFormat, NatsSettings};
use weir::replay::{Bound, Input, Replay, ReplayOptions, Speed};
use weir::streams::Definition;

/// Runs the manifest's components over recorded events on a virtual
/// clock; writes every publish, cache write, dead letter and settle, in
/// order, as NDJSON (same input, same bytes). Nothing goes live.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The manifest (TOML).
    pub manifest: PathBuf,
    /// An NDJSON file: trades, `{subject, data}` envelopes or `weir record` lines.
    #[arg(long, conflicts_with = "stream", required_unless_present = "stream")]
    pub from: Option<PathBuf>,
    /// A JetStream stream, read in order (no durable consumer is made).
    #[arg(long)]
    pub stream: Option<String>,
    /// NATS server for --stream.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub server: String,
    /// First event: a sequence (the event's number in the file, or the stream sequence) or an RFC 3339 time.
    #[arg(long)]
    pub start: Option<Bound>,
    /// Last event, as --start.
    #[arg(long)]
    pub end: Option<Bound>,
    /// `max`, or how many times faster than event time.
    #[arg(long, default_value = "max")]
    pub speed: Speed,
    /// Output file (default: standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of WASI random inside components.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stream definitions (nats CLI JSON) that jetstream-publish stores into.
    #[arg(long)]
    pub streams: Option<PathBuf>,
}

/// Streams (name, subjects) from a directory of definitions.
fn stream_subjects(dir: &Path) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    Ok(weir::streams::load_dir(dir)?
        .into_iter()
        .filter_map(|(_, d)| match d {
            Definition::Stream(c) => Some((c.name.clone(), c.subjects.clone())),
            Definition::Consumer { .. } => None,
        })
        .collect())
}

pub(super) fn writer(out: Option<&Path>) -> anyhow::Result<Box<dyn Write + Send>> {
    Ok(match out {
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
    })
}

/// Runs a replay and prints a summary on stderr.
pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    super::init_logging_at(LogFormat::Human, "warn");
    let manifest = weir::Manifest::load(&args.manifest, &weir::EnvOverrides::from_process())?;
    let manifest = weir::registry::resolve(&manifest).await?;
    let options = ReplayOptions {
        start: args.start,
        end: args.end,
        speed: args.speed,
        seed: args.seed,
        streams: match &args.streams {
            Some(dir) => stream_subjects(dir)?,
            None => Vec::new(),
        },
        ..ReplayOptions::default()
    };
    let input = match (&args.from, &args.stream) {
        (Some(file), None) => Input::file(file).await?,
        (None, Some(name)) => {
            let nats = NatsBus::connect(
                &NatsSettings::with_url(&args.server),
                Path::new("."),
                "weir replay",
            )
            .await?;
            Input::stream(nats.jetstream(), name, args.start).await?
        }
        _ => anyhow::bail!("give one of --from FILE or --stream NAME"),
    };
    let replay = Replay::new(&manifest, writer(args.out.as_deref())?, options)?;
    let report = replay.run(input).await?;
    for (place, why) in report.skipped.iter().take(20) {
        eprintln!("skipped {place}: {why}");
    }
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "replayed {} events ({} deliveries) in {:.3} s: {:.0} events/s; {} records{}{}",
        report.events,
        report.deliveries,
        secs,
        report.events as f64 / secs,
        report.records,
        args.out
            .as_ref()
            .map(|p| format!(" written to {}", p.display()))
            .unwrap_or_default(),
        if report.skipped.is_empty() {
            String::new()
        } else {
            format!("; {} lines skipped", report.skipped.len())
        },
    );
    Ok(())
}
