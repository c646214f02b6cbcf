//! The replay's output: every effect of the components, in the order it
//! happened, one JSON object per line (NDJSON), streamed to a writer.
//!
//! Nothing in a record comes from the wall clock, a hash seed or a thread
//! schedule, so the same input gives the same bytes.

use std::io::Write;
use std::sync::Mutex;

use base64::Engine as _;
use serde::Serialize;

use crate::clock::VirtualClock;

/// One line of the output. Fields that do not apply are left out.
#[derive(Debug, Default, Serialize)]
pub struct Record<'a> {
    /// Position in the output, from 1.
    pub n: u64,
    /// The input event it descends from (its sequence).
    pub event: u64,
    /// Virtual time when it happened (RFC 3339, ns); set by the tape.
    pub time: &'a str,
    /// The component that did it.
    pub component: &'a str,
    /// `publish`, `jetstream_publish`, `request`, `dead_letter`,
    /// `cache_set`, `cache_delete`, `cache_invalidate` or `settle`.
    pub kind: &'a str,
    /// Subject published on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
    /// Cache key (with its namespace) or pattern.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
    /// Time to live of a cache write, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// For `settle` records: `retry` (another attempt follows) or `term`
    /// (given up on, after its dead letter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'a str>,
    /// Stream and sequence of a JetStream publish (or of a settled delivery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<&'a str>,
    /// See `stream`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// A JetStream publish whose msg-id was seen before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    /// Headers of a published message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<&'a [(String, String)]>,
    /// Payload or value, when it is UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<&'a str>,
    /// Payload or value as base64, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl<'a> Record<'a> {
    /// Sets `payload` or `payload_base64` from bytes.
    pub fn with_bytes(mut self, bytes: &'a [u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => self.payload = Some(text),
            Err(_) => {
                self.payload_base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
        }
        self
    }
}

/// The output, shared by every capture handle of one replay.
pub struct Tape {
    clock: VirtualClock,
    state: Mutex<State>,
}

struct State {
    out: Box<dyn Write + Send>,
    /// Records written.
    n: u64,
    /// The input event being replayed.
    event: u64,
    /// The first write error; the replay stops on it.
    error: Option<std::io::Error>,
    /// The last time formatted (ns, text): it changes once per event.
    stamp: (u64, String),
}

impl Tape {
    /// A tape writing to `out` (buffer it: a record is one small write).
    pub fn new(out: Box<dyn Write + Send>, clock: VirtualClock) -> Self {
        Tape {
            clock,
            state: Mutex::new(State {
                out,
                n: 0,
                event: 0,
                error: None,
                stamp: (u64::MAX, String::new()),
            }),
        }
    }

    /// Records from now on descend from input event `seq`.
    pub fn begin_event(&self, seq: u64) {
        self.lock().event = seq;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one record, numbered and stamped here.
    pub fn write(&self, record: Record<'_>) {
        let mut guard = self.lock();
        let s = &mut *guard;
        if s.error.is_some() {
            return;
        }
        let ns = self.clock.ns();
        if s.stamp.0 != ns {
            s.stamp = (
                ns,
                humantime::format_rfc3339_nanos(self.clock.now()).to_string(),
            );
        }
        s.n += 1;
        let record = Record {
            n: s.n,
            event: s.event,
            time: &s.stamp.1,
            ..record
        };
        let result = serde_json::to_writer(&mut s.out, &record)
            .map_err(std::io::Error::from)
            .and_then(|()| s.out.write_all(b"\n"));
        if let Err(e) = result {
            s.error = Some(e);
        }
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.lock().n
    }

    /// Flushes; the first write error, if any.
    pub fn finish(&self) -> std::io::Result<()> {
        let mut s = self.lock();
        if let Some(e) = s.error.take() {
            return Err(e);
        }
        s.out.flush()
    }
}
