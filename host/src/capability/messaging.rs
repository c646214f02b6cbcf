//! `weir:host/messaging`: grants, subject and size checks over a
//! [`Bus`](crate::bus::Bus).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::bindings::weir::host::messaging::{Host, MessageResult as Message, PublishAck};
use super::{Capabilities, GuestError, TokenBucket};
use crate::bus::Bus;
use crate::bus::{BusError, BusMessage, DEFAULT_INBOX_PREFIX};
use crate::clock::Clock;
use crate::manifest::Limits;
use crate::stats::ComponentStats;
use crate::subject;
use crate::telemetry::{Outgoing, Trace};

type Answer<T> = wasmtime::Result<Result<T, GuestError>>;

/// Longest a request may wait.
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The messaging capability of one component: the bus it reaches (through
/// its grants) and its publish rate limit.
pub struct MessagingCapability {
    /// The message bus.
    pub bus: Arc<dyn Bus>,
    /// Publishes allowed per second, when `limits.publish_per_sec` is set
    /// (burst: one second's worth).
    publish_budget: Option<Mutex<TokenBucket>>,
}

impl MessagingCapability {
    /// Over `bus`, with `limits`' publish rate counted on `clock`.
    pub fn new(bus: Arc<dyn Bus>, limits: &Limits, clock: &Clock) -> Self {
        let publish_budget = limits.publish_per_sec.map(|r| {
            Mutex::new(TokenBucket::new(
                f64::from(r),
                f64::from(r.max(1)),
                clock.clone(),
            ))
        });
        MessagingCapability {
            bus,
            publish_budget,
        }
    }
}

impl From<BusError> for GuestError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::NoResponders(s) => GuestError::Unavailable(format!("no responders on {s}")),
            BusError::Timeout(d) => GuestError::Timeout(format!("no answer within {d:?}")),
            BusError::Unavailable(m) => GuestError::Unavailable(m),
            BusError::Invalid(m) => GuestError::Invalid(m),
        }
    }
}

/// Which grant list a call is checked against.
#[derive(Clone, Copy)]
enum Verb {
    Publish,
    Request,
}

impl Capabilities {
    /// Checks subject, grant and size; builds the outgoing message.
    fn outgoing(
        &mut self,
        verb: Verb,
        subject_: String,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<BusMessage, GuestError> {
        self.spend()?;
        let (grants, what) = match verb {
            Verb::Publish => (&self.ctx.grants.publish, "publish"),
            Verb::Request => (&self.ctx.grants.request, "request"),
        };
        let is_reply =
            matches!(verb, Verb::Publish) && self.reply_to.as_deref() == Some(subject_.as_str());
        if is_reply {
            self.check_reply(&subject_)?;
        } else {
            subject::validate_publish(&subject_).map_err(|e| GuestError::Invalid(e.to_string()))?;
            if !grants.iter().any(|g| subject::matches(g, &subject_)) {
                return Err(self.denied(format!(
                    "component {} may not {what} on {subject_}: not covered by grants.{what} {grants:?}",
                    self.ctx.name
                )));
            }
        }
        if let Some(bucket) = &self.ctx.messaging.publish_budget
            && !bucket.lock().map(|mut b| b.take()).unwrap_or(false)
        {
            ComponentStats::bump(&self.ctx.stats.limited);
            return Err(GuestError::Limited(format!(
                "component {} exceeded its publish rate of {}/s",
                self.ctx.name,
                self.ctx.limits.publish_per_sec.unwrap_or_default()
            )));
        }
        let limit = self
            .ctx
            .limits
            .max_payload_bytes
            .min(self.ctx.messaging.bus.max_payload());
        if payload.len() > limit {
            return Err(GuestError::Invalid(format!(
                "payload of {} bytes exceeds the limit of {limit} bytes",
                payload.len()
            )));
        }
        for (name, _) in &headers {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_graphic() && c != ':') {
                return Err(GuestError::Invalid(format!(
                    "header name {name:?} is not a valid token"
                )));
            }
        }
        if let Some((name, _)) = headers.iter().find(|(_, v)| v.contains(['\r', '\n'])) {
            return Err(GuestError::Invalid(format!(
                "header {name} has a line break in its value"
            )));
        }
        Ok(BusMessage {
            decoded: crate::bus::Decoded::for_subject(&subject_),
            subject: subject_,
            reply_to: None,
            headers,
            payload: Bytes::from(payload),
        })
    }
}

