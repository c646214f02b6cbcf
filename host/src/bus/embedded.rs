//! The in-process bus: NATS subject semantics without a server.
//!
//! Like core NATS it is at-most-once and never blocks a publisher: a
//! subscriber whose queue is full loses the message, which is counted and
//! logged as a slow consumer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Bus, BusError, BusMessage, PublishAck, Subscription};
use crate::subject;

/// Messages a subscriber may have queued before new ones are dropped.
const SUBSCRIPTION_CAPACITY: usize = 65_536;

use super::DEFAULT_MAX_PAYLOAD as MAX_PAYLOAD;

/// A cheap-to-clone handle to one in-process bus.
#[derive(Clone, Default)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Live subscriptions; closed ones are pruned on the next publish.
    subs: RwLock<Vec<Sub>>,
    /// Source of subscription ids and inbox names.
    next_id: AtomicU64,
    /// Round-robin position for queue groups.
    rr: AtomicU64,
    /// Messages dropped because a subscriber's queue was full.
    dropped: AtomicU64,
}

struct Sub {
    filter: String,
    queue_group: Option<String>,
    tx: mpsc::Sender<BusMessage>,
}

impl EmbeddedBus {
    /// A new, empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages lost to full subscriber queues so far.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Messages queued in subscriptions and not yet taken.
    pub fn pending(&self) -> u64 {
        let subs = self.inner.subs.read().unwrap_or_else(|e| e.into_inner());
        subs.iter()
            .map(|s| (s.tx.max_capacity() - s.tx.capacity()) as u64)
            .sum()
    }

    /// Delivers to every matching plain subscriber and one member of each
    /// matching queue group; returns how many received it.
    fn deliver(&self, msg: &BusMessage) -> usize {
        let mut delivered = 0;
        let mut closed = false;
        {
            let subs = self.inner.subs.read().unwrap_or_else(|e| e.into_inner());
            let mut groups: Vec<(&str, Vec<&Sub>)> = Vec::new();
            for sub in subs
                .iter()
                .filter(|s| subject::matches(&s.filter, &msg.subject))
            {
                match &sub.queue_group {
                    None => {
                        delivered += usize::from(self.send(sub, msg, &mut closed));
                    }
                    Some(g) => match groups.iter_mut().find(|(name, _)| name == g) {
                        Some((_, members)) => members.push(sub),
                        None => groups.push((g, vec![sub])),
                    },
                }
            }
            for (_, members) in groups {
                let start = self.inner.rr.fetch_add(1, Ordering::Relaxed) as usize;
                // Skip members that have gone away; the first live one gets it.
                for k in 0..members.len() {
                    let sub = members[(start + k) % members.len()];
                    if !sub.tx.is_closed() {
                        delivered += usize::from(self.send(sub, msg, &mut closed));
                        break;
                    }
                }
            }
        }
        if closed {
            let mut subs = self.inner.subs.write().unwrap_or_else(|e| e.into_inner());
            subs.retain(|s| !s.tx.is_closed());
        }
        delivered
    }

