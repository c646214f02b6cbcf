//! Runs a component's messages through its instances.
//!
//! Ordering rule: messages are assigned to instances by a hash of their
//! subject, so all events of one subject (one symbol) are handled by one
//! instance, one at a time, in arrival order — with any number of
//! instances. On a core subject a retried message is retried before the
//! next one of its subject, so order holds through retries too. On a
//! JetStream consumer a retry is a nak with backoff: the server redelivers
//! it after messages that arrived meanwhile (set the consumer's
//! `max_ack_pending` to 1 where strict order matters more than speed).

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::bus::{Bus, BusError, BusMessage, Subscription};
use crate::dlq::DeadLetter;
use crate::runtime::{ComponentTemplate, FailureKind, HandleOutcome, Instance};
use crate::stats::{ComponentStats, FlowStats};

/// Messages queued per instance before the subscription backs up.
const WORKER_QUEUE: usize = 1024;

/// Backoff before delivery `attempt + 1`: 10 ms doubling, capped at 1 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(10u64.saturating_mul(1 << attempt.saturating_sub(1).min(7)))
        .min(Duration::from_secs(1))
}

/// One message for a worker.
pub struct Job {
    /// The message.
    pub msg: BusMessage,
    /// Set when it came from a JetStream consumer.
    pub stream: Option<StreamJob>,
}

/// Where a JetStream message came from, and how to settle it.
pub struct StreamJob {
    /// Stream name.
    pub stream: String,
    /// Stream sequence.
    pub sequence: u64,
    /// Delivery count from the server (1 on first delivery).
    pub attempt: u32,
    /// Acknowledges, naks or terminates this delivery.
    pub acker: async_nats::jetstream::message::Acker,
}

/// A job in a worker's queue, with the counters of the subscription it came from.
type Queued = (Job, Arc<FlowStats>);

/// The instance workers of one component; routers feed them.
#[derive(Clone)]
pub struct Workers {
    senders: Arc<Vec<mpsc::Sender<Queued>>>,
    /// Picks the worker from the subject.
    hasher: std::collections::hash_map::RandomState,
    stats: Arc<ComponentStats>,
    /// The counters of the subscription this handle feeds from.
    flow: Arc<FlowStats>,
}

impl Workers {
    /// Starts the component's instance workers.
    pub fn spawn(
        template: Arc<ComponentTemplate>,
        bus: Arc<dyn Bus>,
        tasks: &mut JoinSet<()>,
    ) -> Workers {
        let instances = template.ctx.limits.instances;
        let mut senders = Vec::with_capacity(instances);
        for index in 0..instances {
            let (tx, rx) = mpsc::channel(WORKER_QUEUE);
            senders.push(tx);
            tasks.spawn(worker(template.clone(), index, rx, bus.clone()));
        }
        Workers {
            senders: Arc::new(senders),
            hasher: Default::default(),
            flow: template.ctx.stats.add_flow(),
            stats: template.ctx.stats.clone(),
        }
    }

