//! Messaging backends behind one trait: the in-process [`EmbeddedBus`] for
//! a server-less start, NATS for real deployments.

pub mod decoded;
pub mod delivery;
pub mod dlq;
mod embedded;
pub mod nats;

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use thiserror::Error;

pub use decoded::{Decoded, MarketEvent, MarketKind};
pub use delivery::{AtMostOnce, Delivery, Meta, RUN, Settle, SettleError, Sink, Source};
pub use embedded::EmbeddedBus;
pub use nats::NatsBus;
pub(crate) use nats::from_header_map;

/// NATS's default prefix of reply inboxes.
pub const DEFAULT_INBOX_PREFIX: &str = "_INBOX";

/// NATS's default `max_payload`: the embedded bus's limit, and a replay's.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// The bytes [`text_or_base64`] made: the text, else the decoded base64,
/// else nothing.
pub fn bytes_from(text: Option<&str>, base64: Option<&str>) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    match (text, base64) {
        (Some(t), _) => Ok(t.as_bytes().to_vec()),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| format!("bad payload_base64: {e}")),
        (None, None) => Ok(Vec::new()),
    }
}

/// Bytes as JSON carries them: `(Some(text), None)` when they are UTF-8,
/// else `(None, Some(base64))` (dead letters, recordings, replay output).
pub fn text_or_base64(bytes: &[u8]) -> (Option<String>, Option<String>) {
    use base64::Engine as _;
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

/// A message on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    /// Concrete subject it was published on.
    pub subject: String,
    /// Reply subject for request/reply.
    pub reply_to: Option<String>,
    /// Headers in order; names may repeat.
    pub headers: Vec<(String, String)>,
    /// Payload bytes, shared cheaply between subscribers.
    pub payload: Bytes,
    /// The market event the payload holds, decoded once for every
    /// subscriber (see [`Decoded`]); make it with [`Decoded::for_subject`].
    pub decoded: Decoded,
}

impl BusMessage {
    /// A message with no headers and no reply subject.
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        let subject = subject.into();
        BusMessage {
            decoded: Decoded::for_subject(&subject),
            subject,
            reply_to: None,
            headers: Vec::new(),
            payload: payload.into(),
        }
    }

    /// The market event it carries: `None` on a subject without market
    /// data, else the event or the decoder's reason for refusing it.
    /// Decoded on the first call, shared with every clone.
    pub fn market_event(&self) -> Option<&Result<MarketEvent, String>> {
        MarketKind::of(&self.subject)?;
        self.decoded.get(&self.subject, &self.payload)
    }
}

/// What JetStream answered for a stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAck {
    /// Stream that stored the message.
    pub stream: String,
    /// Its sequence in that stream.
    pub sequence: u64,
    /// The message id matched one already stored.
    pub duplicate: bool,
}

/// Why a bus operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BusError {
    /// Nobody subscribes to the request subject.
    #[error("no responders on {0}")]
    NoResponders(String),
    /// No reply or acknowledgement within the time limit.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The backend cannot serve this now (not connected, not configured).
    #[error("{0}")]
    Unavailable(String),
    /// The message itself is unacceptable (payload too large, bad subject).
    #[error("{0}")]
    Invalid(String),
}

/// A JetStream publish sent, its acknowledgement still to come.
pub type PendingAck =
    Pin<Box<dyn std::future::Future<Output = Result<PublishAck, BusError>> + Send>>;

/// A stream of messages for one subscription; dropping it unsubscribes.
pub type Subscription = Pin<Box<dyn Stream<Item = BusMessage> + Send>>;

/// A publish/subscribe bus with NATS subject semantics.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes a message (at most once: no subscriber, no delivery).
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError>;

    /// Subscribes to a filter (`*` and `>` wildcards). With a queue group,
    /// each message goes to one member of the group.
    async fn subscribe(
        &self,
        filter: &str,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError>;

    /// Publishes a request and waits for the first reply.
    async fn request(&self, msg: BusMessage, timeout: Duration) -> Result<BusMessage, BusError>;

    /// Publishes to a JetStream stream and waits for its acknowledgement.
    async fn jetstream_publish(
        &self,
        msg: BusMessage,
        msg_id: Option<String>,
    ) -> Result<PublishAck, BusError>;

    /// Publishes to a JetStream stream without waiting for its
    /// acknowledgement: sends keep their order, and their acknowledgements
    /// can be awaited together. By default each is awaited here.
    async fn jetstream_send(
        &self,
        msg: BusMessage,
        msg_id: Option<String>,
    ) -> Result<PendingAck, BusError> {
        let ack = self.jetstream_publish(msg, msg_id).await?;
        Ok(Box::pin(std::future::ready(Ok(ack))))
    }
    /// The JetStream stream that stores `subject`, if any.
    async fn stream_for_subject(&self, subject: &str) -> Result<Option<String>, BusError>;

    /// Prefix of the reply inboxes this bus creates for requests (`_INBOX`
    /// unless configured): a reply-to under it is a reply, not a subject
    /// of someone's choosing.
    fn inbox_prefix(&self) -> &str {
        DEFAULT_INBOX_PREFIX
    }

    /// Largest payload the bus accepts, in bytes.
    fn max_payload(&self) -> usize;

    /// Where the bus is, for logs: `embedded` or the server URL.
    fn describe(&self) -> String;
}
