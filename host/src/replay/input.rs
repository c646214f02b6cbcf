//! Recorded events for a replay: an NDJSON file (the feed's formats or
//! `weir record`'s), or a JetStream stream read in order by an ephemeral
//! ordered consumer (no durable consumer is created).

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::BufRead as _;

use crate::bus::BusMessage;

/// One recorded event.
#[derive(Debug, Clone)]
pub struct Event {
    /// Its sequence: the stream sequence, or its number in the file (from 1).
    pub seq: u64,
    /// When it happened: the time the replay's clock moves to.
    pub time: Option<SystemTime>,
    /// The message.
    pub msg: BusMessage,
}

/// Where a replay starts or ends: a sequence or a time (RFC 3339).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// An event sequence (inclusive).
    Seq(u64),
    /// An event time (inclusive).
    Time(SystemTime),
}

impl FromStr for Bound {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(n) = s.parse::<u64>() {
            return Ok(Bound::Seq(n));
        }
        humantime::parse_rfc3339_weak(s)
            .map(Bound::Time)
            .map_err(|e| format!("{s:?} is neither a sequence nor an RFC 3339 time: {e}"))
    }
}

impl Bound {
    fn before(&self, e: &Event) -> bool {
        match self {
            Bound::Seq(n) => e.seq < *n,
            Bound::Time(t) => e.time.is_some_and(|et| et < *t),
        }
    }
    fn after(&self, e: &Event) -> bool {
        match self {
            Bound::Seq(n) => e.seq > *n,
            Bound::Time(t) => e.time.is_some_and(|et| et > *t),
        }
    }
}

/// A line as `weir record` writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedLine {
    /// The subject it was published on.
    pub subject: String,
    /// When it was received (RFC 3339).
    pub time: String,
    /// Headers, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Payload, when it is UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// Payload as base64, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl RecordedLine {
    /// The line for a message received at `time`.
    pub fn new(msg: &BusMessage, time: SystemTime) -> Self {
        let (payload, payload_base64) = crate::bus::text_or_base64(&msg.payload);
        RecordedLine {
            subject: msg.subject.clone(),
            time: humantime::format_rfc3339_nanos(time).to_string(),
            headers: msg.headers.clone(),
            payload,
            payload_base64,
        }
    }
}

/// A time field: RFC 3339 text, or milliseconds since the epoch.
fn time_of(v: &Value) -> Option<SystemTime> {
    match v {
        Value::String(s) => humantime::parse_rfc3339_weak(s).ok(),
        Value::Number(n) => n
            .as_u64()
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
        _ => None,
    }
}

/// The fields of a trade line, read without building a JSON tree (the
/// common case, and the replay's hot path).
#[derive(Deserialize)]
struct TradeLine<'a> {
    #[serde(borrow, default)]
    symbol: Option<&'a str>,
    #[serde(borrow, default)]
    s: Option<&'a str>,
    #[serde(default)]
    ts: Option<u64>,
    #[serde(default, rename = "T")]
    t: Option<u64>,
    #[serde(default)]
    subject: Option<serde::de::IgnoredAny>,
}

/// Reads one line: `weir record`'s format, a `{subject, data, time?}`
/// envelope or a trade (timed by its `ts`, `T` or `timestamp`).
pub fn parse_line(line: &str) -> Result<(BusMessage, Option<SystemTime>), String> {
    parse_owned_line(line.to_owned())
}

/// [`parse_line`] for a line the caller gives up: a trade's payload is
/// the line itself, moved rather than copied.
fn parse_owned_line(line: String) -> Result<(BusMessage, Option<SystemTime>), String> {
    if let Ok(TradeLine {
        symbol,
        s,
        ts,
        t,
        subject: None,
    }) = serde_json::from_str::<TradeLine<'_>>(&line)
        && let Some(symbol) = symbol.or(s)
        && let Some(ms) = ts.or(t)
    {
        let subject = format!("TRADE.trade.{symbol}");
        let payload = if line.trim().len() == line.len() {
            line
        } else {
            line.trim().to_owned()
        };
        let msg = BusMessage::new(subject, payload);
        return Ok((
            msg,
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
        ));
    }
    let line = line.as_str();
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("subject").is_some()
        && (v.get("payload").is_some() || v.get("payload_base64").is_some())
    {
        let r: RecordedLine =
            serde_json::from_value(v).map_err(|e| format!("bad recorded line: {e}"))?;
        let payload = crate::bus::bytes_from(r.payload.as_deref(), r.payload_base64.as_deref())?;
        let time = humantime::parse_rfc3339_weak(&r.time)
            .map_err(|e| format!("bad time {:?}: {e}", r.time))?;
        let mut msg = BusMessage::new(r.subject, payload);
        msg.headers = r.headers;
        return Ok((msg, Some(time)));
    }
    let msg = crate::feed::parse_line(line)?;
    let time = ["time", "ts", "T", "timestamp"]
        .iter()
        .find_map(|k| v.get(k).or_else(|| v.get("data")?.get(k)))
        .and_then(time_of);
    Ok((msg, time))
}

/// Where events come from.
pub enum Input {
    /// Lines of a file, read and parsed on a thread of their own (the
    /// replay itself is one sequential task), in order, in batches.
    File {
        /// Batches of parsed lines from the reader thread.
        batches: tokio::sync::mpsc::Receiver<Vec<Parsed>>,
        /// The batch being handed out, reversed (popped from the end).
        batch: Vec<Parsed>,
    },
    /// A stream, in sequence order.
    Stream {
        /// An ordered consumer from the first sequence asked for.
        messages: Box<jetstream::consumer::pull::Ordered>,
        /// The stream's last sequence when the replay started.
        last: u64,
    },
}

