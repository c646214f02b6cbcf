//! Runs a component's messages through its instances.
//!
//! Ordering rule: messages are assigned to instances by a hash of their
//! subject, so all events of one subject (one symbol) are handled by one
//! instance, one at a time, in arrival order — with any number of
//! instances. A retried message is retried before the next one of its
//! subject, so order holds through retries too.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::bus::{Bus, BusMessage, Subscription};
use crate::dlq::DeadLetter;
use crate::runtime::{ComponentTemplate, HandleOutcome, Instance};
use crate::stats::ComponentStats;

/// Messages queued per instance before the subscription backs up.
const WORKER_QUEUE: usize = 1024;

/// Backoff before delivery `attempt + 1`: 10 ms doubling, capped at 1 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(10u64.saturating_mul(1 << attempt.saturating_sub(1).min(7)))
        .min(Duration::from_secs(1))
}

/// Starts the component's instance workers and one router per subscription.
pub fn spawn_component(
    template: Arc<ComponentTemplate>,
    subscriptions: Vec<Subscription>,
    bus: Arc<dyn Bus>,
    shutdown: watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) {
    let instances = template.ctx.limits.instances;
    let mut senders = Vec::with_capacity(instances);
    for index in 0..instances {
        let (tx, rx) = mpsc::channel(WORKER_QUEUE);
        senders.push(tx);
        tasks.spawn(worker(template.clone(), index, rx, bus.clone()));
    }
    let senders = Arc::new(senders);
    for sub in subscriptions {
        tasks.spawn(route(
            sub,
            senders.clone(),
            template.ctx.stats.clone(),
            shutdown.clone(),
        ));
    }
}

/// Moves messages from a subscription to the instance that owns their subject.
async fn route(
    mut sub: Subscription,
    workers: Arc<Vec<mpsc::Sender<BusMessage>>>,
    stats: Arc<ComponentStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let hasher = std::collections::hash_map::RandomState::new();
    loop {
        let msg = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            msg = sub.next() => match msg { Some(m) => m, None => break },
        };
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        ComponentStats::bump(&stats.received);
        let worker = &workers[(hasher.hash_one(&msg.subject) as usize) % workers.len()];
        if worker.send(msg).await.is_err() {
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            break;
        }
    }
}

/// Owns one instance; handles its queue one message at a time.
async fn worker(
    template: Arc<ComponentTemplate>,
    index: usize,
    mut rx: mpsc::Receiver<BusMessage>,
    bus: Arc<dyn Bus>,
) {
    let mut instance: Option<Instance> = None;
    while let Some(msg) = rx.recv().await {
        deliver(&template, index, &mut instance, &msg, &*bus).await;
        template.ctx.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Delivers one message until it is handled or dead-lettered.
async fn deliver(
    template: &ComponentTemplate,
    index: usize,
    slot: &mut Option<Instance>,
    msg: &BusMessage,
    bus: &dyn Bus,
) {
    let stats = &template.ctx.stats;
    let max = template.ctx.limits.max_deliver;
    let mut attempt = 1;
    loop {
        let outcome = match slot {
            Some(inst) => inst.handle(template, msg, None, None, attempt).await,
            None => match template.instantiate().await {
                Ok(mut inst) => {
                    let outcome = inst.handle(template, msg, None, None, attempt).await;
                    *slot = Some(inst);
                    outcome
                }
                Err(failure) => HandleOutcome::Failed(failure),
            },
        };
        let reason = match outcome {
            HandleOutcome::Handled => {
                ComponentStats::bump(&stats.handled);
                return;
            }
            HandleOutcome::Reject(reason) => {
                tracing::warn!(component = template.name(), subject = %msg.subject, "rejected: {reason}");
                dead_letter(template, msg, format!("rejected: {reason}"), attempt, bus).await;
                return;
            }
            HandleOutcome::Retry(reason) => format!("retry requested: {reason}"),
            HandleOutcome::Failed(failure) => {
                // A failed instance is poisoned: drop it, the next attempt
                // gets a fresh one.
                *slot = None;
                ComponentStats::bump(&stats.traps);
                ComponentStats::bump(&stats.restarts);
                if failure.kind == crate::runtime::FailureKind::Deadline {
                    ComponentStats::bump(&stats.deadline_hits);
                }
                tracing::error!(component = template.name(), instance = index, subject = %msg.subject, attempt, "{failure}");
                failure.to_string()
            }
        };
        if attempt >= max {
            dead_letter(template, msg, reason, attempt, bus).await;
            return;
        }
        ComponentStats::bump(&stats.retried);
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

async fn dead_letter(
    template: &ComponentTemplate,
    msg: &BusMessage,
    error: String,
    attempts: u32,
    bus: &dyn Bus,
) {
    ComponentStats::bump(&template.ctx.stats.dead_lettered);
    let letter = DeadLetter::new(msg, template.name(), error, attempts, None, None);
    let subject = letter.subject();
    tracing::warn!(component = template.name(), %subject, attempts, error = %letter.error, "dead-lettered");
    if let Err(e) = bus.publish(letter.to_message()).await {
        tracing::error!(component = template.name(), %subject, "could not publish the dead letter: {e}");
    }
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
