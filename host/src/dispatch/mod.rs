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
//! stored (see [`dead_letters`]). A dead letter that cannot be stored
//! leaves the message to its transport's redelivery (JetStream) or is
//! logged as lost (core: at most once).
//!
//! Failures are logged under the component's rate limit
//! ([`crate::failure_log`]): a flood of them writes a few lines and a
//! summary per interval, while the counters and dead letters hold each.
//!
//! Batches: a component that exports `handle-batch` gets the messages
//! already waiting for its instance in one call (see [`batch`]), with the
//! same policy for each of them.

mod batch;
mod dead_letters;

pub(crate) use dead_letters::DeadLetters;

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::bus::dlq::DeadLetter;
use crate::bus::{Bus, BusMessage};
use crate::bus::{Delivery, Meta, RUN, SettleError, Sink};
use crate::capability::ComponentContext;
use crate::failure_log::Verdict as LogVerdict;
use crate::runtime::{ComponentTemplate, FailureKind, HandleOutcome, Instance};
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
}

impl Workers {
    /// Starts the component's instance workers. Each handles its messages
    /// with the version `current` holds when it takes them: a new version
    /// (a hot update) takes over between two messages, so the one in
    /// flight finishes on the old instance and the queued ones go to new.
    pub fn spawn(
        current: watch::Receiver<Arc<ComponentTemplate>>,
        bus: Arc<dyn Bus>,
        tasks: &mut JoinSet<()>,
    ) -> Workers {
        let template = current.borrow().clone();
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
            tasks.spawn(worker(current.clone(), index, rx, room, letters));
        }
        Workers {
            queues: Arc::new(queues),
            hasher: Default::default(),
            flow: template.ctx.stats.add_flow(),
            stats: template.ctx.stats.clone(),
        }
    }

    /// The counters of the subscription this handle feeds from.
    pub fn flow_stats(&self) -> &Arc<FlowStats> {
        &self.flow
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
        for delivery in deliveries {
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

    fn flow(&self) -> &FlowStats {
        &self.flow
    }
}

/// Closes a worker's room when the worker stops, however it stops.
struct CloseOnDrop(Arc<Semaphore>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// One worker's instance of the component and what it needs to deliver:
/// the policy's steps are its methods.
pub(crate) struct Worker {
    /// The version in use; a hot update swaps it between two messages.
    template: Arc<ComponentTemplate>,
    /// The worker's number, in logs.
    index: usize,
    /// Its instance; dropped when it fails (the next attempt makes one).
    instance: Option<Instance>,
    /// Where its dead letters go.
    letters: DeadLetters,
}

impl Worker {
    /// A worker of `template` with no instance yet.
    pub(crate) fn new(
        template: Arc<ComponentTemplate>,
        index: usize,
        letters: DeadLetters,
    ) -> Self {
        Worker {
            template,
            index,
            instance: None,
            letters,
        }
    }

    /// Switches to the version `current` holds, dropping the old
    /// version's instance (the next message makes one of the new).
    fn take_new_version(&mut self, current: &mut watch::Receiver<Arc<ComponentTemplate>>) {
        let next = current.borrow_and_update().clone();
        tracing::debug!(
            component = next.name(),
            instance = self.index,
            from = self.template.version(),
            to = next.version(),
            "worker takes the new version"
        );
        self.template = next;
        self.instance = None;
    }

    /// Handles one queued delivery, with its span, latency and in-flight count.
    async fn handle_one(&mut self, delivery: Delivery, flow: &FlowStats) {
        let start = std::time::Instant::now();
        // A span per event (at debug level, so it costs nothing unless asked
        // for with RUST_LOG=weir=debug): logs inside carry these fields.
        let span = tracing::debug_span!(
            "event",
            component = self.template.name(),
            subject = %delivery.msg.subject,
            sequence = delivery.meta.sequence,
            correlation_id = tracing::field::Empty,
        );
        if !span.is_disabled()
            && let Some(id) = correlation_id(&delivery.msg)
        {
            span.record("correlation_id", id.as_str());
        }
        self.deliver(delivery, flow).instrument(span).await;
        flow.latency.record(start.elapsed());
        self.template
            .ctx
            .stats
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Owns one instance; handles its queue one message at a time.
async fn worker(
    mut current: watch::Receiver<Arc<ComponentTemplate>>,
    index: usize,
    mut rx: mpsc::UnboundedReceiver<Run>,
    room: Arc<Semaphore>,
    letters: DeadLetters,
) {
    let _close = CloseOnDrop(room.clone());
    let mut w = Worker::new(current.borrow_and_update().clone(), index, letters);
    let mut pending: VecDeque<Queued> = VecDeque::with_capacity(RUN);
    // Failures left out of the log are summed up even when no more come.
    let mut summaries = tokio::time::interval(crate::failure_log::INTERVAL);
    summaries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // All three are cancel-safe: a lost race loses no message.
            run = rx.recv() => match run {
                Some(run) => take(&room, &mut pending, run),
                None => return,
            },
            // An idle worker lets go of the old version's instance at once.
            Ok(()) = current.changed() => {
                w.take_new_version(&mut current);
                continue;
            }
            _ = summaries.tick() => {
                for summary in w.template.ctx.stats.failures.due(std::time::Instant::now()) {
                    summary.log(w.template.name());
                }
                continue;
            }
        }
        // Runs already waiting too, up to a queue's worth: one wake-up for
        // all of them, and the batches that follow run back to back.
        while pending.len() < WORKER_QUEUE {
            match rx.try_recv() {
                Ok(run) => take(&room, &mut pending, run),
                Err(_) => break,
            }
        }
        while !pending.is_empty() {
            if current.has_changed().unwrap_or(false) {
                w.take_new_version(&mut current);
            }
            let n = batch::batchable(&w.template, &pending);
            if n >= 2 {
                let taken: Vec<Queued> = pending.drain(..n).collect();
                match w.handle_batch(taken).await {
                    // Not reached (the batch stopped at an error): in
                    // front of the queue again, in order.
                    batch::Rest::Again(rest) => {
                        for q in rest.into_iter().rev() {
                            pending.push_front(q);
                        }
                    }
                    // The instance failed: one by one, before the rest.
                    batch::Rest::Singly(rest) => {
                        for (delivery, flow) in rest {
                            w.handle_one(delivery, &flow).await;
                        }
                    }
                }
            } else if let Some((delivery, flow)) = pending.pop_front() {
                w.handle_one(delivery, &flow).await;
            }
        }
    }
}

/// Moves a run from the queue to what the worker holds, giving its room back.
fn take(room: &Semaphore, pending: &mut VecDeque<Queued>, run: Run) {
    room.add_permits(run.len());
    pending.extend(run);
}

/// The correlation id of a message: a `correlation-id` style header, or the
/// payload's `correlation_id` field (as in the alert service's messages).
fn correlation_id(msg: &BusMessage) -> Option<String> {
    let header = msg.headers.iter().find(|(k, _)| {
        let k = k.to_ascii_lowercase();
        k == "correlation-id" || k == "x-correlation-id" || k == "correlation_id"
    });
    if let Some((_, v)) = header {
        return Some(v.clone());
    }
    if !msg.payload.windows(14).any(|w| w == b"correlation_id") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&msg.payload).ok()?;
    v.get("correlation_id")?.as_str().map(str::to_owned)
}

/// Longest reason kept from a guest (it lands in logs and dead letters).
const MAX_REASON: usize = 4096;

/// Cuts a guest-supplied reason to [`MAX_REASON`] bytes.
fn clip(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str("… (cut)");
    }
    reason
}

