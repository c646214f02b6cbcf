//! Storing dead letters, and terminating their originals once stored.
//!
//! A worker sends each dead letter at once, in order, and goes on with its
//! queue; the originals are terminated as the stream confirms their letters
//! (up to [`CONFIRMING`] letters awaiting confirmation per worker). A flood
//! of messages the component cannot read then drains at the pace of
//! sending, not of a round trip per message, and a message is still never
//! terminated before its dead letter is stored: a letter that is not stored
//! leaves its original to the transport's redelivery.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::{log_failure, settled};
use crate::bus::dlq::DeadLetter;
use crate::bus::{Bus, BusError, BusMessage};
use crate::bus::{Meta, Settle};
use crate::capability::ComponentContext;
use crate::stats::{ComponentStats, FlowStats};

/// Dead letters awaiting confirmation per worker, at most (well within a
/// consumer's default `max_ack_pending` of 1,000 for two workers).
pub const CONFIRMING: usize = 256;

/// A dead letter's storing, sent and not yet confirmed.
type Stored = Pin<Box<dyn Future<Output = Result<(), BusError>> + Send>>;

/// A dead letter on its way to being stored, and its original.
pub(super) struct Confirm {
    stored: Stored,
    settle: Box<dyn Settle>,
    meta: Meta,
    /// Its message's subject, for the logs.
    subject: String,
    /// The component's name, stats and failure log.
    ctx: Arc<ComponentContext>,
}

impl Confirm {
    /// Waits for the letter to be stored, then terminates the original.
    async fn run(self) {
        let Confirm {
            stored,
            settle,
            meta,
            subject,
            ctx,
        } = self;
        let name = ctx.name.as_str();
        match stored.await {
            Ok(()) => settled(&ctx, &meta, "term", settle.term().await),
            // Stored nowhere: leave the message to its transport's redelivery.
            Err(e) if settle.redelivers() => {
                if log_failure(&ctx, "dead letters not stored", || {
                    format!("{subject}: {e}")
                }) {
                    tracing::error!(component = name, %subject, stream = meta.stream, sequence = meta.sequence, "dead letter not stored ({e}); the message will be redelivered");
                }
            }
            Err(e) => {
                if log_failure(&ctx, "dead letters lost", || format!("{subject}: {e}")) {
                    tracing::error!(component = name, %subject, "could not publish the dead letter: {e}");
                }
            }
        }
    }
}

/// Where a worker's dead letters go.
#[derive(Clone)]
pub(crate) struct DeadLetters {
    bus: Arc<dyn Bus>,
    /// To the worker's confirmer; `None`: each is confirmed before the
    /// next message (a replay, whose output must not depend on timing).
    confirm: Option<mpsc::Sender<Confirm>>,
}

impl DeadLetters {
    /// Dead letters confirmed one at a time, before the next message.
    pub(crate) fn inline(bus: Arc<dyn Bus>) -> DeadLetters {
        DeadLetters { bus, confirm: None }
    }

    /// Dead letters confirmed by the task this returns (it ends when the
    /// last handle is dropped, once every letter sent is confirmed).
    pub(super) fn pipelined(bus: Arc<dyn Bus>) -> (DeadLetters, impl Future<Output = ()>) {
        let (tx, rx) = mpsc::channel(16);
        let letters = DeadLetters {
            bus,
            confirm: Some(tx),
        };
        (letters, confirmer(rx))
    }

    /// Sends `letter`, then terminates its original once it is stored.
    /// Until then the original counts in flight.
    pub(super) async fn store(
        &self,
        ctx: &Arc<ComponentContext>,
        flow: &FlowStats,
        letter: DeadLetter,
        settle: Box<dyn Settle>,
        meta: Meta,
    ) {
        ComponentStats::bump(&flow.dead_lettered);
        let msg = letter.to_message();
        if log_failure(ctx, "dead-lettered", || {
            format!("{}: {}", letter.original_subject, letter.error)
        }) {
            tracing::warn!(component = ctx.name, subject = %msg.subject, attempts = letter.attempts, error = %letter.error, "dead-lettered");
        }
        let stored = self.send(msg).await;
        let confirm = Confirm {
            stored,
            settle,
            meta,
            subject: letter.original_subject,
            ctx: ctx.clone(),
        };
        let Some(tx) = &self.confirm else {
            return confirm.run().await;
        };
        ctx.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Err(back) = tx.send(confirm).await {
            // The confirmer is gone (not while its worker runs): confirm here.
            back.0.run().await;
            ctx.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Sends the letter: to JetStream when a stream captures its subject
    /// (stored once the stream acknowledges it), else as a core publish.
    async fn send(&self, msg: BusMessage) -> Stored {
        let sent = match self.bus.stream_for_subject(&msg.subject).await {
            Ok(Some(_)) => self.bus.jetstream_send(msg, None).await,
            _ => {
                let published = self.bus.publish(msg).await;
                return Box::pin(std::future::ready(published));
            }
        };
        match sent {
            Ok(ack) => Box::pin(async move { ack.await.map(|_| ()) }),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

/// Confirms a worker's dead letters, [`CONFIRMING`] at a time, until its
/// handle is dropped and every letter sent is confirmed.
async fn confirmer(mut rx: mpsc::Receiver<Confirm>) {
    let mut waiting = FuturesUnordered::new();
    let mut open = true;
    while open || !waiting.is_empty() {
        tokio::select! {
            got = rx.recv(), if open && waiting.len() < CONFIRMING => match got {
                Some(confirm) => {
                    let stats = confirm.ctx.stats.clone();
                    waiting.push(async move {
                        confirm.run().await;
                        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                None => open = false,
            },
            Some(()) = waiting.next(), if !waiting.is_empty() => {}
        }
    }
}
