//! Runs of messages through a component's `handle-batch`: one call (one
//! crossing into the guest, one fiber) for the messages already waiting
//! for an instance, with the policy of [`Worker::deliver`] for each.
//!
//! - Order: a batch is a stretch of one worker's queue, in arrival order;
//!   what the guest did not reach goes back to the front of the queue.
//! - Each `ok` is acknowledged as it would be alone, each `reject`
//!   dead-lettered (the guest may go on past it: a flood of unreadable
//!   messages takes one call per batch, not one per message). A `retry`
//!   ends the batch: it is retried in place (alone, with backoff) before
//!   any later message is delivered.
//! - A failed instance (trap, deadline, limit) is replaced and the whole
//!   batch is delivered again one by one: events the guest handled before
//!   it failed may be handled twice, as under a JetStream redelivery.
//! - An answer for none of the events (against the contract) delivers
//!   them one by one, so a batch always makes progress.
//! - A message with a reply-to, or one over the payload limit, is never
//!   batched: the reply rule and the refusal at the door are per event.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use tracing::Instrument;

use super::{Queued, Worker, log_failure, settled};
use crate::bus::MarketKind;
use crate::runtime::{BatchItem, ComponentTemplate, HandleOutcome};
use crate::stats::ComponentStats;
use crate::telemetry::Trace;
use crate::telemetry::logs::Handling;

/// Longest deadline a batch may have, in milliseconds.
const MAX_BATCH_DEADLINE_MS: u64 = 15_000;

/// What a batch left to deliver, in order.
pub(super) enum Rest {
    /// Messages after the one the batch stopped at: deliver them as usual.
    Again(Vec<Queued>),
    /// The whole batch: the instance failed, so deliver them one by one.
    Singly(Vec<Queued>),
}

/// How many messages at the front of `queue` can go in one batch (up to
/// `limits.max_batch`): none when the component has no `handle-batch`.
pub(super) fn batchable(template: &ComponentTemplate, queue: &VecDeque<Queued>) -> usize {
    let typed = template.takes_market_events();
    if !template.batches() && !typed {
        return 0;
    }
    let n = batchable_under(&template.ctx.limits, queue);
    if typed {
        alike(queue, n, template.batches())
    } else {
        n
    }
}

/// For a component that takes decoded market events: how many of the
/// first `n` messages go in one call. Trades of one stream go to
/// `on-trades` together; books and candles go alone; other messages go
/// to `handle-batch` together (when it is exported), never mixed with
/// market data.
fn alike(queue: &VecDeque<Queued>, n: usize, bytes_batches: bool) -> usize {
    let Some((first, _)) = queue.front() else {
        return 0;
    };
    let kind = |d: &crate::bus::Delivery| MarketKind::of(&d.msg.subject);
    match kind(first) {
        Some(MarketKind::Trade) => queue
            .iter()
            .take(n)
            .take_while(|(d, _)| {
                kind(d) == Some(MarketKind::Trade) && d.meta.stream == first.meta.stream
            })
            .count(),
        Some(_) => 0,
        None if bytes_batches => queue
            .iter()
            .take(n)
            .take_while(|(d, _)| kind(d).is_none())
            .count(),
        None => 0,
    }
}

/// [`batchable`] for a component that exports `handle-batch`.
fn batchable_under(limits: &crate::manifest::Limits, queue: &VecDeque<Queued>) -> usize {
    if limits.max_batch < 2 {
        return 0;
    }
    let most = most_per_batch(limits);
    let limit = limits.max_payload_bytes;
    let mut bytes = 0usize;
    queue
        .iter()
        .take(most)
        .take_while(|(d, _)| {
            bytes = bytes.saturating_add(d.msg.payload.len());
            d.msg.reply_to.is_none() && d.msg.payload.len() <= limit && bytes <= MAX_BATCH_BYTES
        })
        .count()
}

/// Most payload bytes one batch carries (the largest payload a manifest
/// may allow): a packed batch's offsets stay far within 32 bits, and a
/// batch never asks the guest for more memory than one message may.
const MAX_BATCH_BYTES: usize = crate::manifest::MAX_PAYLOAD_BYTES;

