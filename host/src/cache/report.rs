//! Periodic cache reports on `cache.stats` and `cache.performance`, in the
//! seed's formats, for monitors on any host.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::monitor::{self, CacheMonitor};
use super::{CacheStore, Layer, LayerStats};
use crate::bus::{Bus, BusMessage};
use crate::shutdown::Shutdown;

/// Subject of the counters report.
pub const STATS: &str = "cache.stats";
/// Subject of the performance report.
pub const PERFORMANCE: &str = "cache.performance";

/// The two reports for one moment: (`cache.stats`, `cache.performance`).
pub fn reports(
    host: &str,
    layers: &[LayerStats],
    max_l1_bytes: u64,
) -> (serde_json::Value, serde_json::Value) {
    let timestamp = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    let l1 = layers
        .iter()
        .find(|l| l.layer == Layer::L1)
        .copied()
        .unwrap_or(LayerStats::empty(Layer::L1));
    let l2 = layers.iter().find(|l| l.layer == Layer::L2);
    let (reads, hits) = super::reads_and_hits(layers);
    let hit_rate = super::hit_ratio(reads, hits).unwrap_or(0.0);
    let per_layer: serde_json::Map<String, serde_json::Value> = layers
        .iter()
        .map(|l| {
            let name = l.layer.name().to_owned();
            let v = json!({
                "hits": l.hits, "misses": l.misses, "sets": l.sets, "deletes": l.deletes,
                "errors": l.errors, "evictions": l.evictions, "entries": l.entries, "bytes": l.bytes,
                "bytes_saved": l.bytes_saved, "latency_p50_ns": l.latency_p50_ns, "latency_p99_ns": l.latency_p99_ns,
            });
            (name, v)
        })
        .collect();
    let stats = json!({
        "host": host,
        "hits": hits,
        "misses": reads - hits,
        "sets": l1.sets,
        "deletes": l1.deletes,
        "errors": layers.iter().map(|l| l.errors).sum::<u64>(),
        "evictions": l1.evictions,
        "hit_rate": hit_rate,
        "layers": per_layer,
        "timestamp": timestamp,
    });
    let avg_response = l2.map_or(0.0, |l| l.latency_p50_ns as f64 / 1e9);
    // The seed's cache.performance gives memory use in percent.
    let memory_usage = super::memory_usage(layers, max_l1_bytes) * 100.0;
    let performance = json!({
        "host": host,
        "avg_response_time": avg_response,
        "cache_hit_rate": hit_rate,
        "memory_usage": memory_usage,
        "timestamp": timestamp,
    });
    (stats, performance)
}

/// Publishes both reports every `every`, and the monitor's breaches on
/// `cache.alert`, until shutdown.
pub async fn run(
    host: String,
    cache: Arc<dyn CacheStore>,
    bus: Arc<dyn Bus>,
    monitor: CacheMonitor,
    every: Duration,
    max_l1_bytes: u64,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let layers = cache.stats();
        let (stats, perf) = reports(&host, &layers, max_l1_bytes);
        let alerts = monitor
            .check(&layers, max_l1_bytes)
            .into_iter()
            .map(|a| (monitor::ALERT, a));
        for (subject, body) in [(STATS, stats), (PERFORMANCE, perf)]
            .into_iter()
            .chain(alerts)
        {
            if let Err(e) = bus
                .publish(BusMessage::new(subject, body.to_string()))
                .await
            {
                tracing::debug!("cache report not published: {e}");
            }
        }
    }
}

/// Answers `cache.monitor.thresholds` requests: an empty body or `{}`
/// reads the thresholds, a partial JSON object changes them.
pub async fn serve_thresholds(monitor: CacheMonitor, bus: Arc<dyn Bus>, shutdown: Shutdown) {
    use futures::StreamExt;
    let mut requests = match bus.subscribe(monitor::THRESHOLDS, None).await {
        Ok(s) => s,
        Err(e) => return tracing::warn!("cannot serve {}: {e}", monitor::THRESHOLDS),
    };
    loop {
        let req = tokio::select! {
            _ = shutdown.wait() => return,
            r = requests.next() => match r { Some(r) => r, None => return },
        };
        let Some(reply_to) = req.reply_to else {
            continue;
        };
        let body = if req.payload.iter().all(u8::is_ascii_whitespace) {
            json!({ "ok": true, "thresholds": monitor.thresholds() })
        } else {
            match monitor.update(&req.payload) {
                Ok(t) => {
                    tracing::info!(?t, "cache monitor thresholds changed");
                    json!({ "ok": true, "thresholds": t })
                }
                Err(e) => json!({ "ok": false, "error": e, "thresholds": monitor.thresholds() }),
            }
        };
        if let Err(e) = bus
            .publish(BusMessage::new(reply_to, body.to_string()))
            .await
        {
            tracing::debug!("thresholds reply not sent: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_have_the_seed_fields() {
        let l1 = LayerStats {
            hits: 6,
            misses: 4,
            bytes: 512,
            ..LayerStats::empty(Layer::L1)
        };
        let l2 = LayerStats {
            hits: 2,
            misses: 2,
            latency_p50_ns: 2_000_000,
            ..LayerStats::empty(Layer::L2)
        };
        let (stats, perf) = reports("h1", &[l1, l2], 1024);
        assert_eq!(stats["hits"], 8, "an L1 miss answered by L2 is a hit");
        assert_eq!(stats["misses"], 2);
        assert_eq!(stats["layers"]["l2"]["hits"], 2);
        assert_eq!(perf["cache_hit_rate"], 0.8);
        assert_eq!(perf["avg_response_time"], 0.002);
        assert_eq!(perf["memory_usage"], 50.0);
        assert!(perf["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
