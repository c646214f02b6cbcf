//! Observability: Prometheus metrics, health and readiness, and a status
//! document, served over HTTP from a read-only view of the host.

mod dashboard;
mod http;
mod metrics;
mod timeline;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::bus::NatsBus;
use crate::cache::monitor::CacheMonitor;
use crate::cache::{CacheStore, LayerStats, RedisStore};
use crate::shutdown::Shutdown;
use crate::stats::{ComponentSnapshot, ComponentStats, FlowStats};

pub use dashboard::{
    AverageMetrics, ComponentView, Connections, CurrentMetrics, Dashboard, SubscriptionView,
    document as dashboard,
};
pub use http::serve;
pub use metrics::render;
pub use timeline::{ComponentSample, Sample, Timeline, run as sample_every};

/// Starts the timeline's sampling and, when `http` is set, the HTTP
/// endpoints; both stop on `shutdown`. Returns where HTTP listens.
pub async fn start(
    observed: &Observed,
    http: Option<&str>,
    shutdown: &Shutdown,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<Option<std::net::SocketAddr>> {
    use anyhow::Context as _;
    tasks.spawn(sample_every(
        observed.clone(),
        observed.timeline.clone(),
        TIMELINE_INTERVAL,
        shutdown.clone(),
    ));
    let Some(addr) = http else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {addr} (host.http)"))?;
    let local = listener.local_addr().ok();
    tasks.spawn(serve(listener, observed.clone(), shutdown.wait()));
    tracing::info!(
        "dashboard on http://{0}/ (metrics on http://{0}/metrics)",
        local.map(|a| a.to_string()).unwrap_or_default()
    );
    Ok(local)
}

/// How often the dashboard's timeline takes a sample.
const TIMELINE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What the observability endpoints read: cheap to clone, never blocks the host.
#[derive(Clone)]
pub struct Observed {
    /// This host's id.
    pub host: String,
    /// Each component's counters.
    pub components: Vec<(String, Arc<ComponentStats>)>,
    /// Each subscription's counters.
    pub flows: Vec<Flow>,
    /// The cache, when enabled.
    pub cache: Option<Arc<dyn CacheStore>>,
    /// The NATS connection, when configured.
    pub nats: Option<NatsBus>,
    /// The Redis layer, when configured.
    pub redis: Option<RedisStore>,
    /// The cache monitor, when `cache.monitoring` is on.
    pub monitor: Option<CacheMonitor>,
    /// L1's byte budget, to express its use as a fraction.
    pub max_l1_bytes: u64,
    /// Per-second samples for the dashboard's charts.
    pub timeline: Timeline,
    /// When the host started, for its uptime.
    pub started: std::time::Instant,
    /// What `POST /api/reload` asks for a hot update, when the host has one.
    pub updater: Option<crate::update::Updater>,
    /// The host's tracing: its exported and dropped spans.
    pub telemetry: crate::telemetry::Telemetry,
}

/// One subscription of one component, with its counters.
#[derive(Clone)]
pub struct Flow {
    /// The component.
    pub component: String,
    /// The subscription's subject (filter).
    pub subject: String,
    /// The stream, when it is a JetStream consumer.
    pub stream: Option<String>,
    /// Its counters.
    pub stats: Arc<FlowStats>,
}

/// Why the host is not ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotReady {
    /// One line per problem.
    pub reasons: Vec<String>,
}

impl Observed {
    /// A view of components alone (no bus, cache or monitor).
    pub fn new(host: &str, components: Vec<(String, Arc<ComponentStats>)>) -> Self {
        Observed {
            host: host.to_owned(),
            components,
            flows: Vec::new(),
            cache: None,
            nats: None,
            redis: None,
            monitor: None,
            max_l1_bytes: 0,
            timeline: Timeline::default(),
            started: std::time::Instant::now(),
            updater: None,
            telemetry: crate::telemetry::Telemetry::off(),
        }
    }

    /// `Ok` when NATS is connected, Redis answers, every stream consumer
    /// pulls and every component loaded.
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
        for f in &self.flows {
            if let (Some(stream), Some(e)) = (&f.stream, f.stats.pull_error()) {
                reasons.push(format!(
                    "component {} cannot pull from stream {stream} ({}): {e}",
                    f.component, f.subject
                ));
            }
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
        let running = self
            .updater
            .as_ref()
            .map(crate::update::Updater::templates)
            .unwrap_or_default();
        let components = self
            .components
            .iter()
            .map(|(name, s)| {
                let template = running.iter().find(|t| t.name() == name);
                ComponentStatus {
                    name: name.clone(),
                    version: s.version.load(std::sync::atomic::Ordering::Relaxed),
                    origin: template.map(|t| t.origin().to_owned()),
                    sha256: template.map(|t| t.sha256().to_owned()),
                    signed_by: template.and_then(|t| t.signer().cloned()),
                    counters: s.snapshot().into(),
                }
            })
            .collect();
        let layers = self.cache.as_ref().map(|c| c.stats()).unwrap_or_default();
        let cache = Status::cache_lines(&layers);
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

impl Status {
    /// One line per cache layer.
    pub fn cache_lines(layers: &[LayerStats]) -> Vec<CacheStatus> {
        layers
            .iter()
            .map(|l| CacheStatus {
                layer: l.layer.name().to_owned(),
                hits: l.hits,
                misses: l.misses,
                hit_rate: l.hit_rate(),
                errors: l.errors,
                entries: l.entries,
                bytes: l.bytes,
            })
            .collect()
    }
}

/// One component's line in the status.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ComponentStatus {
    /// Name.
    pub name: String,
    /// The version running: 1 from the start, one more per hot update.
    #[serde(default)]
    pub version: u64,
    /// Where the running version came from: its file, or the registry
    /// reference resolved to a digest (`oci://…@sha256:…`).
    #[serde(default)]
    pub origin: Option<String>,
    /// Hex sha256 of its bytes.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The trusted key its signature verified with (none: unsigned, or no
    /// keys in its trust policy).
    #[serde(default)]
    pub signed_by: Option<crate::signature::Signer>,
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
    /// Failed attempts.
    #[serde(default)]
    pub failed: u64,
    /// Retried.
    pub retried: u64,
    /// Dead-lettered.
    pub dead_lettered: u64,
    /// Traps.
    pub traps: u64,
    /// Deadline hits.
    #[serde(default)]
    pub deadline_hits: u64,
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
            failed: s.failed,
            retried: s.retried,
            dead_lettered: s.dead_lettered,
            traps: s.traps,
            deadline_hits: s.deadline_hits,
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
    http_request(addr, "GET", path, b"").await
}

/// One HTTP/1.0 request to a weir host (for `weir status` and tests, so
/// neither needs an HTTP client); returns status code and body.
pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
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
