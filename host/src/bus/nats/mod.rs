//! The NATS backend: core pub/sub and request/reply, JetStream publish;
//! durable consumers ([`consumer`]) and stream definitions ([`streams`]).

pub mod consumer;
mod pulls;
pub mod streams;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::header::{HeaderName, HeaderValue};
use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::{Client, ConnectOptions, Event, HeaderMap, RequestErrorKind};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::watch;

use super::{Bus, BusError, BusMessage, PendingAck, PublishAck, Subscription};
use crate::manifest::NatsSettings;

/// A cheap-to-clone handle to a NATS connection.
#[derive(Clone)]
pub struct NatsBus {
    client: Client,
    /// JetStream context with a bounded window of publish acks in flight.
    js: jetstream::Context,
    /// The server URL(s), for logs.
    url: String,
    /// Subject → stream that captures it, learned on first JetStream publish.
    streams: Arc<RwLock<HashMap<String, String>>>,
    /// Bumped on every (re)connect: L1 caches flush on it.
    connects: watch::Receiver<u64>,
    /// The prefix of this connection's request inboxes.
    inbox_prefix: Arc<str>,
    /// The server's `max_payload`, kept: the client hands it out only in a
    /// clone of the whole server info, a dozen allocations per publish.
    max_payload: Arc<MaxPayload>,
}

/// The server's `max_payload`, and which connection it was read on.
struct MaxPayload {
    /// The value of `connects` when `bytes` was read (`u64::MAX`: never).
    read_on: AtomicU64,
    bytes: AtomicUsize,
}

