//! Runs a component's deliveries through its instances, with one policy
//! for every transport.
//!
//! Ordering rule: deliveries are assigned to instances by a hash of their
//! subject, so all events of one subject (one symbol) are handled by one
//! instance, one at a time, in arrival order — with any number of
//! instances. A retried message is retried in place, after a backoff,
//! before the next one of its subject, so order holds through retries on
//! every transport (a JetStream message is kept `in progress` meanwhile,
//! so the server does not redeliver it behind later ones).
//!
//! Policy: handled → ack; `retry` or a failed instance → again after
//! [`backoff`], up to `limits.max_deliver` deliveries; `reject` or the last
//! delivery → dead letter on `dlq.<subject>`, then term once the letter is
//! stored (see `dead_letters`). A dead letter that cannot be stored
//! leaves the message to its transport's redelivery (JetStream) or is
//! logged as lost (core: at most once).
//!
//! Failures are logged under the component's rate limit
//! ([`crate::failure_log`]): a flood of them writes a few lines and a
//! summary per interval, while the counters and dead letters hold each.
//!
//! Batches: a component that exports `handle-batch` gets the messages
//! already waiting for its instance in one call (see `batch`), with the
//! same policy for each of them.

mod batch;
mod dead_letters;
mod worker;

pub(crate) use dead_letters::DeadLetters;
pub(crate) use worker::Worker;

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::bus::{Delivery, Meta, RUN, SettleError, Sink};
use crate::capability::ComponentContext;
use crate::failure_log::Verdict as LogVerdict;
use crate::runtime::ComponentTemplate;
use crate::stats::{ComponentStats, FlowStats};

/// Messages queued per instance before the subscription backs up.
const WORKER_QUEUE: usize = 1024;

/// Backoff before delivery `attempt + 1`: 10 ms doubling, capped at 1 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(10u64.saturating_mul(1 << attempt.saturating_sub(1).min(7)))
        .min(Duration::from_secs(1))
}

/// A delivery in a worker's queue, with the counters of the subscription it came from.
type Queued = (Delivery, Arc<FlowStats>);

/// Deliveries for one worker, in arrival order: what a source had ready
/// goes to each worker in one send (one queue synchronisation and at most
/// one wake-up for the run, not one each).
type Run = Vec<Queued>;

/// One worker's queue.
struct Queue {
    /// Runs in arrival order; unbounded because `room` bounds it.
    tx: mpsc::UnboundedSender<Run>,
    /// Deliveries the queue may still take (WORKER_QUEUE at most): a
    /// source waits for room, the worker gives it back as it takes runs
    /// (and holds at most as many again, plus a run). Closed when the worker
    /// stops, so that no source waits for ever.
    room: Arc<Semaphore>,
}

/// The instance workers of one component; routers feed them.
#[derive(Clone)]
pub struct Workers {
    queues: Arc<Vec<Queue>>,
    /// Picks the worker from the subject (foldhash: only spreads subjects
    /// over workers, and is paid on every message).
    hasher: foldhash::fast::RandomState,
    stats: Arc<ComponentStats>,
    /// The counters of the subscription this handle feeds from.
    flow: Arc<FlowStats>,
    /// Whether deliveries are stamped with when they came (for the queue
    /// wait of their spans: only while traces are exported).
    stamp: bool,
}

impl Workers {
    /// Starts the component's instance workers. Each handles its messages
    /// with the version `current` holds when it takes them: a new version
    /// (a hot update) takes over between two messages, so the one in
    /// flight finishes on the old instance and the queued ones go to new.
    pub fn spawn(
        current: watch::Receiver<Arc<ComponentTemplate>>,
        tasks: &mut JoinSet<()>,
    ) -> Workers {
        let template = current.borrow().clone();
        // Every version of a component publishes on the same bus.
        let bus = &template.ctx.messaging.bus;
        let instances = template.ctx.limits.instances;
        let mut queues = Vec::with_capacity(instances);
        for index in 0..instances {
            let (tx, rx) = mpsc::unbounded_channel();
            let room = Arc::new(Semaphore::new(WORKER_QUEUE));
            queues.push(Queue {
                tx,
                room: room.clone(),
            });
            let (letters, confirmer) = DeadLetters::pipelined(bus.clone());
            tasks.spawn(confirmer);
            tasks.spawn(worker::worker(current.clone(), index, rx, room, letters));
        }
        Workers {
            queues: Arc::new(queues),
            hasher: Default::default(),
            flow: template.ctx.stats.add_flow(),
            stats: template.ctx.stats.clone(),
            stamp: template.ctx.telemetry.is_on(),
        }
    }

