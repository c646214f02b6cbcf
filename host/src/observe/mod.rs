//! Observability: Prometheus metrics, health and readiness, and a status
//! document, served over HTTP from a read-only view of the host.

mod http;
mod metrics;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::bus::NatsBus;
use crate::cache::{CacheStore, Layer, RedisStore};
use crate::stats::{ComponentSnapshot, ComponentStats};

pub use http::serve;
pub use metrics::render;

/// What the observability endpoints read: cheap to clone, never blocks the host.
#[derive(Clone)]
pub struct Observed {
    /// This host's id.
    pub host: String,
    /// Each component's counters.
    pub components: Vec<(String, Arc<ComponentStats>)>,
    /// The cache, when enabled.
    pub cache: Option<Arc<dyn CacheStore>>,
    /// The NATS connection, when configured.
    pub nats: Option<NatsBus>,
    /// The Redis layer, when configured.
    pub redis: Option<RedisStore>,
}

/// Why the host is not ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotReady {
    /// One line per problem.
    pub reasons: Vec<String>,
}

impl Observed {
    /// `Ok` when NATS is connected, Redis answers and every component loaded.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let mut reasons = Vec::new();
        if let Some(n) = &self.nats {
            let state = n.state();
            if state != "connected" {
                reasons.push(format!("NATS is {state}"));
            }
        }
        if let Some(r) = &self.redis
            && r.is_failing()
        {
            reasons.push("Redis is failing (circuit open)".into());
        }
        if self.components.is_empty() {
            reasons.push("no components loaded".into());
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(NotReady { reasons })
        }
    }

    /// A one-screen summary for `weir status`.
    pub fn status(&self) -> Status {
        let components = self
            .components
            .iter()
            .map(|(name, s)| ComponentStatus {
                name: name.clone(),
                counters: s.snapshot().into(),
            })
            .collect();
        let cache = self
            .cache
            .as_ref()
            .map(|c| c.stats())
            .unwrap_or_default()
            .into_iter()
            .map(|l| CacheStatus {
                layer: match l.layer {
                    Layer::L1 => "l1",
                    Layer::L2 => "l2",
                    Layer::L3 => "l3",
                }
                .to_owned(),
                hits: l.hits,
                misses: l.misses,
                hit_rate: l.hit_rate(),
                errors: l.errors,
                entries: l.entries,
                bytes: l.bytes,
            })
            .collect();
        Status {
            host: self.host.clone(),
            ready: self.readiness().err().map_or_else(Vec::new, |r| r.reasons),
            nats: self.nats.as_ref().map(NatsBus::state),
            redis: self
                .redis
                .as_ref()
                .map(|r| if r.is_failing() { "failing" } else { "ok" }.to_owned()),
            components,
            cache,
        }
    }
}

/// The status document (`GET /api/status`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Status {
    /// Host id.
    pub host: String,
    /// Empty when ready; else why not.
    pub ready: Vec<String>,
    /// NATS connection state, when configured.
    pub nats: Option<String>,
    /// `ok` or `failing`, when Redis is configured.
    pub redis: Option<String>,
    /// Per component.
    pub components: Vec<ComponentStatus>,
    /// Per cache layer.
    pub cache: Vec<CacheStatus>,
}

/// One component's line in the status.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ComponentStatus {
    /// Name.
    pub name: String,
    /// Counters.
    pub counters: Counters,
}

/// Serializable copy of [`ComponentSnapshot`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Counters {
    /// Received.
    pub received: u64,
    /// Handled.
    pub handled: u64,
    /// Retried.
    pub retried: u64,
    /// Dead-lettered.
    pub dead_lettered: u64,
    /// Traps.
    pub traps: u64,
    /// Published.
    pub published: u64,
    /// Denied host calls.
    pub denied: u64,
    /// In flight now.
    pub in_flight: u64,
}

impl From<ComponentSnapshot> for Counters {
    fn from(s: ComponentSnapshot) -> Self {
        Counters {
            received: s.received,
            handled: s.handled,
            retried: s.retried,
            dead_lettered: s.dead_lettered,
            traps: s.traps,
            published: s.published,
            denied: s.denied,
            in_flight: s.in_flight,
        }
    }
}

/// One cache layer's line in the status.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CacheStatus {
    /// `l1`, `l2` or `l3`.
    pub layer: String,
    /// Hits.
    pub hits: u64,
    /// Misses.
    pub misses: u64,
    /// Hits over reads.
    pub hit_rate: f64,
    /// Errors.
    pub errors: u64,
    /// Entries held.
    pub entries: u64,
    /// Bytes held.
    pub bytes: u64,
}

/// `GET path` on a weir host's HTTP address; returns status code and body.
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}

/// Loads a counter (for metrics).
pub(crate) fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}