impl NatsBus {
    /// Connects with the manifest's settings; fails fast when no server answers.
    pub async fn connect(
        settings: &NatsSettings,
        base_dir: &Path,
        name: &str,
    ) -> anyhow::Result<NatsBus> {
        let (connected, connects) = watch::channel(0u64);
        let connected = Arc::new(connected);
        let mut opts = ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .ping_interval(Duration::from_secs(settings.ping_interval_secs.max(1)))
            .max_reconnects(settings.max_reconnects)
            .event_callback(move |event| {
                let connected = connected.clone();
                async move {
                    match event {
                        Event::Connected => {
                            connected.send_modify(|n| *n += 1);
                            tracing::info!("NATS connected");
                        }
                        Event::Disconnected => tracing::warn!("NATS disconnected; reconnecting"),
                        Event::Closed => tracing::debug!("NATS connection closed"),
                        Event::SlowConsumer(sid) => {
                            tracing::warn!(sid, "NATS slow consumer: messages dropped")
                        }
                        other => tracing::warn!("NATS: {other}"),
                    }
                }
            });
        let wait = Duration::from_millis(settings.reconnect_wait_ms);
        opts = opts.reconnect_delay_callback(
            move |attempt| if attempt <= 1 { Duration::ZERO } else { wait },
        );
        let inbox_prefix: Arc<str> = Arc::from(
            settings
                .inbox_prefix
                .as_deref()
                .unwrap_or(super::DEFAULT_INBOX_PREFIX),
        );
        if settings.inbox_prefix.is_some() {
            opts = opts.custom_inbox_prefix(&*inbox_prefix);
        }
        if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
            opts = opts.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &settings.token {
            opts = opts.token(token.clone());
        }
        if let Some(nkey) = &settings.nkey {
            opts = opts.nkey(nkey.clone());
        }
        if let Some(creds) = &settings.creds_file {
            let path = base_dir.join(creds);
            opts = opts
                .credentials_file(&path)
                .await
                .with_context(|| format!("cannot read NATS credentials {}", path.display()))?;
        }
        if let Some(tls) = &settings.tls {
            opts = opts.require_tls(tls.required);
            if let Some(ca) = &tls.ca_file {
                opts = opts.add_root_certificates(base_dir.join(ca));
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                opts = opts.add_client_certificate(base_dir.join(cert), base_dir.join(key));
            }
        }
        let servers: Vec<String> = settings
            .url
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let client = opts
            .connect(servers)
            .await
            .with_context(|| format!("cannot connect to NATS at {}", settings.url))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .max_ack_inflight(settings.ack_window.max(1))
            .backpressure_on_inflight(true)
            .build(client.clone());
        Ok(NatsBus {
            client,
            js,
            url: settings.url.clone(),
            streams: Arc::default(),
            connects,
            inbox_prefix,
            max_payload: Arc::new(MaxPayload {
                read_on: AtomicU64::new(u64::MAX),
                bytes: AtomicUsize::new(0),
            }),
        })
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Changes on every reconnect after the first connection.
    pub fn reconnects(&self) -> watch::Receiver<u64> {
        let mut r = self.connects.clone();
        r.mark_unchanged();
        r
    }

    /// Reconnections since the first connection.
    pub fn reconnect_count(&self) -> u64 {
        self.connects.borrow().saturating_sub(1)
    }

    /// `connected`, `disconnected` or `pending`.
    pub fn state(&self) -> String {
        self.client.connection_state().to_string()
    }
}

/// Headers for NATS; invalid names or values are refused, never a panic.
pub(crate) fn to_header_map(headers: &[(String, String)]) -> Result<Option<HeaderMap>, BusError> {
    if headers.is_empty() {
        return Ok(None);
    }
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name = HeaderName::from_str(k)
            .map_err(|_| BusError::Invalid(format!("invalid header name {k:?}")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| BusError::Invalid(format!("invalid value for header {k}")))?;
        map.append(name, value);
    }
    Ok(Some(map))
}

pub(crate) fn from_header_map(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(h) = headers {
        for (name, values) in h.iter() {
            for v in values {
                out.push((name.to_string(), v.as_str().to_owned()));
            }
        }
    }
    out
}

pub(crate) fn from_nats(m: async_nats::Message) -> BusMessage {
    BusMessage {
        decoded: crate::bus::Decoded::for_subject(m.subject.as_str()),
        subject: m.subject.as_str().to_owned(),
        reply_to: m.reply.map(|r| r.as_str().to_owned()),
        headers: from_header_map(m.headers.as_ref()),
        payload: m.payload,
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("NATS: {e}"))
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError> {
        let headers = to_header_map(&msg.headers)?;
        let r = match (msg.reply_to, headers) {
            (None, None) => self.client.publish(msg.subject, msg.payload).await,
            (None, Some(h)) => {
                self.client
                    .publish_with_headers(msg.subject, h, msg.payload)
                    .await
            }
            (Some(r), None) => {
                self.client
                    .publish_with_reply(msg.subject, r, msg.payload)
                    .await
            }
            (Some(r), Some(h)) => {
                self.client
                    .publish_with_reply_and_headers(msg.subject, r, h, msg.payload)
                    .await
            }
        };
        r.map_err(|e| match e.kind() {
            async_nats::client::PublishErrorKind::MaxPayloadExceeded
            | async_nats::client::PublishErrorKind::InvalidSubject => {
                BusError::Invalid(format!("NATS refused the message: {e}"))
            }
            _ => unavailable(e),
        })
    }

    async fn subscribe(
        &self,
        filter: &str,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError> {
        let sub = match queue_group {
            None => self.client.subscribe(filter.to_owned()).await,
            Some(g) => {
                self.client
                    .queue_subscribe(filter.to_owned(), g.to_owned())
                    .await
            }
        }
        .map_err(unavailable)?;
        Ok(Box::pin(sub.map(from_nats)))
    }

    async fn request(&self, msg: BusMessage, timeout: Duration) -> Result<BusMessage, BusError> {
        let mut req = async_nats::Request::new()
            .payload(msg.payload)
            .timeout(Some(timeout));
        if let Some(h) = to_header_map(&msg.headers)? {
            req = req.headers(h);
        }
        let subject = msg.subject.clone();
        // The client's own timeout covers only the reply; this covers a
        // request stuck while disconnected too.
        match tokio::time::timeout(
            timeout + Duration::from_millis(100),
            self.client.send_request(msg.subject, req),
        )
        .await
        {
            Err(_) => Err(BusError::Timeout(timeout)),
            Ok(Ok(reply)) => Ok(from_nats(reply)),
            Ok(Err(e)) => Err(match e.kind() {
                RequestErrorKind::NoResponders => BusError::NoResponders(subject),
                RequestErrorKind::TimedOut => BusError::Timeout(timeout),
                RequestErrorKind::InvalidSubject | RequestErrorKind::MaxPayloadExceeded => {
                    BusError::Invalid(e.to_string())
                }
                _ => unavailable(e),
            }),
        }
    }

    async fn jetstream_publish(
        &self,
        msg: BusMessage,
        msg_id: Option<String>,
    ) -> Result<PublishAck, BusError> {
        self.jetstream_send(msg, msg_id).await?.await
    }

    async fn jetstream_send(
        &self,
        msg: BusMessage,
        msg_id: Option<String>,
    ) -> Result<PendingAck, BusError> {
        let mut pm = PublishMessage::build().payload(msg.payload);
        // The map as built: every value of a repeated name kept, no copy.
        if let Some(h) = to_header_map(&msg.headers)? {
            pm = pm.headers(h);
        }
        if let Some(id) = msg_id {
            HeaderValue::from_str(&id)
                .map_err(|_| BusError::Invalid("msg-id contains a line break".into()))?;
            pm = pm.message_id(id);
        }
        let subject = msg.subject;
        let sent = self
            .js
            .send_publish(subject.clone(), pm)
            .await
            .map_err(|e| js_error(&subject, e))?;
        Ok(Box::pin(async move {
            let ack = sent.await.map_err(|e| js_error(&subject, e))?;
            Ok(PublishAck {
                stream: ack.stream,
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            })
        }))
    }

    async fn stream_for_subject(&self, subject: &str) -> Result<Option<String>, BusError> {
        if let Some(s) = self
            .streams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(subject)
        {
            return Ok(Some(s.clone()));
        }
        match self.js.stream_by_subject(subject).await {
            Ok(name) => {
                self.streams
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(subject.to_owned(), name.clone());
                Ok(Some(name))
            }
            Err(e) if e.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    fn inbox_prefix(&self) -> &str {
        &self.inbox_prefix
    }

    fn max_payload(&self) -> usize {
        // Read again after a reconnect: the new server may allow another size.
        let connection = *self.connects.borrow();
        let kept = &self.max_payload;
        if kept.read_on.load(Ordering::Acquire) != connection {
            kept.bytes
                .store(self.client.server_info().max_payload, Ordering::Relaxed);
            kept.read_on.store(connection, Ordering::Release);
        }
        kept.bytes.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        format!("nats {}", self.url)
    }
}

fn js_error(subject: &str, e: jetstream::context::PublishError) -> BusError {
    use jetstream::context::PublishErrorKind as K;
    match e.kind() {
        K::StreamNotFound => {
            BusError::Unavailable(format!("no JetStream stream captures {subject}"))
        }
        K::TimedOut => BusError::Timeout(Duration::from_secs(5)),
        K::MaxPayloadExceeded => BusError::Invalid(e.to_string()),
        _ => unavailable(e),
    }
}
