//! Publishing with JSON and headers, JetStream with a message id, and
//! request/reply with a correlation id (seed 004's template match flow).

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::weir::host::messaging as raw;
use crate::{Error, HandleError, Message, reject};

pub use raw::PublishAck;

/// Header that carries a request's correlation id.
pub const CORRELATION_HEADER: &str = "Correlation-Id";

/// A message to send, built up before one of [`Outgoing::publish`],
/// [`Outgoing::jetstream`] or [`Outgoing::request`].
#[derive(Debug, Clone)]
pub struct Outgoing {
    subject: String,
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Outgoing {
    /// A message for `subject` with an empty payload.
    pub fn new(subject: impl Into<String>) -> Self {
        Outgoing {
            subject: subject.into(),
            payload: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// Sets the payload.
    pub fn bytes(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Sets the payload as JSON and `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self, HandleError> {
        self.payload = serde_json::to_vec(value)
            .map_err(|e| reject(format!("cannot encode a message for {}: {e}", self.subject)))?;
        Ok(self.header("content-type", "application/json"))
    }

    /// Adds a header (names may repeat).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Core NATS publish: at most once.
    pub fn publish(self) -> Result<(), Error> {
        raw::publish(&self.subject, &self.payload, &self.headers)
    }

    /// Stores it in the stream that captures the subject and waits for the
    /// acknowledgement; `msg_id` de-duplicates redelivered publishes.
    pub fn jetstream(self, msg_id: Option<&str>) -> Result<PublishAck, Error> {
        raw::jetstream_publish(&self.subject, &self.payload, &self.headers, msg_id)
    }

    /// Sends it as a request and waits up to `timeout` for the reply.
    pub fn request(self, timeout: Duration) -> Result<Message, Error> {
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        raw::request(&self.subject, &self.payload, &self.headers, ms)
    }
}

/// Seed 004's request/reply: the request is a JSON object that gets a
/// `correlation_id` field (and the `Correlation-Id` header); the answer
/// must carry the same id back, or the call fails.
pub fn request_json<Req: Serialize, Resp: DeserializeOwned>(
    subject: &str,
    request: &Req,
    correlation_id: &str,
    timeout: Duration,
) -> Result<Resp, HandleError> {
    let mut body = serde_json::to_value(request)
        .map_err(|e| reject(format!("cannot encode a request for {subject}: {e}")))?;
    match body.as_object_mut() {
        Some(o) => {
            o.insert("correlation_id".into(), correlation_id.into());
        }
        None => {
            return Err(reject(format!(
                "a request to {subject} must be a JSON object"
            )));
        }
    }
    let reply = Outgoing::new(subject)
        .json(&body)?
        .header(CORRELATION_HEADER, correlation_id)
        .request(timeout)?;
    let answer: serde_json::Value = reply.json()?;
    let echoed = answer.get("correlation_id").and_then(|v| v.as_str());
    if echoed != Some(correlation_id) {
        return Err(crate::retry(format!(
            "the reply from {subject} carries correlation_id {echoed:?}, not {correlation_id:?}"
        )));
    }
    serde_json::from_value(answer)
        .map_err(|e| reject(format!("unexpected reply from {subject}: {e}")))
}

/// Answers a request on its reply-to with a JSON value carrying the
/// request's `correlation_id` (when it has one). Without a reply-to there
/// is nobody to answer, which is not an error.
pub fn reply_json<T: Serialize>(to: &Message, value: &T) -> Result<(), HandleError> {
    let Some(reply_to) = to.reply_to.as_deref() else {
        return Ok(());
    };
    let mut body = serde_json::to_value(value)
        .map_err(|e| reject(format!("cannot encode the reply on {}: {e}", to.subject)))?;
    let id = serde_json::from_slice::<serde_json::Value>(&to.payload)
        .ok()
        .and_then(|v| v.get("correlation_id").cloned())
        .or_else(|| to.header(CORRELATION_HEADER).map(Into::into));
    if let (Some(id), Some(o)) = (id, body.as_object_mut()) {
        o.insert("correlation_id".into(), id);
    }
    let mut out = Outgoing::new(reply_to).json(&body)?;
    if let Some(id) = to.header(CORRELATION_HEADER) {
        out = out.header(CORRELATION_HEADER, id);
    }
    Ok(out.publish()?)
}