impl Capabilities {
    /// A reply to the message being handled. Its reply-to was chosen by
    /// whoever published that message, and the reply goes out under the
    /// host's NATS identity, so it needs no grant only while it looks like
    /// a reply: an inbox (`_INBOX.>` or this connection's inbox prefix).
    /// Anywhere else it needs a publish grant like any other subject (the
    /// model is NATS's `allow_responses`, which also limits replies to
    /// the inboxes of requests actually received).
    fn check_reply(&self, reply_to: &str) -> Result<(), GuestError> {
        let name = &self.ctx.name;
        if let Err(e) = subject::validate_publish(reply_to) {
            return Err(self.denied(format!(
                "component {name} may not reply on {reply_to:?}: {e}; the message's reply-to is not a valid reply subject"
            )));
        }
        let prefix = self.ctx.messaging.bus.inbox_prefix();
        let in_inbox = |p: &str| {
            reply_to
                .strip_prefix(p)
                .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.'))
        };
        let granted = self
            .ctx
            .grants
            .publish
            .iter()
            .any(|g| subject::matches(g, reply_to));
        if in_inbox(DEFAULT_INBOX_PREFIX) || in_inbox(prefix) || granted {
            return Ok(());
        }
        Err(self.denied(format!(
            "component {name} may not reply on {reply_to}: a reply needs no grant only to an inbox ({DEFAULT_INBOX_PREFIX}.> or {prefix}.>), and grants.publish {:?} does not cover it",
            self.ctx.grants.publish
        )))
    }
}

impl Capabilities {
    /// The span of a message leaving for the bus; its context goes into
    /// the message's headers (unless the component set a `traceparent`).
    fn trace_out(&self, how: Outgoing, msg: &mut BusMessage) -> Trace {
        if !self.trace.is_some() {
            return Trace::default();
        }
        let span = self.trace.send(how, &msg.subject, msg.payload.len());
        span.inject(&mut msg.headers);
        span
    }

    /// Sends a checked message and counts it.
    async fn send(&mut self, mut msg: BusMessage) -> Result<(), GuestError> {
        let span = self.trace_out(Outgoing::Publish, &mut msg);
        let sent = self.ctx.messaging.bus.publish(msg).await;
        span.end_with(&sent);
        sent?;
        ComponentStats::bump(&self.ctx.stats.published);
        Ok(())
    }

    /// Checks and sends a request; waits up to `timeout_ms` (at most 30 s).
    async fn ask(
        &mut self,
        subject: String,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        timeout_ms: u32,
    ) -> Result<BusMessage, GuestError> {
        let mut msg = self.outgoing(Verb::Request, subject, payload, headers)?;
        let timeout = Duration::from_millis(u64::from(timeout_ms)).min(MAX_REQUEST_TIMEOUT);
        let span = self.trace_out(Outgoing::Request, &mut msg);
        let answer = self.ctx.messaging.bus.request(msg, timeout).await;
        span.end_with(&answer);
        Ok(answer?)
    }
}

