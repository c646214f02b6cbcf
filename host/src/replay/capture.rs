//! What components reach during a replay, recorded on the [`Tape`] instead
//! of going anywhere live: a bus, a cache and a settle handle per
//! component.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::tape::{Record, Tape};
use crate::bus::dlq::DLQ_PREFIX;
use crate::bus::{Bus, BusError, BusMessage, PublishAck};
use crate::bus::{Settle, SettleError};
use crate::cache::{CacheError, CacheStore, LayerStats};
use crate::subject;

/// What the components of one replay share: the tape, the subscriptions
/// (to hand published messages on to other components), simulated
/// JetStream streams.
pub struct World {
    /// Where every effect goes.
    pub tape: Arc<Tape>,
    /// Every subscription filter of the manifest.
    filters: Vec<String>,
    /// Messages published during the current event that some component
    /// subscribes to, in publish order: delivered before the next event.
    pending: Mutex<VecDeque<BusMessage>>,
    /// Stream name → subject filters, from `--streams` definitions.
    streams: Vec<(String, Vec<String>)>,
    /// Per stream: last sequence and the msg-ids seen (de-duplication).
    stored: Mutex<HashMap<String, (u64, HashSet<String>)>>,
}

impl World {
    /// A world for these subscription filters and stream definitions.
    pub fn new(tape: Arc<Tape>, filters: Vec<String>, streams: Vec<(String, Vec<String>)>) -> Self {
        World {
            tape,
            filters,
            pending: Mutex::default(),
            streams,
            stored: Mutex::default(),
        }
    }

    /// The next message published during this event that a component
    /// subscribes to.
    pub fn next_pending(&self) -> Option<BusMessage> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// Drops what is still pending (after a runaway event).
    pub fn clear_pending(&self) -> usize {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let n = p.len();
        p.clear();
        n
    }

    fn pass_on(&self, msg: &BusMessage) {
        if self
            .filters
            .iter()
            .any(|f| subject::matches(f, &msg.subject))
        {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(msg.clone());
        }
    }
}

/// One component's bus in a replay.
pub struct CaptureBus {
    world: Arc<World>,
    component: Arc<str>,
}

impl CaptureBus {
    /// The bus `component` publishes on.
    pub fn new(world: Arc<World>, component: &str) -> Self {
        CaptureBus {
            world,
            component: Arc::from(component),
        }
    }

    fn record(&self, kind: &str, msg: &BusMessage) {
        self.world.tape.write(
            Record {
                component: &self.component,
                kind,
                subject: Some(&msg.subject),
                headers: (!msg.headers.is_empty()).then_some(msg.headers.as_slice()),
                ..Record::default()
            }
            .with_bytes(&msg.payload),
        );
    }
}

#[async_trait]
impl Bus for CaptureBus {
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError> {
        subject::validate_publish(&msg.subject).map_err(|e| BusError::Invalid(e.to_string()))?;
        let kind = if msg.subject.starts_with(DLQ_PREFIX) {
            "dead_letter"
        } else {
            "publish"
        };
        self.record(kind, &msg);
        self.world.pass_on(&msg);
        Ok(())
    }

    async fn subscribe(
        &self,
        _filter: &str,
        _queue_group: Option<&str>,
    ) -> Result<crate::bus::Subscription, BusError> {
        Err(BusError::Unavailable(
            "a replay feeds components itself: no subscriptions at run time".into(),
        ))
    }

    async fn request(&self, msg: BusMessage, _timeout: Duration) -> Result<BusMessage, BusError> {
        // A request's answer would come from outside the recording.
        self.record("request", &msg);
        Err(BusError::NoResponders(msg.subject))
    }

    async fn jetstream_publish(
        &self,
        msg: BusMessage,
        msg_id: Option<String>,
    ) -> Result<PublishAck, BusError> {
        let Some(stream) = self.stream_for_subject(&msg.subject).await? else {
            return Err(BusError::Unavailable(format!(
                "no stream captures {} in this replay (pass the definitions with --streams DIR)",
                msg.subject
            )));
        };
        let (sequence, duplicate) = {
            let mut stored = self.world.stored.lock().unwrap_or_else(|e| e.into_inner());
            let (last, ids) = stored.entry(stream.clone()).or_default();
            if msg_id.is_some_and(|id| !ids.insert(id)) {
                (*last, true)
            } else {
                *last += 1;
                (*last, false)
            }
        };
        self.world.tape.write(
            Record {
                component: &self.component,
                kind: "jetstream_publish",
                subject: Some(&msg.subject),
                stream: Some(&stream),
                sequence: Some(sequence),
                duplicate: Some(duplicate),
                headers: (!msg.headers.is_empty()).then_some(msg.headers.as_slice()),
                ..Record::default()
            }
            .with_bytes(&msg.payload),
        );
        if !duplicate {
            self.world.pass_on(&msg);
        }
        Ok(PublishAck {
            stream,
            sequence,
            duplicate,
        })
    }

