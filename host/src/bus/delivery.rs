//! One shape for a message on its way to a component, whatever brought it:
//! the embedded bus, core NATS, a JetStream consumer, a replay or a test.
//!
//! A [`Delivery`] is the message, what is known about this delivery
//! ([`Meta`]) and a [`Settle`] handle. The dispatcher applies one policy
//! (`crate::dispatch`); the transport decides what settling means: an ack
//! on JetStream, nothing on a core subject.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use thiserror::Error;

use super::nats::consumer::PullSource;
use super::{BusMessage, Subscription};
use crate::shutdown::Shutdown;
use crate::stats::FlowStats;

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
    /// When this host received it (stamped only while traces are
    /// exported: the queue wait of its span).
    pub received: Option<std::time::Instant>,
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

/// Most deliveries a source hands on at once (and a worker takes at once).
pub const RUN: usize = 64;

/// Where sources hand their deliveries: the dispatcher's workers. One
/// handle feeds one subscription and carries its counters.
pub trait Sink: Send + Sync + 'static {
    /// Hands deliveries on, in arrival order; false once nobody takes
    /// them any more (the host is stopping).
    fn take<I>(&self, run: I) -> impl Future<Output = bool> + Send
    where
        I: IntoIterator<Item = Delivery> + Send,
        I::IntoIter: Send;

    /// The counters of the subscription this handle feeds from: a source
    /// reports its pull errors and backlog there.
    fn flow(&self) -> &Arc<FlowStats>;
}

/// Where one subscription's deliveries come from.
pub enum Source {
    /// A core subscription (embedded bus or core NATS): at most once.
    Core(Subscription),
    /// A JetStream durable pull consumer: acked, redelivered.
    Stream(Box<PullSource>),
}

impl Source {
    /// Hands every delivery to `sink` until `shutdown`, finishing what it
    /// holds (a JetStream batch) so nothing is left stranded.
    pub async fn run(self, sink: impl Sink, shutdown: Shutdown) {
        match self {
            Source::Core(sub) => run_core(sub, sink, shutdown).await,
            Source::Stream(pull) => (*pull).run(sink, shutdown).await,
        }
    }
}

/// Feeds a core subscription to `sink`: what the subscription has ready
/// goes on in one run (see [`RUN`]); a lone message goes on at once.
async fn run_core(sub: Subscription, sink: impl Sink, shutdown: Shutdown) {
    let mut sub = sub.ready_chunks(RUN);
    // One shutdown future for the whole run: a new one per message would
    // lock the watch's waiter list twice for every message.
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        let msgs = tokio::select! {
            biased;
            _ = &mut stop => break,
            msgs = sub.next() => match msgs { Some(m) => m, None => break },
        };
        if !sink.take(msgs.into_iter().map(Delivery::core)).await {
            break;
        }
    }
}