/// Lines that could not be read: (where, why).
pub type Skipped = Vec<(String, String)>;

/// A line read by the reader thread: an event, or why it was skipped.
pub enum Parsed {
    /// A readable line.
    Event(Event),
    /// An unreadable one: (where, why).
    Skipped(String, String),
    /// The file could not be read further.
    Failed(String),
}

/// Lines per batch sent by the reader thread.
const BATCH: usize = 256;
/// Batches the reader may run ahead (bounds the memory a replay takes).
const AHEAD: usize = 8;

/// Reads and parses `path` line by line into `tx`, until the end or until
/// the replay stops listening.
fn read_lines(name: String, file: std::fs::File, tx: tokio::sync::mpsc::Sender<Vec<Parsed>>) {
    let mut batch = Vec::with_capacity(BATCH);
    let (mut line, mut seq) = (0u64, 0u64);
    for text in std::io::BufReader::with_capacity(1 << 16, file).lines() {
        line += 1;
        let parsed = match text {
            Err(e) => Parsed::Failed(format!("cannot read {name}: {e}")),
            Ok(t) if t.trim().is_empty() => continue,
            Ok(t) => match parse_owned_line(t) {
                Ok((msg, time)) => {
                    seq += 1;
                    Parsed::Event(Event { seq, time, msg })
                }
                Err(e) => Parsed::Skipped(format!("{name}:{line}"), e),
            },
        };
        let failed = matches!(parsed, Parsed::Failed(_));
        batch.push(parsed);
        if batch.len() == BATCH || failed {
            batch.reverse();
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            if tx.blocking_send(full).is_err() || failed {
                return;
            }
        }
    }
    batch.reverse();
    let _ = tx.blocking_send(batch);
}

impl Input {
    /// Opens a file.
    pub async fn file(path: &Path) -> anyhow::Result<Input> {
        let f =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let (tx, batches) = tokio::sync::mpsc::channel(AHEAD);
        let name = path.display().to_string();
        std::thread::Builder::new()
            .name("weir-replay-input".into())
            .spawn(move || read_lines(name, f, tx))
            .context("cannot start the input reader")?;
        Ok(Input::File {
            batches,
            batch: Vec::new(),
        })
    }

    /// Opens an ordered, ephemeral read of a stream from `start`.
    pub async fn stream(
        js: &jetstream::Context,
        name: &str,
        start: Option<Bound>,
    ) -> anyhow::Result<Input> {
        let mut stream = js
            .get_stream(name)
            .await
            .with_context(|| format!("cannot open stream {name}"))?;
        let last = stream
            .info()
            .await
            .with_context(|| format!("cannot read stream {name}"))?
            .state
            .last_sequence;
        let deliver_policy = match start {
            None => DeliverPolicy::All,
            Some(Bound::Seq(n)) => DeliverPolicy::ByStartSequence {
                start_sequence: n.max(1),
            },
            Some(Bound::Time(t)) => DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from(t),
            },
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot read stream {name} in order"))?;
        let messages = consumer
            .messages()
            .await
            .with_context(|| format!("cannot read stream {name}"))?;
        Ok(Input::Stream {
            messages: Box::new(messages),
            last,
        })
    }

    /// The next event within `range`, `None` at the end; unreadable lines
    /// go to `skipped`.
    pub async fn next(
        &mut self,
        start: Option<Bound>,
        end: Option<Bound>,
        skipped: &mut Skipped,
    ) -> anyhow::Result<Option<Event>> {
        loop {
            let event = match self {
                Input::File { batches, batch } => {
                    if batch.is_empty() {
                        match batches.recv().await {
                            Some(b) => *batch = b,
                            None => return Ok(None),
                        }
                    }
                    match batch.pop() {
                        None => continue,
                        Some(Parsed::Event(e)) => e,
                        Some(Parsed::Skipped(place, why)) => {
                            skipped.push((place, why));
                            continue;
                        }
                        Some(Parsed::Failed(why)) => anyhow::bail!(why),
                    }
                }
                Input::Stream { messages, last } => {
                    if *last == 0 {
                        return Ok(None);
                    }
                    let Some(next) = messages.next().await else {
                        return Ok(None);
                    };
                    let m = next.context("reading the stream")?;
                    let info = m.info().map_err(|e| anyhow::anyhow!("{e}"))?;
                    let nanos = u64::try_from(info.published.unix_timestamp_nanos()).ok();
                    let event = Event {
                        seq: info.stream_sequence,
                        time: nanos.map(|n| SystemTime::UNIX_EPOCH + Duration::from_nanos(n)),
                        msg: BusMessage {
                            decoded: crate::bus::Decoded::for_subject(&m.subject),
                            subject: m.subject.to_string(),
                            reply_to: None,
                            headers: crate::bus::from_header_map(m.headers.as_ref()),
                            payload: m.payload.clone(),
                        },
                    };
                    if info.stream_sequence >= *last {
                        *last = 0; // this is the last one that was there at the start
                    }
                    event
                }
            };
            if start.is_some_and(|b| b.before(&event)) {
                continue;
            }
            if end.is_some_and(|b| b.after(&event)) {
                return Ok(None);
            }
            return Ok(Some(event));
        }
    }
}
