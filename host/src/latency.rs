//! A lock-free latency histogram with power-of-two buckets (ns): cheap to
//! record on every event, read for p50/p99 (since start or over an
//! interval, from two [`Histogram::counts`]) and exported to Prometheus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
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

    /// Counts per bucket now.
    pub fn counts(&self) -> Counts {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }

    /// The upper bound (ns) of the bucket holding quantile `q` (0..=1) of
    /// everything recorded, 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        quantile(&self.counts(), q)
    }

    /// Prometheus buckets from 1 µs to about 4 s: (upper bound in seconds,
    /// cumulative count), then `+Inf`; with the sum (s) and count.
    pub fn prometheus(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let counts = self.counts();
        let mut out = Vec::new();
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if (9..32).contains(&i) {
                out.push(((1u64 << (i + 1)) as f64 / 1e9, seen));
            }
        }
        out.push((f64::INFINITY, seen));
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, seen, out)
    }
}

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
    fn prometheus_buckets_are_cumulative_and_end_in_inf() {
        let h = Histogram::default();
        h.record(Duration::from_micros(3));
        h.record(Duration::from_secs(100));
        let (sum, count, buckets) = h.prometheus();
        assert_eq!(count, 2);
        assert!((sum - 100.000_003).abs() < 1e-6);
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        );
        assert_eq!(buckets.first().map(|b| b.1), Some(0), "nothing under 1 µs");
        assert_eq!(
            buckets[buckets.len() - 2].1,
            1,
            "100 s is past the last bound"
        );
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 2)));
    }
}