    async fn stream_for_subject(&self, subject_: &str) -> Result<Option<String>, BusError> {
        Ok(self
            .world
            .streams
            .iter()
            .find(|(_, filters)| filters.iter().any(|f| subject::matches(f, subject_)))
            .map(|(name, _)| name.clone()))
    }

    fn max_payload(&self) -> usize {
        crate::bus::DEFAULT_MAX_PAYLOAD
    }

    fn describe(&self) -> String {
        "replay".into()
    }
}

/// One component's cache in a replay: the replay's own L1 (on the virtual
/// clock), with every write recorded.
pub struct RecordingCache {
    inner: Arc<dyn CacheStore>,
    world: Arc<World>,
    component: Arc<str>,
}

impl RecordingCache {
    /// Records `component`'s writes to `inner`.
    pub fn new(inner: Arc<dyn CacheStore>, world: Arc<World>, component: &str) -> Self {
        RecordingCache {
            inner,
            world,
            component: Arc::from(component),
        }
    }

    fn record(&self, kind: &str, key: &str, value: Option<&[u8]>, ttl: Option<Duration>) {
        let r = Record {
            component: &self.component,
            kind,
            key: Some(key),
            ttl_ms: ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            ..Record::default()
        };
        self.world.tape.write(match value {
            Some(v) => r.with_bytes(v),
            None => r,
        });
    }
}

#[async_trait]
impl CacheStore for RecordingCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        self.inner.get(key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, CacheError> {
        self.inner.get_many(keys).await
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), CacheError> {
        self.inner.set(key, value.clone(), ttl).await?;
        self.record("cache_set", key, Some(&value), Some(ttl));
        Ok(())
    }

    async fn set_many(
        &self,
        entries: Vec<(String, Bytes)>,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        self.inner.set_many(entries.clone(), ttl).await?;
        for (k, v) in &entries {
            self.record("cache_set", k, Some(v), Some(ttl));
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        let was = self.inner.delete(key).await?;
        self.record("cache_delete", key, None, None);
        Ok(was)
    }

    async fn invalidate_pattern(&self, pattern: &str) -> Result<u64, CacheError> {
        let n = self.inner.invalidate_pattern(pattern).await?;
        self.record("cache_invalidate", pattern, None, None);
        Ok(n)
    }

    async fn increment(&self, key: &str, delta: u64, ttl: Duration) -> Result<u64, CacheError> {
        let n = self.inner.increment(key, delta, ttl).await?;
        self.record("cache_set", key, Some(n.to_string().as_bytes()), None);
        Ok(n)
    }

    async fn scan(
        &self,
        pattern: &str,
        cursor: u64,
        count: usize,
    ) -> Result<(Vec<String>, Option<u64>), CacheError> {
        self.inner.scan(pattern, cursor, count).await
    }

    fn stats(&self) -> Vec<LayerStats> {
        self.inner.stats()
    }
}

/// How a replayed delivery went, on the tape: a `retry` record before each
/// further attempt and `term` when it was given up on (after its dead
/// letter); a plain ack leaves no record (no `term` means handled).
/// Nothing redelivers in a replay: the dispatcher retries in place, on the
/// virtual clock.
pub struct ReplaySettle {
    /// The tape and the component.
    pub world: Arc<World>,
    /// Which component was handling it.
    pub component: Arc<str>,
    /// Its subject, for the record (shared by the message's deliveries).
    pub subject: Arc<str>,
}

impl ReplaySettle {
    fn record(&self, outcome: &str) {
        self.world.tape.write(Record {
            component: &self.component,
            kind: "settle",
            subject: Some(&self.subject),
            outcome: Some(outcome),
            ..Record::default()
        });
    }
}

#[async_trait]
impl Settle for ReplaySettle {
    async fn ack(&self) -> Result<(), SettleError> {
        Ok(())
    }
    async fn nak(&self, _delay: Duration) -> Result<(), SettleError> {
        Err(SettleError(
            "a replay delivers each event once, in order".into(),
        ))
    }
    async fn term(&self) -> Result<(), SettleError> {
        self.record("term");
        Ok(())
    }
    async fn in_progress(&self) -> Result<(), SettleError> {
        // The dispatcher keeps a message in progress only to retry it.
        self.record("retry");
        Ok(())
    }
    fn redelivers(&self) -> bool {
        false
    }
}