    /// A handle for one more subscription, with its own counters (which
    /// count in the component's totals too).
    pub fn for_subscription(&self) -> Workers {
        Workers {
            flow: self.stats.add_flow(),
            ..self.clone()
        }
    }

    /// Hands deliveries (in arrival order) to the workers that own their
    /// subjects, each worker's share of every [`RUN`] of them in one send;
    /// false once workers are gone.
    pub async fn dispatch_run(&self, deliveries: impl IntoIterator<Item = Delivery>) -> bool {
        let mut deliveries = deliveries.into_iter().peekable();
        while deliveries.peek().is_some() {
            if !self.dispatch_shares(deliveries.by_ref().take(RUN)).await {
                return false;
            }
        }
        true
    }

    /// [`Self::dispatch_run`] for at most [`RUN`] deliveries.
    async fn dispatch_shares(&self, deliveries: impl Iterator<Item = Delivery>) -> bool {
        let n = self.queues.len();
        // A share gets room for the whole run when its first delivery
        // comes (so none grows as it fills, and an empty one costs nothing).
        let most = deliveries.size_hint().0.clamp(1, RUN);
        let mut runs: Vec<Run> = (0..n).map(|_| Vec::new()).collect();
        let received = self.stamp.then(std::time::Instant::now);
        for mut delivery in deliveries {
            delivery.meta.received = received;
            let at = if n == 1 {
                0
            } else {
                self.hasher.hash_one(&delivery.msg.subject) as usize % n
            };
            if let Some(run) = runs.get_mut(at) {
                if run.capacity() == 0 {
                    run.reserve_exact(most);
                }
                run.push((delivery, self.flow.clone()));
            }
        }
        let count = runs.iter().map(Vec::len).sum::<usize>() as u64;
        self.stats.in_flight.fetch_add(count, Ordering::Relaxed);
        self.flow.received.fetch_add(count, Ordering::Relaxed);
        let mut shares = self.queues.iter().zip(runs);
        while let Some((queue, run)) = shares.next() {
            if run.is_empty() {
                continue;
            }
            let len = run.len();
            // A share is at most RUN long, far within the queue's room.
            let want = u32::try_from(len).unwrap_or(u32::MAX);
            let sent = match queue.room.acquire_many(want).await {
                Ok(permits) => {
                    permits.forget();
                    queue.tx.send(run).is_ok()
                }
                Err(_) => false,
            };
            if !sent {
                // This share and the ones not tried are not in flight (a
                // stopped worker's queue is dropped with what it held).
                let lost = len + shares.map(|(_, r)| r.len()).sum::<usize>();
                self.stats
                    .in_flight
                    .fetch_sub(lost as u64, Ordering::Relaxed);
                return false;
            }
        }
        true
    }
}

impl Sink for Workers {
    fn take<I>(&self, run: I) -> impl std::future::Future<Output = bool> + Send
    where
        I: IntoIterator<Item = Delivery> + Send,
        I::IntoIter: Send,
    {
        self.dispatch_run(run)
    }

    fn flow(&self) -> &Arc<FlowStats> {
        &self.flow
    }
}

/// Logs a failed settle: the transport will deliver the message again.
fn settled(ctx: &ComponentContext, meta: &Meta, what: &str, r: Result<(), SettleError>) {
    if let Err(e) = r
        && log_failure(ctx, "failed settles", || format!("{what}: {e}"))
    {
        tracing::warn!(
            component = ctx.name.as_str(),
            stream = meta.stream,
            sequence = meta.sequence,
            "could not {what} the message (it will be redelivered): {e}"
        );
    }
}

/// Counts a failure of `kind` in the component's failure log; whether to
/// log it in full (a summary of an interval that ended is logged here).
fn log_failure(ctx: &ComponentContext, kind: &'static str, what: impl FnOnce() -> String) -> bool {
    let (verdict, summary) = ctx
        .stats
        .failures
        .note(kind, std::time::Instant::now(), what);
    if let Some(summary) = summary {
        summary.log(&ctx.name);
    }
    verdict == LogVerdict::Log
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(10));
        assert_eq!(backoff(2), Duration::from_millis(20));
        assert_eq!(backoff(4), Duration::from_millis(80));
        assert_eq!(backoff(30), Duration::from_secs(1));
    }
}
