//! The dashboard document (`GET /api/dashboard`): the cache monitor's
//! structure from the seed (current, average and system metrics, recent
//! alerts, performance history) plus what the dashboard page draws
//! (components, connections, the per-second timeline).

use serde_json::{Value, json};

use super::Observed;
use crate::cache::{self, Layer};
use crate::latency;

/// Builds the document; asks Redis for `INFO` when Redis is configured.
/// `since` (ms) limits the timeline to newer samples.
pub async fn document(o: &Observed, since: Option<u64>) -> Value {
    let history = o.monitor.as_ref().map(|m| m.history()).unwrap_or_default();
    let layers = o.cache.as_ref().map(|c| c.stats()).unwrap_or_default();
    let l2 = layers.iter().find(|l| l.layer == Layer::L2);
    // Since start, for when the monitor has no point yet (or is off).
    let (reads, hits) = cache::reads_and_hits(&layers);
    let overall_hit_rate = cache::hit_ratio(reads, hits);
    let memory = cache::memory_usage(&layers, o.max_l1_bytes);
    let response = l2.map_or(0.0, |l| l.latency_p99_ns as f64 / 1e9);
    let latest = history.last();
    let current = json!({
        "current_hit_rate": latest
            .and_then(|p| p["hit_rate"].as_f64())
            .or(overall_hit_rate),
        "current_response_time": latest.and_then(|p| p["response_time"].as_f64()).unwrap_or(response),
        "current_memory_usage": memory,
    });
    let mean = |field: &str| {
        let v: Vec<f64> = history.iter().filter_map(|p| p[field].as_f64()).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let average = json!({
        "avg_response_time": mean("response_time").unwrap_or(response),
        "avg_hit_rate": mean("hit_rate").or(overall_hit_rate),
        "avg_memory_usage": mean("memory_usage").unwrap_or(memory),
    });

    let last = o.timeline.last();
    let components: Vec<Value> = o
        .components
        .iter()
        .map(|(name, stats)| {
            let now = last
                .as_ref()
                .and_then(|s| s.components.iter().find(|(n, _)| n == name))
                .map(|(_, c)| c.clone());
            let subscriptions: Vec<Value> = o
                .flows
                .iter()
                .filter(|f| &f.component == name)
                .map(|f| {
                    json!({
                        "subject": f.subject,
                        "stream": f.stream,
                        "received": super::load(&f.stats.received),
                        "handled": super::load(&f.stats.handled),
                        "failed": super::load(&f.stats.failed),
                        "pending": f.stream.as_ref().map(|_| super::load(&f.stats.pending)),
                        "pull_error": f.stats.pull_error(),
                    })
                })
                .collect();
            let counts = stats.latency_counts();
            let stalled = subscriptions.iter().any(|s| !s["pull_error"].is_null());
            let state = match &now {
                _ if stalled => "stalled",
                Some(c) if c.traps > 0 || c.failed_per_s > 0.0 => "failing",
                Some(c) if c.received_per_s > 0.0 || c.in_flight > 0 => "busy",
                _ => "idle",
            };
            json!({
                "name": name,
                "state": state,
                "counters": super::Counters::from(stats.snapshot()),
                "now": now,
                "p50_ms": latency::quantile(&counts, 0.5) as f64 / 1e6,
                "p99_ms": latency::quantile(&counts, 0.99) as f64 / 1e6,
                "subscriptions": subscriptions,
            })
        })
        .collect();

    json!({
        "host": o.host,
        "timestamp": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "uptime_secs": o.started.elapsed().as_secs(),
        "ready": o.readiness().err().map_or_else(Vec::new, |r| r.reasons),
        "connections": {
            "nats": o.nats.as_ref().map(crate::bus::NatsBus::state),
            "nats_reconnects": o.nats.as_ref().map(crate::bus::NatsBus::reconnect_count),
            "redis": o.redis.as_ref().map(|r| if r.is_failing() { "failing" } else { "ok" }),
        },
        "current_metrics": current,
        "average_metrics": average,
        "system_metrics": system_metrics(o).await,
        "thresholds": o.monitor.as_ref().map(|m| m.thresholds()),
        "recent_alerts": o.monitor.as_ref().map(|m| m.recent_alerts()).unwrap_or_default(),
        "performance_history": history,
        "cache_layers": super::Status::cache_lines(&layers),
        "components": components,
        "timeline": o.timeline.samples(since),
    })
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
