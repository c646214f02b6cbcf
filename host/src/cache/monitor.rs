//! The cache monitor of the seed: thresholds on hit rate, response time,
//! memory use and error rate, checked every report interval over that
//! interval's traffic. A breach is published on `cache.alert` and kept in
//! a recent-alerts list; thresholds change at run time with a NATS request
//! on `cache.monitor.thresholds` (partial JSON in, current thresholds out).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Layer, LayerStats, hit_ratio, memory_usage, reads_and_hits};

/// Subject of breaches.
pub const ALERT: &str = "cache.alert";
/// Request subject for reading and changing thresholds.
pub const THRESHOLDS: &str = "cache.monitor.thresholds";
/// Alerts and history points kept.
const KEEP: usize = 100;
/// Reads in an interval below which the hit rate is not judged.
const MIN_READS: u64 = 20;

pub use crate::manifest::Thresholds;

/// A partial change, as sent on `cache.monitor.thresholds`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdUpdate {
    hit_rate_min: Option<f64>,
    response_time_max: Option<f64>,
    memory_usage_max: Option<f64>,
    error_rate_max: Option<f64>,
}

/// A cheap-to-clone handle to the monitor.
#[derive(Clone)]
pub struct CacheMonitor {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    thresholds: RwLock<Thresholds>,
    /// Newest last.
    recent: Mutex<VecDeque<Value>>,
    history: Mutex<VecDeque<Value>>,
    /// Figures at the previous check, to judge each interval on its own.
    previous: Mutex<Vec<LayerStats>>,
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl CacheMonitor {
    /// A monitor for `host` with initial thresholds.
    pub fn new(host: &str, thresholds: Thresholds) -> Self {
        CacheMonitor {
            inner: Arc::new(Inner {
                host: host.to_owned(),
                thresholds: RwLock::new(thresholds),
                recent: Mutex::default(),
                history: Mutex::default(),
                previous: Mutex::default(),
            }),
        }
    }

    /// Current thresholds.
    pub fn thresholds(&self) -> Thresholds {
        *self
            .inner
            .thresholds
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a partial change given as JSON; returns the new thresholds.
    pub fn update(&self, json: &[u8]) -> Result<Thresholds, String> {
        let u: ThresholdUpdate =
            serde_json::from_slice(json).map_err(|e| format!("bad thresholds: {e}"))?;
        let mut t = self
            .inner
            .thresholds
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let mut next = *t;
        next.hit_rate_min = u.hit_rate_min.unwrap_or(next.hit_rate_min);
        next.response_time_max = u.response_time_max.unwrap_or(next.response_time_max);
        next.memory_usage_max = u.memory_usage_max.unwrap_or(next.memory_usage_max);
        next.error_rate_max = u.error_rate_max.unwrap_or(next.error_rate_max);
        let fraction = |v: f64| (0.0..=1.0).contains(&v);
        if !(fraction(next.hit_rate_min)
            && fraction(next.memory_usage_max)
            && fraction(next.error_rate_max))
            || next.response_time_max < 0.0
        {
            return Err(
                "rates and memory use are fractions in 0..=1; response_time_max is seconds ≥ 0"
                    .into(),
            );
        }
        *t = next;
        Ok(next)
    }

    /// Judges the interval since the last check; returns the breaches (also
    /// kept in the recent list).
    pub fn check(&self, layers: &[LayerStats], max_l1_bytes: u64) -> Vec<Value> {
        let t = self.thresholds();
        let mut prev = self
            .inner
            .previous
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let delta = |layer: Layer, f: fn(&LayerStats) -> u64| {
            let now = layers.iter().find(|l| l.layer == layer).map_or(0, f);
            let before = prev.iter().find(|l| l.layer == layer).map_or(0, f);
            now.saturating_sub(before)
        };
        let (reads, hits) = {
            let (now, before) = (reads_and_hits(layers), reads_and_hits(&prev));
            (
                now.0.saturating_sub(before.0),
                now.1.saturating_sub(before.1),
            )
        };
        let ops = reads + delta(Layer::L1, |l| l.sets + l.deletes);
        let errors: u64 = [Layer::L1, Layer::L2, Layer::L3]
            .into_iter()
            .map(|l| delta(l, |s| s.errors))
            .sum();
        *prev = layers.to_vec();
        drop(prev);
        let response = layers
            .iter()
            .find(|l| l.layer == Layer::L2)
            .map_or(0.0, |l| l.latency_p99_ns as f64 / 1e9);
        let memory = memory_usage(layers, max_l1_bytes);
        let hit_rate = hit_ratio(reads, hits);
        let error_rate = if ops == 0 {
            0.0
        } else {
            errors as f64 / ops as f64
        };

        let mut alerts = Vec::new();
        let mut breach = |kind: &str, value: f64, threshold: f64, message: String| {
            alerts.push(json!({
                "type": kind, "value": value, "threshold": threshold, "message": message,
                "severity": "warning", "host": self.inner.host, "timestamp": now(),
            }));
        };
        if let Some(h) = hit_rate
            && reads >= MIN_READS
            && h < t.hit_rate_min
        {
            breach(
                "hit_rate",
                h,
                t.hit_rate_min,
                format!(
                    "cache hit rate {:.1}% is below {:.1}%",
                    h * 100.0,
                    t.hit_rate_min * 100.0
                ),
            );
        }
        if response > t.response_time_max {
            breach(
                "response_time",
                response,
                t.response_time_max,
                format!(
                    "Redis p99 {:.1} ms is above {:.1} ms",
                    response * 1e3,
                    t.response_time_max * 1e3
                ),
            );
        }
        if memory > t.memory_usage_max {
            breach(
                "memory_usage",
                memory,
                t.memory_usage_max,
                format!("L1 holds {:.0}% of its bytes", memory * 100.0),
            );
        }
        if error_rate > t.error_rate_max {
            breach(
                "error_rate",
                error_rate,
                t.error_rate_max,
                format!("{:.1}% of cache operations failed", error_rate * 100.0),
            );
        }
        let point = json!({
            "timestamp": now(), "hit_rate": hit_rate, "response_time": response,
            "memory_usage": memory, "error_rate": error_rate, "reads": reads,
        });
        push(&self.inner.history, point);
        for a in &alerts {
            tracing::warn!(alert = %a["type"], "{}", a["message"].as_str().unwrap_or_default());
            push(&self.inner.recent, a.clone());
        }
        alerts
    }

    /// The most recent alerts, newest last.
    pub fn recent_alerts(&self) -> Vec<Value> {
        self.inner
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Performance points, one per check, newest last.
    pub fn history(&self) -> Vec<Value> {
        self.inner
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

fn push(list: &Mutex<VecDeque<Value>>, v: Value) {
    let mut l = list.lock().unwrap_or_else(|e| e.into_inner());
    if l.len() == KEEP {
        l.pop_front();
    }
    l.push_back(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l1(hits: u64, misses: u64, bytes: u64) -> LayerStats {
        LayerStats {
            hits,
            misses,
            bytes,
            ..LayerStats::empty(Layer::L1)
        }
    }

    #[test]
    fn judges_each_interval_on_its_own() {
        let m = CacheMonitor::new("h", Thresholds::default());
        assert!(m.check(&[l1(90, 10, 0)], 1000).is_empty(), "90% is fine");
        let alerts = m.check(&[l1(100, 90, 0)], 1000);
        assert_eq!(alerts.len(), 1, "10 of 90 reads in this interval hit");
        assert_eq!(alerts[0]["type"], "hit_rate");
        assert!(
            m.check(&[l1(100, 95, 900)], 1000)
                .iter()
                .any(|a| a["type"] == "memory_usage")
        );
        assert_eq!(m.recent_alerts().len(), 2);
        assert_eq!(m.history().len(), 3);
    }

    #[test]
    fn thresholds_change_partially_and_are_checked() {
        let m = CacheMonitor::new("h", Thresholds::default());
        let t = m
            .update(br#"{"hit_rate_min": 0.8, "response_time_max": 0.05}"#)
            .unwrap();
        assert_eq!(
            (t.hit_rate_min, t.response_time_max, t.memory_usage_max),
            (0.8, 0.05, 0.8)
        );
        assert!(m.update(br#"{"hit_rate_min": 3}"#).is_err());
        assert!(m.update(br#"{"nope": 1}"#).is_err());
        assert_eq!(m.thresholds().hit_rate_min, 0.8);
    }
}