/// Why a delivery did not end in `handled`.
enum Verdict {
    /// Worth another delivery, until the limit.
    Retry(String),
    /// Never: dead-letter now.
    Reject(String),
}

impl Worker {
    /// Runs `handle` once, on a fresh instance if there is none.
    async fn attempt_once(&mut self, msg: &BusMessage, meta: &Meta, attempt: u32) -> HandleOutcome {
        let template = &*self.template;
        let limit = template.ctx.limits.max_payload_bytes;
        if msg.payload.len() > limit {
            // Refused at the door: the guest never sees it.
            return HandleOutcome::Reject(format!(
                "payload of {} bytes exceeds the component's limit of {limit} bytes (limits.max_payload_bytes)",
                msg.payload.len()
            ));
        }
        let inst = match &mut self.instance {
            Some(inst) => inst,
            None => match template.instantiate().await {
                Ok(inst) => self.instance.insert(inst),
                Err(failure) => return HandleOutcome::Failed(failure),
            },
        };
        let stream = meta.stream.as_deref();
        inst.handle(template, msg, stream, meta.sequence, attempt)
            .await
    }

    /// Counts and logs an outcome; drops a failed instance (it is poisoned,
    /// the next attempt gets a fresh one).
    fn judge(
        &mut self,
        flow: &FlowStats,
        msg: &BusMessage,
        attempt: u32,
        outcome: HandleOutcome,
    ) -> Result<(), Verdict> {
        let template = &*self.template;
        let stats = &template.ctx.stats;
        if !matches!(outcome, HandleOutcome::Handled) {
            ComponentStats::bump(&flow.failed);
        }
        match outcome {
            HandleOutcome::Handled => {
                ComponentStats::bump(&flow.handled);
                Ok(())
            }
            // Logged with its dead letter.
            HandleOutcome::Reject(reason) => {
                Err(Verdict::Reject(format!("rejected: {}", clip(reason))))
            }
            HandleOutcome::Retry(reason) => {
                Err(Verdict::Retry(format!("retry requested: {}", clip(reason))))
            }
            HandleOutcome::Failed(failure) => {
                self.instance = None;
                ComponentStats::bump(&stats.traps);
                ComponentStats::bump(&stats.restarts);
                if failure.kind == FailureKind::Deadline {
                    ComponentStats::bump(&stats.deadline_hits);
                }
                if log_failure(&template.ctx, "failed attempts", || {
                    format!("{}: {failure}", msg.subject)
                }) {
                    tracing::error!(component = template.name(), instance = self.index, subject = %msg.subject, attempt, "{failure}");
                }
                Err(Verdict::Retry(failure.to_string()))
            }
        }
    }

