//! One worker: its instance of the component, its queue, and the policy's
//! steps (attempt, judge, retry in place, dead-letter, settle) as methods
//! of [`Worker`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{Semaphore, mpsc, watch};
use tracing::Instrument;

use super::{DeadLetters, Queued, Run, WORKER_QUEUE, backoff, batch, log_failure, settled};
use crate::bus::dlq::DeadLetter;
use crate::bus::{BusMessage, Delivery, Meta, RUN};
use crate::runtime::undecodable;
use crate::runtime::{ComponentTemplate, Failure, FailureKind, HandleOutcome, Instance};
use crate::stats::{ComponentStats, FlowStats};
use crate::telemetry::Trace;
use crate::telemetry::logs::Handling;

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
    pub(super) template: Arc<ComponentTemplate>,
    /// The worker's number, in logs.
    pub(super) index: usize,
    /// Its instance; dropped when it fails (the next attempt makes one).
    pub(super) instance: Option<Instance>,
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

    /// Drops a failed instance (it is poisoned: the next attempt makes a
    /// fresh one) and counts the failure.
    pub(super) fn instance_failed(&mut self, failure: &Failure) {
        self.instance = None;
        let stats = &self.template.ctx.stats;
        ComponentStats::bump(&stats.traps);
        ComponentStats::bump(&stats.restarts);
        if failure.kind == FailureKind::Deadline {
            ComponentStats::bump(&stats.deadline_hits);
        }
    }

    /// Handles one queued delivery, with its trace, log fields, latency
    /// and in-flight count.
    async fn handle_one(&mut self, delivery: Delivery, flow: &FlowStats) {
        let start = std::time::Instant::now();
        let telemetry = &self.template.ctx.telemetry;
        let trace = telemetry.delivery(&delivery, self.template.name(), self.index);
        // Log lines written while it is handled carry its trace and
        // correlation ids; at debug level a span adds these fields.
        let handling = Handling::new(&trace, &delivery.msg.headers, &delivery.msg.payload);
        let span = tracing::debug_span!(
            "event",
            component = self.template.name(),
            subject = %delivery.msg.subject,
            sequence = delivery.meta.sequence,
        );
        let delivered = self.deliver_from(delivery, flow, None, &trace);
        handling.scope(delivered.instrument(span)).await;
        let took = start.elapsed();
        flow.latency.record(took);
        if let Some((t, s)) = trace.recorded_ids() {
            flow.latency.exemplar(took, t.to_string(), s.to_string());
        }
        trace.end();
        self.template
            .ctx
            .stats
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Owns one instance; handles its queue one message at a time.
pub(super) async fn worker(
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

/// Marks a call's span with what it came to: a failed instance is an
/// exception, a retry or reject an error.
pub(super) fn traced(call: &Trace, outcome: &HandleOutcome) {
    match outcome {
        HandleOutcome::Handled => {}
        HandleOutcome::Failed(f) => call.failure(&format!("{:?}", f.kind), &f.detail),
        HandleOutcome::Retry(r) => call.error(&format!("retry requested: {r}")),
        HandleOutcome::Reject(r) => call.error(&format!("rejected: {r}")),
    }
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
    async fn attempt_once(
        &mut self,
        msg: &BusMessage,
        meta: &Meta,
        attempt: u32,
        trace: &Trace,
    ) -> HandleOutcome {
        let template = &*self.template;
        let limit = template.ctx.limits.max_payload_bytes;
        if msg.payload.len() > limit {
            // Refused at the door: the guest never sees it.
            return HandleOutcome::Reject(format!(
                "payload of {} bytes exceeds the component's limit of {limit} bytes (limits.max_payload_bytes)",
                msg.payload.len()
            ));
        }
        if template.takes_market_events()
            && msg.reply_to.is_none()
            && let Some(Err(reason)) = msg.market_event()
        {
            // Market data the decoder refuses: the guest never sees it.
            return HandleOutcome::Reject(undecodable(reason));
        }
        let inst = match &mut self.instance {
            Some(inst) => inst,
            None => match template.instantiate().await {
                Ok(inst) => self.instance.insert(inst),
                Err(failure) => return HandleOutcome::Failed(failure),
            },
        };
        let stream = meta.stream.as_deref();
        let call = trace.call(template.name(), attempt);
        inst.set_trace(call.clone());
        let outcome = inst
            .handle(template, msg, stream, meta.sequence, attempt)
            .await;
        traced(&call, &outcome);
        call.end();
        outcome
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
                self.instance_failed(&failure);
                let template = &self.template;
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
        self.deliver_from(delivery, flow, None, &Trace::default())
            .await;
    }

    /// [`Self::deliver`], with the outcome of the first attempt already
    /// known when `first` holds it (an error answered inside a batch);
    /// its events and outcome go on `trace`.
    pub(super) async fn deliver_from(
        &mut self,
        delivery: Delivery,
        flow: &FlowStats,
        mut first: Option<HandleOutcome>,
        trace: &Trace,
    ) {
        let Delivery { msg, meta, settle } = delivery;
        let max = self.template.ctx.limits.max_deliver;
        let mut attempt = meta.attempt.max(1);
        let reason = loop {
            let outcome = match first.take() {
                Some(outcome) => outcome,
                None => self.attempt_once(&msg, &meta, attempt, trace).await,
            };
            match self.judge(flow, &msg, attempt, outcome) {
                Ok(()) => {
                    trace.outcome("handled");
                    return settled(&self.template.ctx, &meta, "ack", settle.ack().await);
                }
                Err(Verdict::Reject(reason)) => break reason,
                Err(Verdict::Retry(reason)) if attempt >= max => break reason,
                Err(Verdict::Retry(reason)) => trace.retry(attempt, &reason, backoff(attempt)),
            }
            ComponentStats::bump(&flow.retried);
            // Keep the transport from redelivering it behind later messages.
            let _ = settle.in_progress().await;
            self.template.ctx.clock.sleep(backoff(attempt)).await;
            attempt += 1;
        };
        let template = &*self.template;
        trace.dead_lettered(&reason, attempt);
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
