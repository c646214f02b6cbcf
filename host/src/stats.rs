//! Counters per component, shared by its instances and the dispatcher.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::latency::{self, Counts, Histogram};

/// Event and failure counters of one component since start.
#[derive(Debug, Default)]
pub struct ComponentStats {
    /// Message counters, one set per subscription (registered at start);
    /// the component's own message figures are their sums.
    flows: RwLock<Vec<Arc<FlowStats>>>,
    /// Instances that trapped (including deadline and memory limit hits).
    pub traps: AtomicU64,
    /// `handle` calls stopped by the per-event deadline.
    pub deadline_hits: AtomicU64,
    /// Instances thrown away and rebuilt.
    pub restarts: AtomicU64,
    /// Messages it published (core and JetStream).
    pub published: AtomicU64,
    /// Host calls refused by its grants.
    pub denied: AtomicU64,
    /// Host calls refused by a quota (host calls per event, rates).
    pub limited: AtomicU64,
    /// Messages currently between subscription and settlement.
    pub in_flight: AtomicU64,
    /// Log and stdout/stderr lines written to the host log.
    pub log_lines: AtomicU64,
    /// Log and stdout/stderr lines dropped by the rate limit.
    pub log_dropped: AtomicU64,
    /// `handle-batch` calls made (its batches).
    pub batches: AtomicU64,
    /// Messages passed to those calls.
    pub batched: AtomicU64,
    /// The version running now: 1 from the start, one more per hot update
    /// (0 before the host sets it).
    pub version: AtomicU64,
    /// Its failures' logs, rate-limited (shared by instances and versions).
    pub failures: crate::failure_log::FailureLog,
}

/// A plain copy of [`ComponentStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ComponentSnapshot {
    /// See [`FlowStats::received`], summed over subscriptions.
    pub received: u64,
    /// See [`FlowStats::handled`], summed over subscriptions.
    pub handled: u64,
    /// See [`FlowStats::failed`], summed over subscriptions.
    pub failed: u64,
    /// See [`FlowStats::retried`], summed over subscriptions.
    pub retried: u64,
    /// See [`FlowStats::dead_lettered`], summed over subscriptions.
    pub dead_lettered: u64,
    /// See [`ComponentStats::traps`].
    pub traps: u64,
    /// See [`ComponentStats::deadline_hits`].
    pub deadline_hits: u64,
    /// See [`ComponentStats::restarts`].
    pub restarts: u64,
    /// See [`ComponentStats::published`].
    pub published: u64,
    /// See [`ComponentStats::denied`].
    pub denied: u64,
    /// See [`ComponentStats::limited`].
    pub limited: u64,
    /// See [`ComponentStats::in_flight`].
    pub in_flight: u64,
    /// See [`ComponentStats::log_lines`].
    pub log_lines: u64,
    /// See [`ComponentStats::log_dropped`].
    pub log_dropped: u64,
    /// See [`ComponentStats::batches`].
    pub batches: u64,
    /// See [`ComponentStats::batched`].
    pub batched: u64,
}

impl ComponentStats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counters for one more subscription, counted in this component's totals.
    pub fn add_flow(&self) -> Arc<FlowStats> {
        let flow = Arc::new(FlowStats::default());
        self.flows
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(flow.clone());
        flow
    }

    /// Handler latency counts over all its subscriptions.
    pub fn latency_counts(&self) -> Counts {
        let flows = self.flows.read().unwrap_or_else(|e| e.into_inner());
        flows.iter().fold([0; latency::BUCKETS], |sum, f| {
            let c = f.latency.counts();
            std::array::from_fn(|i| sum[i] + c[i])
        })
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> ComponentSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let flows = self.flows.read().unwrap_or_else(|e| e.into_inner());
        let sum = |f: fn(&FlowStats) -> &AtomicU64| flows.iter().map(|x| l(f(x))).sum();
        ComponentSnapshot {
            received: sum(|f| &f.received),
            handled: sum(|f| &f.handled),
            failed: sum(|f| &f.failed),
            retried: sum(|f| &f.retried),
            dead_lettered: sum(|f| &f.dead_lettered),
            traps: l(&self.traps),
            deadline_hits: l(&self.deadline_hits),
            restarts: l(&self.restarts),
            published: l(&self.published),
            denied: l(&self.denied),
            limited: l(&self.limited),
            in_flight: l(&self.in_flight),
            log_lines: l(&self.log_lines),
            log_dropped: l(&self.log_dropped),
            batches: l(&self.batches),
            batched: l(&self.batched),
        }
    }
}

/// Message counters of one subscription of one component: the `subject` label of
/// the per-message metrics (the subscription's subject, so the label's
/// values stay few however many concrete subjects flow through it).
#[derive(Debug, Default)]
pub struct FlowStats {
    /// Messages taken from the subscription.
    pub received: AtomicU64,
    /// Messages handled successfully.
    pub handled: AtomicU64,
    /// Delivery attempts that did not end handled.
    pub failed: AtomicU64,
    /// Deliveries that ended in a retry.
    pub retried: AtomicU64,
    /// Messages stored as dead letters.
    pub dead_lettered: AtomicU64,
    /// Wall time of each delivery.
    pub latency: Histogram,
    /// For a JetStream consumer: messages in the stream not yet delivered
    /// to it, as of the last delivery (its lag).
    pub pending: AtomicU64,
    /// For a JetStream consumer: why its last pull failed, until one works
    /// again (readiness reports it).
    pub pull_error: std::sync::Mutex<Option<String>>,
}

impl FlowStats {
    /// Records the outcome of a pull: `None` when it worked.
    pub fn set_pull_error(&self, error: Option<String>) {
        *self.pull_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// Why the last pull failed, if it did.
    pub fn pull_error(&self) -> Option<String> {
        self.pull_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
