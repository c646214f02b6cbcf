//! L3: keeps the L1 caches of several hosts coherent over NATS.
//!
//! Every write, delete and invalidation is broadcast on `cache.update` /
//! `cache.invalidate` in the seed's JSON formats, plus `origin` (host id)
//! and `version` (per-origin counter). A receiving host drops its L1 copy
//! (it re-reads from L2 on the next get), so a late or reordered message
//! can cost a miss but never installs an older value. A host ignores its
//! own messages. Any NATS client can send the seed's JSON, e.g.
//! `{"action":"invalidate","key":"sma:trading_signal_BTCUSDT"}` or
//! `{"action":"invalidate_pattern","pattern":"sma:*"}`; keys are full keys
//! (`<namespace>:<key>`), the same as in Redis.
//!
//! Staleness bound: while NATS is away messages are lost, so L1 entries
//! live at most `cache.l1_max_ttl_secs` when L3 is on, and L1 is flushed
//! whenever the connection comes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Layer, LayerStats, MemoryStore};
use crate::bus::{Bus, BusMessage, Subscription};
use crate::shutdown::Shutdown;

/// Subject for writes.
pub const UPDATE: &str = "cache.update";
/// Subject for deletes and pattern invalidations.
pub const INVALIDATE: &str = "cache.invalidate";

/// A coherence message (the seed's format plus `origin` and `version`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoherenceMessage {
    /// `update`, `invalidate` or `invalidate_pattern`.
    pub action: String,
    /// The key, for `update` and `invalidate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Several keys at once (the seed's `keys`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// The glob, for `invalidate_pattern`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Time to live of an update, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// When it was sent (RFC 3339).
    #[serde(default)]
    pub timestamp: String,
    /// Sending host; absent from outside clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Per-origin sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// A cheap-to-clone handle to this host's coherence link.
#[derive(Clone)]
pub struct Coherence {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Arc<dyn Bus>,
    /// This host's id: messages carrying it are our own echo.
    origin: String,
    /// Numbers this host's messages.
    version: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    errors: AtomicU64,
}

impl Coherence {
    /// A link for host `origin` over `bus`.
    pub fn new(bus: Arc<dyn Bus>, origin: String) -> Self {
        Coherence {
            inner: Arc::new(Inner {
                bus,
                origin,
                version: AtomicU64::new(0),
                sent: AtomicU64::new(0),
                received: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            }),
        }
    }

    fn message(&self, action: &str) -> CoherenceMessage {
        CoherenceMessage {
            action: action.into(),
            key: None,
            keys: Vec::new(),
            pattern: None,
            ttl: None,
            timestamp: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            origin: Some(self.inner.origin.clone()),
            version: Some(self.inner.version.fetch_add(1, Ordering::Relaxed) + 1),
        }
    }

    async fn send(&self, subject: &str, msg: CoherenceMessage) {
        let payload = serde_json::to_vec(&msg).unwrap_or_default();
        match self
            .inner
            .bus
            .publish(BusMessage::new(subject, payload))
            .await
        {
            Ok(()) => {
                self.inner.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.inner.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("cache coherence message not sent: {e}");
            }
        }
    }

    /// Tells other hosts a key was written.
    pub async fn updated(&self, keys: &[String], ttl_secs: u64) {
        let mut m = self.message("update");
        match keys {
            [one] => m.key = Some(one.clone()),
            many => m.keys = many.to_vec(),
        }
        m.ttl = Some(ttl_secs);
        self.send(UPDATE, m).await;
    }

    /// Tells other hosts a key was deleted.
    pub async fn invalidated(&self, key: &str) {
        let mut m = self.message("invalidate");
        m.key = Some(key.to_owned());
        self.send(INVALIDATE, m).await;
    }

    /// Tells other hosts every key matching a glob was invalidated.
    pub async fn invalidated_pattern(&self, pattern: &str) {
        let mut m = self.message("invalidate_pattern");
        m.pattern = Some(pattern.to_owned());
        self.send(INVALIDATE, m).await;
    }

