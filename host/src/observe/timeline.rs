//! A short history of the host, one sample per second: rates, handler
//! latency and cache hit rate over each second, for the dashboard's charts.
//! Counters are read, never reset, so `/metrics` is unaffected.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Observed;
use crate::latency::{self, Counts};
use crate::shutdown::Shutdown;
use crate::stats::ComponentSnapshot;

/// Samples kept: ten minutes at one a second.
const KEEP: usize = 600;

/// One component over one interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentSample {
    /// Messages received per second.
    pub received_per_s: f64,
    /// Messages handled per second.
    pub handled_per_s: f64,
    /// Failed attempts per second.
    pub failed_per_s: f64,
    /// Messages published per second.
    pub published_per_s: f64,
    /// Median handler latency in the interval, ms (bucket bound; 0 when idle).
    pub p50_ms: f64,
    /// 99th percentile handler latency in the interval, ms.
    pub p99_ms: f64,
    /// Traps in the interval.
    pub traps: u64,
    /// Queued or being handled at the end of the interval.
    pub in_flight: u64,
}

/// The host over one interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// End of the interval, ms since the Unix epoch.
    pub t: u64,
    /// Per component, in manifest order.
    pub components: Vec<(String, ComponentSample)>,
    /// Cache reads per second.
    pub cache_reads_per_s: f64,
    /// Hits over reads in the interval (`None` without reads).
    pub cache_hit_rate: Option<f64>,
}

/// A cheap-to-clone handle to the recorded samples.
#[derive(Clone, Default)]
pub struct Timeline {
    /// Newest last.
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

impl Timeline {
    /// The samples, oldest first; only those after `since` (ms) when given.
    pub fn samples(&self, since: Option<u64>) -> Vec<Sample> {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.iter()
            .filter(|x| since.is_none_or(|t| x.t > t))
            .cloned()
            .collect()
    }

    /// The newest sample.
    pub fn last(&self) -> Option<Sample> {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.back().cloned()
    }

    fn push(&self, sample: Sample) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() == KEEP {
            s.pop_front();
        }
        s.push_back(sample);
    }
}

/// What one sample is a difference against.
#[derive(Default)]
struct Before {
    components: HashMap<String, (ComponentSnapshot, Counts)>,
    cache_reads: u64,
    cache_hits: u64,
}

/// Takes a sample every `every` until shutdown.
pub async fn run(observed: Observed, timeline: Timeline, every: Duration, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(every);
    let mut before = Before::default();
    let mut last = Instant::now();
    sample(&observed, &mut before, every);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let elapsed = last.elapsed();
        last = Instant::now();
        timeline.push(sample(&observed, &mut before, elapsed));
    }
}

fn sample(o: &Observed, before: &mut Before, elapsed: Duration) -> Sample {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let per_s = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
    let components = o
        .components
        .iter()
        .map(|(name, stats)| {
            let now = stats.snapshot();
            let counts = stats.latency_counts();
            let (then, then_counts) = before
                .components
                .insert(name.clone(), (now, counts))
                .unwrap_or((ComponentSnapshot::default(), [0; latency::BUCKETS]));
            let window = latency::delta(&counts, &then_counts);
            let ms = |q| latency::quantile(&window, q) as f64 / 1e6;
            let c = ComponentSample {
                received_per_s: per_s(now.received, then.received),
                handled_per_s: per_s(now.handled, then.handled),
                failed_per_s: per_s(now.failed, then.failed),
                published_per_s: per_s(now.published, then.published),
                p50_ms: ms(0.5),
                p99_ms: ms(0.99),
                traps: now.traps.saturating_sub(then.traps),
                in_flight: now.in_flight,
            };
            (name.clone(), c)
        })
        .collect();
    let layers = o.cache.as_ref().map(|c| c.stats()).unwrap_or_default();
    let (reads, hits) = crate::cache::reads_and_hits(&layers);
    let (d_reads, d_hits) = (
        reads.saturating_sub(before.cache_reads),
        hits.saturating_sub(before.cache_hits),
    );
    (before.cache_reads, before.cache_hits) = (reads, hits);
    Sample {
        t: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        components,
        cache_reads_per_s: d_reads as f64 / secs,
        cache_hit_rate: crate::cache::hit_ratio(d_reads, d_hits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::ComponentStats;

    #[test]
    fn a_sample_holds_the_rates_of_its_interval() {
        let stats = Arc::new(ComponentStats::default());
        let observed = Observed::new("h", vec![("c".into(), stats.clone())]);
        let mut before = Before::default();
        sample(&observed, &mut before, Duration::from_secs(1));
        let flow = stats.add_flow();
        for _ in 0..10 {
            ComponentStats::bump(&flow.handled);
            flow.latency.record(Duration::from_micros(3));
        }
        let s = sample(&observed, &mut before, Duration::from_secs(2));
        let c = &s.components[0].1;
        assert_eq!(c.handled_per_s, 5.0);
        assert_eq!(c.p50_ms, 0.004096);
        assert_eq!(s.cache_hit_rate, None, "no cache, no reads");
        let idle = sample(&observed, &mut before, Duration::from_secs(1));
        assert_eq!(idle.components[0].1.handled_per_s, 0.0);
        assert_eq!(idle.components[0].1.p99_ms, 0.0);
    }
}