/// `limits.max_batch`, cut so that a batch's deadline (the per-event one
/// times its size) stays within half the shortest default `ack_wait`
/// (30 s): JetStream must not redeliver a batch's messages while it runs.
fn most_per_batch(limits: &crate::manifest::Limits) -> usize {
    let by_deadline = (MAX_BATCH_DEADLINE_MS / limits.time_per_event_ms.max(1)).max(1);
    limits
        .max_batch
        .min(usize::try_from(by_deadline).unwrap_or(usize::MAX))
}

impl Worker {
    /// Delivers `batch` in one `handle-batch` call and settles what it answered.
    pub(super) async fn handle_batch(&mut self, batch: Vec<Queued>) -> Rest {
        let span = tracing::debug_span!(
            "batch",
            component = self.template.name(),
            events = batch.len()
        );
        self.run_batch(batch).instrument(span).await
    }

    async fn run_batch(&mut self, batch: Vec<Queued>) -> Rest {
        let start = std::time::Instant::now();
        let template = self.template.clone();
        let index = self.index;
        let inst = match &mut self.instance {
            Some(inst) => inst,
            None => match template.instantiate().await {
                Ok(inst) => self.instance.insert(inst),
                // Alone, each meets the failure under the usual policy.
                Err(_) => return Rest::Singly(batch),
            },
        };
        let items: Vec<BatchItem<'_>> = batch
            .iter()
            .map(|(d, _)| BatchItem {
                msg: &d.msg,
                stream: d.meta.stream.as_deref(),
                sequence: d.meta.sequence,
                attempt: d.meta.attempt.max(1),
            })
            .collect();
        let stats = &template.ctx.stats;
        ComponentStats::bump(&stats.batches);
        stats
            .batched
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        // Each message's span, and the call's: a child of the first traced
        // message's, linked to the others'.
        let telemetry = &template.ctx.telemetry;
        let traces: Vec<Trace> = batch
            .iter()
            .map(|(d, _)| telemetry.delivery(d, template.name(), index))
            .collect();
        let call = Trace::batch(&traces.iter().collect::<Vec<_>>(), template.name());
        inst.set_trace(call.clone());
        let answered = Handling::batch(&call)
            .scope(inst.handle_batch(&template, &items))
            .await;
        if let Err(failure) = &answered {
            call.failure(&format!("{:?}", failure.kind), &failure.detail);
        }
        call.end();
        // One clock read for the batch: an event the guest handled took as
        // long as the call (an ack is handed to the connection, no round trip).
        let took = start.elapsed();
        drop(items);
        let outcomes = match answered {
            Ok(outcomes) => outcomes,
            Err(failure) => {
                self.instance_failed(&failure);
                if log_failure(&template.ctx, "failed attempts", || {
                    format!("a batch: {failure}")
                }) {
                    tracing::error!(
                        component = template.name(),
                        instance = index,
                        events = batch.len(),
                        "{failure}; the batch's events are delivered again one by one"
                    );
                }
                return Rest::Singly(batch);
            }
        };
        if outcomes.is_empty() {
            // Against the contract, and no progress: batching again could loop.
            tracing::warn!(
                component = template.name(),
                events = batch.len(),
                "handle-batch answered for none of its events; they are delivered one by one"
            );
            return Rest::Singly(batch);
        }
        let mut rest = batch.into_iter();
        let mut traces = traces.into_iter();
        for outcome in outcomes {
            let (Some((delivery, flow)), Some(trace)) = (rest.next(), traces.next()) else {
                break;
            };
            let stop = matches!(outcome, HandleOutcome::Retry(_));
            let took = if !matches!(outcome, HandleOutcome::Handled) {
                // Dead-lettered, or retried in place before the rest.
                self.deliver_from(delivery, &flow, Some(outcome), &trace)
                    .await;
                start.elapsed()
            } else {
                ComponentStats::bump(&flow.handled);
                trace.outcome("handled");
                let ack = delivery.settle.ack().await;
                settled(&template.ctx, &delivery.meta, "ack", ack);
                took
            };
            flow.latency.record(took);
            if let Some((t, s)) = trace.recorded_ids() {
                flow.latency.exemplar(took, t.to_string(), s.to_string());
            }
            trace.end();
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            if stop {
                break;
            }
        }
        // Not reached: delivered again (with spans of their own).
        for trace in traces {
            trace.outcome("not reached");
            trace.end();
        }
        Rest::Again(rest.collect())
    }
}