    /// Applies one incoming message to L1; false when it was malformed.
    pub fn apply(&self, l1: &MemoryStore, payload: &[u8]) -> bool {
        let msg: CoherenceMessage = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                self.inner.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("malformed cache coherence message ignored: {e}");
                return false;
            }
        };
        if msg.origin.as_deref() == Some(self.inner.origin.as_str()) {
            return true;
        }
        self.inner.received.fetch_add(1, Ordering::Relaxed);
        let mut dropped = 0;
        match (msg.action.as_str(), &msg.pattern) {
            ("invalidate_pattern", Some(p)) => dropped += l1.invalidate_pattern_now(p),
            ("update" | "invalidate", _) => {
                for k in msg.key.iter().chain(&msg.keys) {
                    dropped += u64::from(l1.delete_now(k));
                }
            }
            (other, _) => {
                self.inner.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    action = other,
                    "cache coherence message with an unknown action ignored"
                );
                return false;
            }
        }
        self.inner.dropped.fetch_add(dropped, Ordering::Relaxed);
        true
    }

    /// Listens to other hosts until the subscriptions end; flushes L1 each
    /// time `reconnected` changes (messages may have been lost meanwhile).
    pub async fn run(
        self,
        l1: MemoryStore,
        mut updates: Subscription,
        mut invalidations: Subscription,
        mut reconnected: Option<watch::Receiver<u64>>,
        shutdown: Shutdown,
    ) {
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            let reconnect = async {
                match reconnected.as_mut() {
                    Some(r) => r.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => return,
                m = updates.next() => match m { Some(m) => { self.apply(&l1, &m.payload); } None => return },
                m = invalidations.next() => match m { Some(m) => { self.apply(&l1, &m.payload); } None => return },
                ok = reconnect => {
                    if !ok {
                        reconnected = None;
                        continue;
                    }
                    let n = l1.clear();
                    tracing::info!(entries = n, "NATS reconnected: L1 flushed, invalidations may have been missed");
                }
            }
        }
    }

    /// Figures: hits = messages from peers, sets = messages sent, deletes
    /// = L1 entries they dropped, errors = malformed or unsent messages.
    pub fn layer_stats(&self) -> LayerStats {
        let i = &self.inner;
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LayerStats {
            hits: l(&i.received),
            sets: l(&i.sent),
            deletes: l(&i.dropped),
            errors: l(&i.errors),
            ..LayerStats::empty(Layer::L3)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::bus::EmbeddedBus;
    use crate::cache::MemoryStoreConfig;

    #[test]
    fn applies_seed_messages_and_ignores_its_own() {
        let l1 = MemoryStore::new(MemoryStoreConfig::default());
        let c = Coherence::new(Arc::new(EmbeddedBus::new()), "me".into());
        for k in ["sma:a", "sma:b", "md:BTC:1h", "md:BTC:1d", "md:ETH:1h"] {
            l1.set_now(k, Bytes::from_static(b"v"), Duration::from_secs(60))
                .unwrap();
        }
        // The Python seed's own message shapes.
        assert!(c.apply(
            &l1,
            br#"{"action":"invalidate","key":"sma:a","timestamp":"2025-07-30T08:45:23.123456"}"#
        ));
        assert!(c.apply(
            &l1,
            br#"{"action":"invalidate_pattern","pattern":"md:BTC:*","timestamp":"x"}"#
        ));
        assert!(c.apply(&l1, br#"{"action":"update","key":"sma:b","value":{"signal":"buy"},"ttl":3600,"timestamp":"x"}"#));
        assert_eq!(l1.layer_stats().entries, 1);
        assert!(l1.get_now("md:ETH:1h").is_some());

        l1.set_now("sma:a", Bytes::from_static(b"v"), Duration::from_secs(60))
            .unwrap();
        assert!(c.apply(
            &l1,
            br#"{"action":"invalidate","key":"sma:a","origin":"me"}"#
        ));
        assert!(l1.get_now("sma:a").is_some(), "own echo ignored");
        assert!(!c.apply(&l1, b"{nope"));
        assert!(!c.apply(&l1, br#"{"action":"explode"}"#));
        let s = c.layer_stats();
        assert_eq!((s.hits, s.deletes, s.errors), (4, 4, 2));
    }
}
