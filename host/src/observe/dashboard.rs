//! The dashboard document (`GET /api/dashboard`): the cache monitor's
//! structure from the seed (current, average and system metrics, recent
//! alerts, performance history) plus what the dashboard page draws
//! (components, connections, the per-second timeline).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::timeline::{ComponentSample, Sample};
use super::{CacheStatus, Counters, Observed, Status};
use crate::cache::{self, Layer, monitor::Thresholds};
use crate::latency;

/// The dashboard document: what the page draws and `weir status` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dashboard {
    /// Host id.
    pub host: String,
    /// When the document was made (RFC 3339, UTC).
    pub timestamp: String,
    /// Seconds since the host started.
    pub uptime_secs: u64,
    /// Empty when ready; else why not.
    pub ready: Vec<String>,
    /// The state of the host's connections.
    pub connections: Connections,
    /// The seed's current figures.
    pub current_metrics: CurrentMetrics,
    /// The seed's averages over the performance history.
    pub average_metrics: AverageMetrics,
    /// Redis `INFO` figures (`source: "redis"`), else this process's own.
    pub system_metrics: Value,
    /// The cache monitor's thresholds, when it runs.
    pub thresholds: Option<Thresholds>,
    /// The cache monitor's recent alerts (its `cache.alert` messages).
    pub recent_alerts: Vec<Value>,
    /// The cache monitor's points (its `cache.performance` messages).
    pub performance_history: Vec<Value>,
    /// One line per cache layer.
    pub cache_layers: Vec<CacheStatus>,
    /// Per component, in manifest order.
    pub components: Vec<ComponentView>,
    /// Per-second samples, oldest first.
    pub timeline: Vec<Sample>,
}

/// The host's connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connections {
    /// NATS connection state, when the host runs on NATS.
    pub nats: Option<String>,
    /// Reconnects since start, when the host runs on NATS.
    pub nats_reconnects: Option<u64>,
    /// `ok` or `failing`, when Redis is configured.
    pub redis: Option<String>,
}

/// The seed's current cache figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CurrentMetrics {
    /// Hits over reads in the last interval (else since start; none without reads).
    pub current_hit_rate: Option<f64>,
    /// L2 response time (p99), seconds.
    pub current_response_time: f64,
    /// L1 bytes over its bound.
    pub current_memory_usage: f64,
}

/// The seed's averages over the performance history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AverageMetrics {
    /// Mean L2 response time, seconds.
    pub avg_response_time: f64,
    /// Mean hit rate (none without reads).
    pub avg_hit_rate: Option<f64>,
    /// Mean L1 memory use.
    pub avg_memory_usage: f64,
}

/// One component on the dashboard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentView {
    /// Name.
    pub name: String,
    /// `stalled`, `failing`, `busy` or `idle`.
    pub state: String,
    /// Counters since start.
    pub counters: Counters,
    /// The last second, when sampled.
    pub now: Option<ComponentSample>,
    /// Median handler latency since start, ms.
    pub p50_ms: f64,
    /// 99th percentile handler latency since start, ms.
    pub p99_ms: f64,
    /// Per subscription.
    pub subscriptions: Vec<SubscriptionView>,
}

/// One subscription of a component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscriptionView {
    /// Its subject filter.
    pub subject: String,
    /// The stream it consumes, when it does.
    pub stream: Option<String>,
    /// Received.
    pub received: u64,
    /// Handled.
    pub handled: u64,
    /// Failed attempts.
    pub failed: u64,
    /// Messages left on its consumer (streams only).
    pub pending: Option<u64>,
    /// Why it cannot pull now, when it cannot.
    pub pull_error: Option<String>,
}

