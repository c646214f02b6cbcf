//! One shape for a message on its way to a component, whatever brought it:
//! the embedded bus, core NATS, a JetStream consumer, a replay or a test.
//!
//! A [`Delivery`] is the message, what is known about this delivery
//! ([`Meta`]) and a [`Settle`] handle. The dispatcher applies one policy
//! (`crate::dispatch`); the transport decides what settling means: an ack
//! on JetStream, nothing on a core subject.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use thiserror::Error;
use tokio::sync::watch;

use crate::bus::{BusMessage, Subscription};
use crate::dispatch::Workers;

/// What is known about one delivery of a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// The JetStream stream it came from.
    pub stream: Option<String>,
    /// Its sequence in that stream (or in a recording).
    pub sequence: Option<u64>,
    /// 1 on first delivery; the transport's count of earlier deliveries
    /// plus one (JetStream's `num_delivered`).
    pub attempt: u32,
    /// When it was published, where the transport knows (JetStream's
    /// timestamp, a recording's time): the event time a replay runs on.
    pub time: Option<SystemTime>,
}

/// Why settling failed: the message will come back by the transport's own
/// rules (JetStream redelivers after `ack_wait`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct SettleError(pub String);

/// How a delivery is settled. Every method may be called at most once,
/// except `in_progress`.
#[async_trait]
pub trait Settle: Send + Sync {
    /// Handled: never deliver it again.
    async fn ack(&self) -> Result<(), SettleError>;
    /// Not handled: deliver it again after `delay`.
    async fn nak(&self, delay: Duration) -> Result<(), SettleError>;
    /// Given up on (after it was dead-lettered): never deliver it again.
    async fn term(&self) -> Result<(), SettleError>;
    /// Still working on it: do not redeliver it meanwhile.
    async fn in_progress(&self) -> Result<(), SettleError>;
    /// Whether the transport delivers this message again by itself when it
    /// is not acknowledged (JetStream) or not (core subjects: at most once).
    fn redelivers(&self) -> bool;
}

/// A message, what is known about this delivery, and how to settle it.
pub struct Delivery {
    /// The message.
    pub msg: BusMessage,
    /// Stream, sequence, attempt and time.
    pub meta: Meta,
    /// Settles this delivery with its transport.
    pub settle: Box<dyn Settle>,
}

impl Delivery {
    /// A message from a core subscription: nothing to settle, delivered once.
    pub fn core(msg: BusMessage) -> Self {
        Delivery {
            msg,
            meta: Meta {
                attempt: 1,
                ..Meta::default()
            },
            settle: Box::new(AtMostOnce),
        }
    }
}

/// Settling a core (at most once) message: there is no one to tell, and
/// no one will deliver it again, so a nak is refused: the dispatcher
/// retries such messages in place.
pub struct AtMostOnce;

#[async_trait]
impl Settle for AtMostOnce {
    async fn ack(&self) -> Result<(), SettleError> {
        Ok(())
    }
    async fn nak(&self, _delay: Duration) -> Result<(), SettleError> {
        Err(SettleError(
            "a core message is delivered at most once: nothing redelivers it".into(),
        ))
    }
    async fn term(&self) -> Result<(), SettleError> {
        Ok(())
    }
    async fn in_progress(&self) -> Result<(), SettleError> {
        Ok(())
    }
    fn redelivers(&self) -> bool {
        false
    }
}

/// Where one subscription's deliveries come from.
#[async_trait]
pub trait DeliverySource: Send + 'static {
    /// Hands every delivery to `workers` until `shutdown`, finishing what
    /// it holds (a JetStream batch) so nothing is left stranded.
    async fn run(self: Box<Self>, workers: Workers, shutdown: watch::Receiver<bool>);
}

/// Core subscriptions (embedded bus or core NATS) as a source.
pub struct CoreSource(pub Subscription);

#[async_trait]
impl DeliverySource for CoreSource {
    async fn run(self: Box<Self>, workers: Workers, mut shutdown: watch::Receiver<bool>) {
        // What the subscription has ready goes on in one run (see
        // `Workers::dispatch_run`); a lone message goes on at once.
        let mut sub = self.0.ready_chunks(crate::dispatch::RUN);
        // One shutdown future for the whole run: a new one per message
        // would lock the watch's waiter list twice for every message.
        let stop = shutdown.wait_for(|stop| *stop);
        tokio::pin!(stop);
        loop {
            let msgs = tokio::select! {
                biased;
                _ = &mut stop => break,
                msgs = sub.next() => match msgs { Some(m) => m, None => break },
            };
            if !workers
                .dispatch_run(msgs.into_iter().map(Delivery::core))
                .await
            {
                break;
            }
        }
    }
}
