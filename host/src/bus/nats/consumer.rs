//! JetStream durable pull consumers for stream subscriptions: a
//! source whose deliveries settle with JetStream acks.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{self, AckKind, ErrorCode, context::GetStreamErrorKind};
use async_trait::async_trait;
use futures::FutureExt as _;

use crate::bus::delivery::{Delivery, Meta, RUN, Settle, SettleError, Sink};
use crate::manifest::{Limits, Subscription};
use crate::stats::FlowStats;

use super::from_nats;
use super::pulls::{Pulled, Pulls};
use crate::shutdown::Shutdown;

/// How long the server waits for an ack before redelivering: the
/// subscription's `ack_wait_ms`, else twice the deadline and at least 30 s.
pub fn ack_wait(sub: &Subscription, limits: &Limits) -> Duration {
    let deadline = Duration::from_millis(limits.time_per_event_ms);
    sub.ack_wait_ms
        .map(Duration::from_millis)
        .unwrap_or_else(|| (deadline * 2).max(Duration::from_secs(30)))
}

/// The consumer's own delivery limit. weir counts attempts and
/// dead-letters at `limits.max_deliver`; the server's limit is a backstop
/// for hosts that die mid-message.
pub fn server_max_deliver(limits: &Limits) -> u32 {
    limits.max_deliver.saturating_add(2)
}

/// A durable pull consumer feeding one component subscription.
pub struct PullSource {
    consumer: PullConsumer,
    /// The JetStream context its messages ack through.
    js: jetstream::Context,
    /// For logs.
    component: String,
}

/// Settles a JetStream delivery with its ack subject.
struct JetStreamSettle(Acker);

fn settle_error(e: impl std::fmt::Display) -> SettleError {
    SettleError(format!("JetStream: {e}"))
}

#[async_trait]
impl Settle for JetStreamSettle {
    async fn ack(&self) -> Result<(), SettleError> {
        self.0.ack().await.map_err(settle_error)
    }
    async fn nak(&self, delay: Duration) -> Result<(), SettleError> {
        self.0
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(settle_error)
    }
    async fn term(&self) -> Result<(), SettleError> {
        self.0.ack_with(AckKind::Term).await.map_err(settle_error)
    }
    async fn in_progress(&self) -> Result<(), SettleError> {
        self.0
            .ack_with(AckKind::Progress)
            .await
            .map_err(settle_error)
    }
    fn redelivers(&self) -> bool {
        true
    }
}

/// Opens (or creates) the durable consumer a subscription names. The
/// stream must exist: weir never creates streams at run time.
pub async fn open(
    js: &jetstream::Context,
    component: &str,
    sub: &Subscription,
    limits: &Limits,
) -> anyhow::Result<PullSource> {
    let (Some(stream_name), Some(durable)) = (&sub.stream, &sub.consumer) else {
        bail!(
            "component {component}: subscription to {} names no stream and consumer",
            sub.subject
        );
    };
    let stream = match js.get_stream(stream_name).await {
        Ok(s) => s,
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(err)
                if err.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                bail!(
                    "stream {stream_name} (needed by component {component}) does not exist; create it with `weir streams apply DIR`"
                )
            }
            _ => {
                return Err(
                    anyhow::Error::new(e).context(format!("cannot look up stream {stream_name}"))
                );
            }
        },
    };
    if let Ok(consumer) = stream.get_consumer::<pull::Config>(durable).await {
        tracing::info!(component, stream = %stream_name, consumer = %durable, "using existing durable consumer");
        return Ok(PullSource {
            consumer,
            js: js.clone(),
            component: component.to_owned(),
        });
    }
    let config = pull::Config {
        durable_name: Some(durable.clone()),
        filter_subject: sub.subject.clone(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: ack_wait(sub, limits),
        max_deliver: i64::from(server_max_deliver(limits)),
        max_ack_pending: sub.max_ack_pending.unwrap_or(1000),
        ..Default::default()
    };
    let consumer = stream.create_consumer(config).await.with_context(|| {
        format!("cannot create durable consumer {durable} on stream {stream_name}")
    })?;
    tracing::info!(component, stream = %stream_name, consumer = %durable, filter = %sub.subject, "created durable consumer");
    Ok(PullSource {
        consumer,
        js: js.clone(),
        component: component.to_owned(),
    })
}