    /// The counters of the subscription this handle feeds from.
    pub fn flow(&self) -> &Arc<FlowStats> {
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

    /// Hands a job to the worker that owns its subject; false once workers are gone.
    pub async fn dispatch(&self, job: Job) -> bool {
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        ComponentStats::bump(&self.flow.received);
        let worker =
            &self.senders[(self.hasher.hash_one(&job.msg.subject) as usize) % self.senders.len()];
        if worker.send((job, self.flow.clone())).await.is_err() {
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// Moves messages from a core subscription to the workers until shutdown.
pub async fn route(mut sub: Subscription, workers: Workers, mut shutdown: watch::Receiver<bool>) {
    loop {
        let msg = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            msg = sub.next() => match msg { Some(m) => m, None => break },
        };
        if !workers.dispatch(Job { msg, stream: None }).await {
            break;
        }
    }
}

/// Owns one instance; handles its queue one message at a time.
async fn worker(
    template: Arc<ComponentTemplate>,
    index: usize,
    mut rx: mpsc::Receiver<Queued>,
    bus: Arc<dyn Bus>,
) {
    let mut instance: Option<Instance> = None;
    while let Some((job, flow)) = rx.recv().await {
        let start = std::time::Instant::now();
        // A span per event (at debug level, so it costs nothing unless asked
        // for with RUST_LOG=weir=debug): logs inside carry these fields.
        let span = tracing::debug_span!(
            "event",
            component = template.name(),
            subject = %job.msg.subject,
            sequence = job.stream.as_ref().map(|s| s.sequence),
            correlation_id = tracing::field::Empty,
        );
        if !span.is_disabled()
            && let Some(id) = correlation_id(&job.msg)
        {
            span.record("correlation_id", id.as_str());
        }
        let work = async {
            match job.stream {
                None => deliver(&template, &flow, index, &mut instance, &job.msg, &*bus).await,
                Some(s) => {
                    let slot = &mut instance;
                    deliver_stream(&template, &flow, index, slot, &job.msg, s, &*bus).await
                }
            }
        };
        work.instrument(span).await;
        flow.latency.record(start.elapsed());
        template.ctx.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
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

/// Runs `handle` once, on a fresh instance if the slot is empty.
async fn attempt_once(
    template: &ComponentTemplate,
    slot: &mut Option<Instance>,
    msg: &BusMessage,
    stream: Option<(&str, u64)>,
    attempt: u32,
) -> HandleOutcome {
    let limit = template.ctx.limits.max_payload_bytes;
    if msg.payload.len() > limit {
        // Refused at the door: the guest never sees it.
        return HandleOutcome::Reject(format!(
            "payload of {} bytes exceeds the component's limit of {limit} bytes (limits.max_payload_bytes)",
            msg.payload.len()
        ));
    }
    let (name, seq) = stream.map_or((None, None), |(n, s)| (Some(n), Some(s)));
    let inst = match slot {
        Some(inst) => inst,
        None => match template.instantiate().await {
            Ok(inst) => slot.insert(inst),
            Err(failure) => return HandleOutcome::Failed(failure),
        },
    };
    inst.handle(template, msg, name, seq, attempt).await
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

/// Counts and logs an outcome; drops a failed instance (it is poisoned,
/// the next attempt gets a fresh one).
fn judge(
    template: &ComponentTemplate,
    flow: &FlowStats,
    index: usize,
    slot: &mut Option<Instance>,
    msg: &BusMessage,
    attempt: u32,
    outcome: HandleOutcome,
) -> Result<(), Verdict> {
    let stats = &template.ctx.stats;
    if !matches!(outcome, HandleOutcome::Handled) {
        ComponentStats::bump(&flow.failed);
    }
    match outcome {
        HandleOutcome::Handled => {
            ComponentStats::bump(&flow.handled);
            Ok(())
        }
        HandleOutcome::Reject(reason) => {
            let reason = clip(reason);
            tracing::warn!(component = template.name(), subject = %msg.subject, "rejected: {reason}");
            Err(Verdict::Reject(format!("rejected: {reason}")))
        }
        HandleOutcome::Retry(reason) => {
            Err(Verdict::Retry(format!("retry requested: {}", clip(reason))))
        }
        HandleOutcome::Failed(failure) => {
            *slot = None;
            ComponentStats::bump(&stats.traps);
            ComponentStats::bump(&stats.restarts);
            if failure.kind == FailureKind::Deadline {
                ComponentStats::bump(&stats.deadline_hits);
            }
            tracing::error!(component = template.name(), instance = index, subject = %msg.subject, attempt, "{failure}");
            Err(Verdict::Retry(failure.to_string()))
        }
    }
}

/// Delivers a JetStream message once: ack, nak with backoff, or dead-letter
/// and terminate. The ack goes out only after `handle` and its publishes
/// succeeded; a dead letter is stored before the message is terminated.
async fn deliver_stream(
    template: &ComponentTemplate,
    flow: &FlowStats,
    index: usize,
    slot: &mut Option<Instance>,
    msg: &BusMessage,
    job: StreamJob,
    bus: &dyn Bus,
) {
    use async_nats::jetstream::AckKind;
    let outcome = attempt_once(
        template,
        slot,
        msg,
        Some((&job.stream, job.sequence)),
        job.attempt,
    )
    .await;
    let settle = match judge(template, flow, index, slot, msg, job.attempt, outcome) {
        Ok(()) => job.acker.ack().await,
        Err(Verdict::Retry(_)) if job.attempt < template.ctx.limits.max_deliver => {
            ComponentStats::bump(&flow.retried);
            job.acker
                .ack_with(AckKind::Nak(Some(backoff(job.attempt))))
                .await
        }
        Err(Verdict::Retry(reason) | Verdict::Reject(reason)) => {
            let letter = DeadLetter::new(
                msg,
                template.name(),
                reason,
                job.attempt,
                Some(job.stream.clone()),
                Some(job.sequence),
            );
            if let Err(e) = publish_dead_letter(template, flow, letter, bus).await {
                // Stored nowhere: leave the message to the server's redelivery.
                tracing::error!(component = template.name(), stream = %job.stream, sequence = job.sequence, "dead letter not stored ({e}); the message will be redelivered");
                return;
            }
            job.acker.ack_with(AckKind::Term).await
        }
    };
    if let Err(e) = settle {
        tracing::warn!(component = template.name(), stream = %job.stream, sequence = job.sequence, "could not settle the message (it will be redelivered): {e}");
    }
}

/// Delivers a core message until it is handled or dead-lettered.
async fn deliver(
    template: &ComponentTemplate,
    flow: &FlowStats,
    index: usize,
    slot: &mut Option<Instance>,
    msg: &BusMessage,
    bus: &dyn Bus,
) {
    let max = template.ctx.limits.max_deliver;
    let mut attempt = 1;
    loop {
        let outcome = attempt_once(template, slot, msg, None, attempt).await;
        let reason = match judge(template, flow, index, slot, msg, attempt, outcome) {
            Ok(()) => return,
            Err(Verdict::Reject(reason)) => {
                dead_letter(template, flow, msg, reason, attempt, bus).await;
                return;
            }
            Err(Verdict::Retry(reason)) => reason,
        };
        if attempt >= max {
            dead_letter(template, flow, msg, reason, attempt, bus).await;
            return;
        }
        ComponentStats::bump(&flow.retried);
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

/// Stores a dead letter: in JetStream when a stream captures `dlq.>`
/// subjects (confirmed), else as a core publish.
async fn publish_dead_letter(
    template: &ComponentTemplate,
    flow: &FlowStats,
    letter: DeadLetter,
    bus: &dyn Bus,
) -> Result<(), BusError> {
    ComponentStats::bump(&flow.dead_lettered);
    let subject = letter.subject();
    tracing::warn!(component = template.name(), %subject, attempts = letter.attempts, error = %letter.error, "dead-lettered");
    match bus.stream_for_subject(&subject).await {
        Ok(Some(_)) => bus
            .jetstream_publish(letter.to_message(), None)
            .await
            .map(|_| ()),
        _ => bus.publish(letter.to_message()).await,
    }
}

async fn dead_letter(
    template: &ComponentTemplate,
    flow: &FlowStats,
    msg: &BusMessage,
    error: String,
    attempts: u32,
    bus: &dyn Bus,
) {
    let letter = DeadLetter::new(msg, template.name(), error, attempts, None, None);
    if let Err(e) = publish_dead_letter(template, flow, letter, bus).await {
        tracing::error!(component = template.name(), subject = %msg.subject, "could not publish the dead letter: {e}");
    }
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