/// Builds the document; asks Redis for `INFO` when Redis is configured.
/// `since` (ms) limits the timeline to newer samples.
pub async fn document(o: &Observed, since: Option<u64>) -> Dashboard {
    let history = o.monitor.as_ref().map(|m| m.history()).unwrap_or_default();
    let layers = o.cache.as_ref().map(|c| c.stats()).unwrap_or_default();
    let l2 = layers.iter().find(|l| l.layer == Layer::L2);
    // Since start, for when the monitor has no point yet (or is off).
    let (reads, hits) = cache::reads_and_hits(&layers);
    let overall_hit_rate = cache::hit_ratio(reads, hits);
    let memory = cache::memory_usage(&layers, o.max_l1_bytes);
    let response = l2.map_or(0.0, |l| l.latency_p99_ns as f64 / 1e9);
    let latest = history.last();
    let current = CurrentMetrics {
        current_hit_rate: latest
            .and_then(|p| p["hit_rate"].as_f64())
            .or(overall_hit_rate),
        current_response_time: latest
            .and_then(|p| p["response_time"].as_f64())
            .unwrap_or(response),
        current_memory_usage: memory,
    };
    let mean = |field: &str| {
        let v: Vec<f64> = history.iter().filter_map(|p| p[field].as_f64()).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let average = AverageMetrics {
        avg_response_time: mean("response_time").unwrap_or(response),
        avg_hit_rate: mean("hit_rate").or(overall_hit_rate),
        avg_memory_usage: mean("memory_usage").unwrap_or(memory),
    };

    let last = o.timeline.last();
    let components = o
        .components
        .iter()
        .map(|(name, stats)| {
            let now = last
                .as_ref()
                .and_then(|s| s.components.iter().find(|(n, _)| n == name))
                .map(|(_, c)| c.clone());
            let subscriptions: Vec<SubscriptionView> = o
                .flows
                .iter()
                .filter(|f| &f.component == name)
                .map(|f| SubscriptionView {
                    subject: f.subject.clone(),
                    stream: f.stream.clone(),
                    received: super::load(&f.stats.received),
                    handled: super::load(&f.stats.handled),
                    failed: super::load(&f.stats.failed),
                    pending: f.stream.as_ref().map(|_| super::load(&f.stats.pending)),
                    pull_error: f.stats.pull_error(),
                })
                .collect();
            let counts = stats.latency_counts();
            let stalled = subscriptions.iter().any(|s| s.pull_error.is_some());
            let state = match &now {
                _ if stalled => "stalled",
                Some(c) if c.traps > 0 || c.failed_per_s > 0.0 => "failing",
                Some(c) if c.received_per_s > 0.0 || c.in_flight > 0 => "busy",
                _ => "idle",
            };
            ComponentView {
                name: name.clone(),
                state: state.to_owned(),
                counters: Counters::from(stats.snapshot()),
                now,
                p50_ms: latency::quantile(&counts, 0.5) as f64 / 1e6,
                p99_ms: latency::quantile(&counts, 0.99) as f64 / 1e6,
                subscriptions,
            }
        })
        .collect();

    Dashboard {
        host: o.host.clone(),
        timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        uptime_secs: o.started.elapsed().as_secs(),
        ready: o.readiness().err().map_or_else(Vec::new, |r| r.reasons),
        connections: Connections {
            nats: o.nats.as_ref().map(crate::bus::NatsBus::state),
            nats_reconnects: o.nats.as_ref().map(crate::bus::NatsBus::reconnect_count),
            redis: o
                .redis
                .as_ref()
                .map(|r| if r.is_failing() { "failing" } else { "ok" }.to_owned()),
        },
        current_metrics: current,
        average_metrics: average,
        system_metrics: system_metrics(o).await,
        thresholds: o.monitor.as_ref().map(|m| m.thresholds()),
        recent_alerts: o
            .monitor
            .as_ref()
            .map(|m| m.recent_alerts())
            .unwrap_or_default(),
        performance_history: history,
        cache_layers: Status::cache_lines(&layers),
        components,
        timeline: o.timeline.samples(since),
    }
}

/// Redis `INFO` figures when Redis is configured (`source: "redis"`), else
/// this process's own (`source: "process"`).
async fn system_metrics(o: &Observed) -> Value {
    if let Some(redis) = &o.redis {
        return match redis.info().await {
            Ok(info) => {
                let n = |k: &str| info.get::<u64>(k);
                json!({
                    "source": "redis",
                    "used_memory": n("used_memory"),
                    "connected_clients": n("connected_clients"),
                    "total_commands_processed": n("total_commands_processed"),
                    "keyspace_hits": n("keyspace_hits"),
                    "keyspace_misses": n("keyspace_misses"),
                })
            }
            Err(e) => json!({ "source": "redis", "error": e.to_string() }),
        };
    }
    json!({
        "source": "process",
        "used_memory": resident_bytes(),
        "connected_clients": null,
        "total_commands_processed": null,
    })
}

/// This process's resident memory, from `/proc/self/statm` (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