impl PullSource {
    /// Pulls messages from the consumer into `sink` until shutdown.
    ///
    /// Pull requests are pipelined on one inbox (see `Pulls`): the server
    /// fills the next while this one is dispatched, in stream order. What
    /// has arrived goes on as one run (up to [`RUN`]). At shutdown no new
    /// request is made and the messages already asked for are handled and
    /// acked, so none is left stranded until its ack wait.
    pub async fn run(self, sink: impl Sink, shutdown: Shutdown) {
        let PullSource {
            consumer,
            js,
            component,
        } = self;
        let mut errors = 0u64;
        let mut warn = |e: &dyn std::fmt::Display| {
            // Heartbeats and requests fail while NATS is away; pulls resume after.
            errors += 1;
            if errors.is_power_of_two() {
                tracing::warn!(%component, errors, "pull consumer: {e}");
            }
        };
        let mut pulls = loop {
            match Pulls::open(consumer.clone(), js.clone()).await {
                Ok(p) => break p,
                Err(e) => {
                    warn(&e);
                    tokio::select! {
                        _ = shutdown.wait() => return,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            }
        };
        let flow = sink.flow();
        // What ended the last run without being a message of it.
        let mut next = None;
        loop {
            if shutdown.is_stopping() {
                pulls.stop();
            }
            if let Err(e) = pulls.top_up().await {
                flow.set_pull_error(Some(e.clone()));
                warn(&e);
            }
            let pulled = match next.take() {
                Some(p) => p,
                None => tokio::select! {
                    biased;
                    p = pulls.next() => p,
                    // Stop asking; what was asked for is still drained.
                    _ = shutdown.wait(), if !shutdown.is_stopping() => continue,
                },
            };
            let first = match pulled {
                Pulled::Message(m) => m,
                Pulled::Idle if shutdown.is_stopping() => return,
                Pulled::Idle => continue,
                // The consumer served a request on an idle stream: whatever
                // refused an earlier one (no leader yet, a leader change, NATS
                // away) is over, message or not.
                Pulled::Expired => {
                    flow.set_pull_error(None);
                    continue;
                }
                Pulled::Error(e) => {
                    flow.set_pull_error(Some(e.clone()));
                    warn(&e);
                    tokio::select! {
                        _ = shutdown.wait() => {}
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                    continue;
                }
            };
            flow.set_pull_error(None);
            // The first message and those already here behind it, in order.
            let mut run = Vec::with_capacity(RUN);
            run.extend(delivery(first, flow, &component));
            while run.len() < RUN {
                match pulls.next().now_or_never() {
                    Some(Pulled::Message(m)) => run.extend(delivery(m, flow, &component)),
                    Some(other) => {
                        next = Some(other);
                        break;
                    }
                    None => break,
                }
            }
            if !sink.take(run).await {
                return;
            }
        }
    }
}

/// A pulled message as a delivery settled with its ack subject; none when
/// it lacks JetStream's metadata.
fn delivery(msg: Message, flow: &FlowStats, component: &str) -> Option<Delivery> {
    let meta = match msg.info() {
        Ok(i) => {
            flow.pending.store(i.pending, Ordering::Relaxed);
            let nanos = i.published.unix_timestamp_nanos();
            Meta {
                stream: Some(i.stream.to_owned()),
                sequence: Some(i.stream_sequence),
                attempt: u32::try_from(i.delivered).unwrap_or(u32::MAX).max(1),
                time: u64::try_from(nanos)
                    .ok()
                    .map(|n| SystemTime::UNIX_EPOCH + Duration::from_nanos(n)),
                received: None,
            }
        }
        Err(e) => {
            tracing::warn!(%component, "message without JetStream metadata skipped: {e}");
            return None;
        }
    };
    let (m, acker) = msg.split();
    Some(Delivery {
        msg: from_nats(m),
        meta,
        settle: Box::new(JetStreamSettle(acker)),
    })
}