    /// Delivers until handled or dead-lettered, then settles: the one
    /// policy (see the module's documentation). Workers call it for live
    /// traffic, the replay for recorded events.
    pub(crate) async fn deliver(&mut self, delivery: Delivery, flow: &FlowStats) {
        self.deliver_from(delivery, flow, None).await;
    }

    /// [`Self::deliver`], with the outcome of the first attempt already
    /// known when `first` holds it (an error answered inside a batch).
    async fn deliver_from(
        &mut self,
        delivery: Delivery,
        flow: &FlowStats,
        mut first: Option<HandleOutcome>,
    ) {
        let Delivery { msg, meta, settle } = delivery;
        let max = self.template.ctx.limits.max_deliver;
        let mut attempt = meta.attempt.max(1);
        let reason = loop {
            let outcome = match first.take() {
                Some(outcome) => outcome,
                None => self.attempt_once(&msg, &meta, attempt).await,
            };
            match self.judge(flow, &msg, attempt, outcome) {
                Ok(()) => return settled(&self.template.ctx, &meta, "ack", settle.ack().await),
                Err(Verdict::Reject(reason)) => break reason,
                Err(Verdict::Retry(reason)) if attempt >= max => break reason,
                Err(Verdict::Retry(_)) => {}
            }
            ComponentStats::bump(&flow.retried);
            // Keep the transport from redelivering it behind later messages.
            let _ = settle.in_progress().await;
            self.template.ctx.clock.sleep(backoff(attempt)).await;
            attempt += 1;
        };
        let template = &*self.template;
        let letter = DeadLetter::new(
            template.ctx.clock.now(),
            &msg,
            template.name(),
            reason,
            attempt,
            meta.stream.clone(),
            meta.sequence,
        );
        self.letters
            .store(&template.ctx, flow, letter, settle, meta)
            .await;
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
    fn correlation_ids_come_from_headers_or_payload() {
        use super::{BusMessage, correlation_id};
        let mut m = BusMessage::new(
            "alerts.created",
            r#"{"correlation_id":"req-12345","alert":{}}"#,
        );
        assert_eq!(correlation_id(&m).as_deref(), Some("req-12345"));
        m.headers.push(("X-Correlation-Id".into(), "hdr-1".into()));
        assert_eq!(correlation_id(&m).as_deref(), Some("hdr-1"));
        assert_eq!(correlation_id(&BusMessage::new("a", "{}")), None);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(10));
        assert_eq!(backoff(2), Duration::from_millis(20));
        assert_eq!(backoff(4), Duration::from_millis(80));
        assert_eq!(backoff(30), Duration::from_secs(1));
    }
}