impl Host for Capabilities {
    async fn publish(
        &mut self,
        subject: String,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Answer<()> {
        Ok(async {
            let msg = self.outgoing(Verb::Publish, subject, payload, headers)?;
            self.send(msg).await
        }
        .await)
    }

    async fn request(
        &mut self,
        subject: String,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        timeout_ms: u32,
    ) -> Answer<Message> {
        Ok(async {
            let reply = self.ask(subject, payload, headers, timeout_ms).await?;
            Ok(Message {
                subject: reply.subject,
                reply_to: reply.reply_to,
                headers: reply.headers,
                payload: reply.payload.to_vec(),
            })
        }
        .await)
    }

    async fn jetstream_publish(
        &mut self,
        subject: String,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        msg_id: Option<String>,
    ) -> Answer<PublishAck> {
        Ok(async {
            let mut msg = self.outgoing(Verb::Publish, subject, payload, headers)?;
            match self.ctx.messaging.bus.stream_for_subject(&msg.subject).await? {
                None => {
                    return Err(GuestError::Unavailable(format!("no JetStream stream stores {}", msg.subject)));
                }
                Some(stream) if !self.ctx.grants.streams.contains(&stream) => {
                    return Err(self.denied(format!(
                        "component {} may not publish into stream {stream}: not in grants.streams {:?}",
                        self.ctx.name, self.ctx.grants.streams
                    )));
                }
                Some(_) => {}
            }
            let span = self.trace_out(Outgoing::JetStream, &mut msg);
            let ack = self.ctx.messaging.bus.jetstream_publish(msg, msg_id).await;
            if let Ok(ack) = &ack {
                span.stored(&ack.stream, ack.sequence, ack.duplicate);
            }
            span.end_with(&ack);
            let ack = ack?;
            ComponentStats::bump(&self.ctx.stats.published);
            Ok(PublishAck {
                stream: ack.stream,
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            })
        }
        .await)
    }
}

/// `wasmcloud:messaging@0.2.0`: the same checks as weir's messaging; errors
/// are strings (`"denied: …"`, `"timeout: …"`), as that interface has them.
mod wasmcloud {
    use super::super::bindings::wasmcloud::messaging::consumer::{BrokerMessage, Host};
    use super::super::bindings::wasmcloud::messaging::types;
    use super::super::{Capabilities, GuestError, describe};
    use super::Verb;
    use crate::subject;

    impl types::Host for Capabilities {}

    impl Capabilities {
        /// A reply-to the component sets on what it publishes: whoever
        /// answers will publish there, so it must be a subject the
        /// component itself listens on (grants.subscribe).
        fn check_own_reply_to(&self, reply_to: &str) -> Result<(), GuestError> {
            subject::validate_publish(reply_to).map_err(|e| {
                GuestError::Invalid(format!("reply-to {reply_to:?} is not a valid subject: {e}"))
            })?;
            let grants = &self.ctx.grants.subscribe;
            if grants.iter().any(|g| subject::matches(g, reply_to)) {
                return Ok(());
            }
            Err(self.denied(format!(
                "component {} may not ask for replies on {reply_to}: a reply-to must be covered by grants.subscribe {grants:?}",
                self.ctx.name
            )))
        }
    }

    impl Host for Capabilities {
        async fn request(
            &mut self,
            subject: String,
            body: Vec<u8>,
            timeout_ms: u32,
        ) -> wasmtime::Result<Result<BrokerMessage, String>> {
            let answer: Result<BrokerMessage, GuestError> = async {
                let reply = self.ask(subject, body, Vec::new(), timeout_ms).await?;
                Ok(BrokerMessage {
                    subject: reply.subject,
                    body: reply.payload.to_vec(),
                    reply_to: reply.reply_to,
                })
            }
            .await;
            Ok(answer.map_err(|e| describe(&e)))
        }

        async fn publish(&mut self, msg: BrokerMessage) -> wasmtime::Result<Result<(), String>> {
            let answer: Result<(), GuestError> = async {
                let mut out = self.outgoing(Verb::Publish, msg.subject, msg.body, Vec::new())?;
                if let Some(r) = &msg.reply_to {
                    self.check_own_reply_to(r)?;
                }
                out.reply_to = msg.reply_to;
                self.send(out).await
            }
            .await;
            Ok(answer.map_err(|e| describe(&e)))
        }
    }
}

/// Adds `weir:host/messaging` and wasmCloud's `messaging` (`types`, `consumer`) to a linker.
pub(super) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut Capabilities,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    super::bindings::weir::host::messaging::add_to_linker::<T, HasSelf<Capabilities>>(linker, get)?;
    super::bindings::wasmcloud::messaging::types::add_to_linker::<T, HasSelf<Capabilities>>(
        linker, get,
    )?;
    super::bindings::wasmcloud::messaging::consumer::add_to_linker::<T, HasSelf<Capabilities>>(
        linker, get,
    )?;
    Ok(())
}