    fn send(&self, sub: &Sub, msg: &BusMessage, closed: &mut bool) -> bool {
        match sub.tx.try_send(msg.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                let n = self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(filter = %sub.filter, dropped = n + 1, "slow consumer on the embedded bus: message dropped");
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                *closed = true;
                false
            }
        }
    }

    fn add_sub(&self, filter: &str, queue_group: Option<&str>) -> mpsc::Receiver<BusMessage> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_CAPACITY);
        let sub = Sub {
            filter: filter.to_owned(),
            queue_group: queue_group.map(str::to_owned),
            tx,
        };
        self.inner
            .subs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(sub);
        rx
    }

    fn check_size(msg: &BusMessage) -> Result<(), BusError> {
        if msg.payload.len() > MAX_PAYLOAD {
            return Err(BusError::Invalid(format!(
                "payload of {} bytes exceeds the bus limit of {MAX_PAYLOAD} bytes",
                msg.payload.len()
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Bus for EmbeddedBus {
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError> {
        // Reply inboxes (`_INBOX.<n>`) are ordinary concrete subjects.
        subject::validate_publish(&msg.subject).map_err(|e| BusError::Invalid(e.to_string()))?;
        Self::check_size(&msg)?;
        self.deliver(&msg);
        Ok(())
    }

    async fn subscribe(
        &self,
        filter: &str,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError> {
        subject::validate_filter(filter).map_err(|e| BusError::Invalid(e.to_string()))?;
        Ok(Box::pin(ReceiverStream::new(
            self.add_sub(filter, queue_group),
        )))
    }

    async fn request(
        &self,
        mut msg: BusMessage,
        timeout: Duration,
    ) -> Result<BusMessage, BusError> {
        subject::validate_publish(&msg.subject).map_err(|e| BusError::Invalid(e.to_string()))?;
        Self::check_size(&msg)?;
        let inbox = format!(
            "_INBOX.{}",
            self.inner.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let mut replies = self.add_sub(&inbox, None);
        msg.reply_to = Some(inbox);
        let target = msg.subject.clone();
        if self.deliver(&msg) == 0 {
            return Err(BusError::NoResponders(target));
        }
        match tokio::time::timeout(timeout, replies.recv()).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(BusError::Unavailable(
                "the bus closed the reply inbox".into(),
            )),
            Err(_) => Err(BusError::Timeout(timeout)),
        }
    }

    async fn jetstream_publish(
        &self,
        _msg: BusMessage,
        _msg_id: Option<String>,
    ) -> Result<PublishAck, BusError> {
        Err(BusError::Unavailable(
            "JetStream needs a NATS server: set [nats] url in the manifest or NATS_URL".into(),
        ))
    }

    async fn stream_for_subject(&self, _subject: &str) -> Result<Option<String>, BusError> {
        Ok(None)
    }

    fn max_payload(&self) -> usize {
        MAX_PAYLOAD
    }

    fn describe(&self) -> String {
        "embedded".into()
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn the_subscribers_of_a_publish_share_one_decode() {
        let bus = EmbeddedBus::new();
        let mut a = bus.subscribe("TRADE.trade.*", None).await.unwrap();
        let mut b = bus.subscribe("TRADE.>", None).await.unwrap();
        let trade = r#"{"symbol":"BTCUSDT","price":64000.5,"qty":0.1,"ts":1,"trade_id":7}"#;
        bus.publish(BusMessage::new("TRADE.trade.BTCUSDT", trade))
            .await
            .unwrap();
        let (x, y) = (a.next().await.unwrap(), b.next().await.unwrap());
        assert!(!y.decoded.is_decoded());
        assert!(matches!(
            x.market_event(),
            Some(Ok(super::super::MarketEvent::Trade(_)))
        ));
        assert!(y.decoded.is_decoded(), "decoded once, for both subscribers");
    }

    #[tokio::test]
    async fn wildcards_and_queue_groups() {
        let bus = EmbeddedBus::new();
        let mut all = bus.subscribe("TRADE.>", None).await.unwrap();
        let mut one = bus.subscribe("TRADE.trade.*", None).await.unwrap();
        let mut q1 = bus
            .subscribe("TRADE.trade.*", Some("workers"))
            .await
            .unwrap();
        let mut q2 = bus
            .subscribe("TRADE.trade.*", Some("workers"))
            .await
            .unwrap();
        for i in 0..4 {
            bus.publish(BusMessage::new(format!("TRADE.trade.S{i}"), "x"))
                .await
                .unwrap();
        }
        bus.publish(BusMessage::new("TRADE.depth.S0", "d"))
            .await
            .unwrap();
        for _ in 0..5 {
            all.next().await.unwrap();
        }
        for i in 0..4 {
            assert_eq!(
                one.next().await.unwrap().subject,
                format!("TRADE.trade.S{i}")
            );
        }
        // The group shares the four trades: two each, round robin.
        let mut got = 0;
        for q in [&mut q1, &mut q2] {
            while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), q.next()).await
            {
                got += 1;
            }
        }
        assert_eq!(got, 4);
    }

    #[tokio::test]
    async fn request_reply_and_no_responders() {
        let bus = EmbeddedBus::new();
        let err = bus
            .request(BusMessage::new("svc.echo", "hi"), Duration::from_millis(50))
            .await;
        assert_eq!(err, Err(BusError::NoResponders("svc.echo".into())));

        let mut svc = bus.subscribe("svc.echo", None).await.unwrap();
        let responder = bus.clone();
        tokio::spawn(async move {
            let req = svc.next().await.unwrap();
            let reply = BusMessage::new(req.reply_to.unwrap(), req.payload);
            responder.publish(reply).await.unwrap();
        });
        let reply = bus
            .request(BusMessage::new("svc.echo", "hi"), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(&reply.payload[..], b"hi");

        let _silent = bus.subscribe("svc.silent", None).await.unwrap();
        let err = bus
            .request(
                BusMessage::new("svc.silent", "x"),
                Duration::from_millis(20),
            )
            .await;
        assert_eq!(err, Err(BusError::Timeout(Duration::from_millis(20))));
    }

    #[tokio::test]
    async fn refuses_bad_subjects_and_big_payloads() {
        let bus = EmbeddedBus::new();
        let bad_request = bus
            .request(BusMessage::new("svc.>", "x"), Duration::from_millis(10))
            .await;
        assert!(matches!(bad_request, Err(BusError::Invalid(_))));
        assert!(matches!(
            bus.publish(BusMessage::new("a.*", "x")).await,
            Err(BusError::Invalid(_))
        ));
        let big = vec![0u8; MAX_PAYLOAD + 1];
        assert!(matches!(
            bus.publish(BusMessage::new("a.b", big)).await,
            Err(BusError::Invalid(_))
        ));
        assert!(bus.subscribe("a.>.b", None).await.is_err());
        assert!(matches!(
            bus.jetstream_publish(BusMessage::new("a.b", "x"), None)
                .await,
            Err(BusError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn dropped_subscription_is_pruned() {
        let bus = EmbeddedBus::new();
        drop(bus.subscribe("a.b", None).await.unwrap());
        bus.publish(BusMessage::new("a.b", "x")).await.unwrap();
        assert!(bus.inner.subs.read().unwrap().is_empty());
    }
}
