//! A lock-free latency histogram with power-of-two buckets (ns): cheap to
//! record on every event, read for p50/p99 (since start or over an
//! interval, from two [`Histogram::counts`]) and exported to Prometheus.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Buckets kept; the last one also holds everything longer.
pub const BUCKETS: usize = 40;

/// Counts per bucket at one moment.
pub type Counts = [u64; BUCKETS];

/// Counts per bucket; bucket `i` holds latencies in `[2^i, 2^(i+1))` ns.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    /// Sum of all recorded latencies, ns (for Prometheus `_sum`).
    sum_ns: AtomicU64,
    /// The latest traced latency per exported bucket (OpenMetrics
    /// exemplars); locked only for traced events.
    exemplars: Mutex<Vec<Option<Exemplar>>>,
}

/// A latency of a traced event: the trace it points at.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// The latency, seconds.
    pub value: f64,
    /// When it was recorded.
    pub at: SystemTime,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
            exemplars: Mutex::new(vec![None; EXPORTED]),
        }
    }
}

impl Histogram {
    /// Records one latency.
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        let i = (63 - ns.leading_zeros() as usize).min(BUCKETS - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Keeps `d` (already recorded) as the exemplar of its Prometheus
    /// bucket, pointing at the trace it belongs to.
    pub fn exemplar(&self, d: Duration, trace_id: String, span_id: String) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        let i = 63 - ns.leading_zeros() as usize;
        let at = i.clamp(FIRST_EXPORTED, LAST_EXPORTED + 1) - FIRST_EXPORTED;
        if let Ok(mut slots) = self.exemplars.lock()
            && let Some(slot) = slots.get_mut(at)
        {
            *slot = Some(Exemplar {
                trace_id,
                span_id,
                value: d.as_secs_f64(),
                at: SystemTime::now(),
            });
        }
    }

    /// The exemplar of each Prometheus bucket, in [`Self::prometheus`]'s
    /// order.
    pub fn exemplars(&self) -> Vec<Option<Exemplar>> {
        self.exemplars.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Counts per bucket now.
    pub fn counts(&self) -> Counts {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }

    /// The upper bound (ns) of the bucket holding quantile `q` (0..=1) of
    /// everything recorded, 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        quantile(&self.counts(), q)
    }

    /// Prometheus buckets from 1 µs to about 4 s, as prometheus-client's
    /// `encode_histogram` takes them: (upper bound in seconds, count in
    /// this bucket alone; the encoder makes them cumulative), then `+Inf`
    /// with everything past the last bound; with the sum (s) and count,
    /// all from one reading so that `+Inf` equals the count.
    pub fn prometheus(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let counts = self.counts();
        let mut out = Vec::new();
        let mut pending = 0;
        for (i, c) in counts.iter().enumerate() {
            pending += c;
            if (FIRST_EXPORTED..=LAST_EXPORTED).contains(&i) {
                out.push(((1u64 << (i + 1)) as f64 / 1e9, pending));
                pending = 0;
            }
        }
        out.push((f64::INFINITY, pending));
        let total = counts.iter().sum();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, total, out)
    }
}

/// First bucket with its own Prometheus bound: `le` 2^10 ns, about 1 µs
/// (faster latencies count in it too).
const FIRST_EXPORTED: usize = 9;
/// Last bucket with its own Prometheus bound: `le` 2^32 ns, about 4.3 s.
const LAST_EXPORTED: usize = 31;
/// Prometheus buckets: the bounded ones and `+Inf`.
pub const EXPORTED: usize = LAST_EXPORTED - FIRST_EXPORTED + 2;

/// Bucket-wise `now - before`: the latencies recorded in between.
pub fn delta(now: &Counts, before: &Counts) -> Counts {
    std::array::from_fn(|i| now[i].saturating_sub(before[i]))
}

/// The upper bound (ns) of the bucket holding quantile `q`, 0 when empty.
pub fn quantile(counts: &Counts, q: f64) -> u64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return 1u64 << (i + 1);
        }
    }
    1u64 << BUCKETS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_land_in_the_right_bucket() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), 0);
        for _ in 0..98 {
            h.record(Duration::from_nanos(100));
        }
        h.record(Duration::from_micros(100));
        h.record(Duration::from_micros(100));
        assert_eq!(h.quantile(0.5), 128);
        assert_eq!(h.quantile(0.99), 131_072);
    }

    #[test]
    fn interval_quantiles_ignore_what_came_before() {
        let h = Histogram::default();
        for _ in 0..1000 {
            h.record(Duration::from_nanos(100));
        }
        let before = h.counts();
        for _ in 0..10 {
            h.record(Duration::from_millis(1));
        }
        assert_eq!(h.quantile(0.5), 128, "since start: mostly fast");
        assert_eq!(
            quantile(&delta(&h.counts(), &before), 0.5),
            1 << 20,
            "the interval held only the slow ones"
        );
    }

    #[test]
    fn prometheus_buckets_are_per_bucket_for_the_encoder() {
        let h = Histogram::default();
        h.record(Duration::from_nanos(10));
        h.record(Duration::from_micros(3));
        h.record(Duration::from_micros(3));
        h.record(Duration::from_secs(100));
        let (sum, count, buckets) = h.prometheus();
        assert_eq!(count, 4);
        assert!((sum - 100.000_006).abs() < 1e-6);
        assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(
            buckets.iter().map(|b| b.1).sum::<u64>(),
            count,
            "per-bucket counts add up to the count"
        );
        assert_eq!(buckets[0].1, 1, "under 1 µs lands in the first bucket");
        assert_eq!(
            buckets.last(),
            Some(&(f64::INFINITY, 1)),
            "100 s is past the last bound"
        );
    }
}