#[cfg(test)]
mod tests {
    use super::most_per_batch;
    use crate::manifest::Limits;

    #[test]
    fn a_batch_stops_before_a_reply_an_oversized_payload_or_64_mib() {
        use std::collections::VecDeque;
        use std::sync::Arc;

        use super::{MAX_BATCH_BYTES, batchable_under};
        use crate::bus::BusMessage;
        use crate::bus::Delivery;

        let queue = |sizes: &[usize], reply_at: Option<usize>| -> VecDeque<super::Queued> {
            sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let mut msg = BusMessage::new("s", vec![0u8; n]);
                    if reply_at == Some(i) {
                        msg.reply_to = Some("_INBOX.x".into());
                    }
                    (Delivery::core(msg), Arc::default())
                })
                .collect()
        };
        let limits = Limits {
            max_payload_bytes: MAX_BATCH_BYTES,
            ..Limits::default()
        };
        assert_eq!(batchable_under(&limits, &queue(&[10; 80], None)), 64);
        assert_eq!(batchable_under(&limits, &queue(&[10; 8], Some(3))), 3);
        let big = MAX_BATCH_BYTES / 2;
        assert_eq!(batchable_under(&limits, &queue(&[big, big, 1, 1], None)), 2);
        assert_eq!(batchable_under(&limits, &queue(&[big, big + 1], None)), 1);
        let small = Limits {
            max_payload_bytes: 100,
            ..Limits::default()
        };
        assert_eq!(batchable_under(&small, &queue(&[10, 10, 101, 10], None)), 2);
        let single = Limits {
            max_batch: 1,
            ..Limits::default()
        };
        assert_eq!(batchable_under(&single, &queue(&[10; 8], None)), 0);
    }

    #[test]
    fn market_data_is_batched_by_kind_and_stream() {
        use std::collections::VecDeque;
        use std::sync::Arc;

        use super::alike;
        use crate::bus::{BusMessage, Delivery};

        let queue = |subjects: &[(&str, Option<&str>)]| -> VecDeque<super::Queued> {
            subjects
                .iter()
                .map(|(s, stream)| {
                    let mut d = Delivery::core(BusMessage::new(*s, "{}"));
                    d.meta.stream = stream.map(str::to_owned);
                    (d, Arc::default())
                })
                .collect()
        };
        let t = ("TRADE.trade.A", None);
        let d = ("TRADE.depth.A", None);
        let o = ("market.data.ohlcv.A", None);
        let x = ("alerts.created", None);
        assert_eq!(alike(&queue(&[t, t, t, d, t]), 5, true), 3);
        assert_eq!(alike(&queue(&[t, t, t]), 2, true), 2);
        assert_eq!(alike(&queue(&[d, d]), 2, true), 0);
        assert_eq!(alike(&queue(&[o, t]), 2, true), 0);
        assert_eq!(alike(&queue(&[x, x, t]), 3, true), 2);
        assert_eq!(alike(&queue(&[x, x]), 2, false), 0);
        let s = ("TRADE.trade.A", Some("TRADE"));
        let r = ("TRADE.trade.A", Some("RECORD"));
        assert_eq!(alike(&queue(&[s, s, r]), 3, true), 2);
    }

    #[test]
    fn a_batch_deadline_stays_within_fifteen_seconds() {
        let with = |time_per_event_ms, max_batch| Limits {
            time_per_event_ms,
            max_batch,
            ..Limits::default()
        };
        assert_eq!(most_per_batch(&Limits::default()), 64);
        assert_eq!(most_per_batch(&with(1000, 64)), 15);
        assert_eq!(most_per_batch(&with(5000, 64)), 3);
        assert_eq!(most_per_batch(&with(60_000, 64)), 1);
        assert_eq!(most_per_batch(&with(10, 8)), 8);
    }
}
