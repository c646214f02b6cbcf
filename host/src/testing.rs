//! A test harness for component authors: load the `.wasm` you deploy with
//! a manifest fragment, push messages, and assert what it published,
//! cached and how each message was settled — in plain `cargo test`, with
//! no servers, on a virtual clock.
//!
//! Subscriptions that name a `stream` behave like a JetStream durable
//! consumer: each message gets a stream sequence and a delivery count,
//! and is redelivered when its ack does not arrive within `ack_wait`, after
//! a nak's delay, up to the consumer's delivery limit. The test drives it:
//! [`Harness::advance`] moves time and fires what is due, [`Harness::lose_next_ack`]
//! and [`Harness::redeliver`] make the duplicates and the out-of-order
//! redeliveries a real consumer sees. Core subscriptions get each message
//! once.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use weir::testing::Harness;
//! let mut h = Harness::new(r#"
//!     [components.momentum]
//!     wasm = "../target/wasm32-wasip2/release/momentum.wasm"
//!     subscribe = [{ subject = "TRADE.trade.*", stream = "TRADE", consumer = "momentum" }]
//!     grants = { subscribe = ["TRADE.trade.*"], publish = ["signals.*"], streams = ["TRADE"], cache = "m" }
//! "#)?;
//! let seq = h.push("TRADE.trade.BTCUSDT", r#"{"symbol":"BTCUSDT","price":1,"ts":1}"#).await;
//! assert_eq!(h.settled(seq), vec![weir::testing::Settled::Acked { attempt: 1 }]);
//! assert!(h.published("signals.>").is_empty());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::bus::BusMessage;
use crate::bus::dlq::DeadLetter;
use crate::bus::nats::consumer::{ack_wait, server_max_deliver};
use crate::bus::{Meta, Settle, SettleError};
use crate::manifest::Manifest;
use crate::replay::{Replay, ReplayOptions, ReplayReport};

/// How one delivery of a stream message was settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Acknowledged on delivery `attempt`.
    Acked {
        /// The delivery count it was acked on.
        attempt: u32,
    },
    /// Acknowledged, but the ack never reached the server
    /// ([`Harness::lose_next_ack`]): it will be redelivered.
    AckLost {
        /// The delivery count it was acked on.
        attempt: u32,
    },
    /// Nak'd: redelivered after `delay`.
    Nakd {
        /// The delivery count.
        attempt: u32,
        /// Wait before redelivery.
        delay: Duration,
    },
    /// Terminated (after its dead letter).
    Termed {
        /// The delivery count.
        attempt: u32,
    },
    /// Kept in progress (the dispatcher retries in place).
    InProgress {
        /// The delivery count.
        attempt: u32,
    },
}

/// A message of the simulated stream, kept for the whole test.
struct Stored {
    msg: BusMessage,
    /// Which component's consumer reads it.
    component: usize,
    /// The stream's name.
    stream: String,
    /// Deliveries so far.
    delivered: u32,
    ack_wait: Duration,
    max_deliver: u32,
}

/// The simulated consumers: what JetStream would hold.
#[derive(Default)]
struct Consumers {
    /// Every stream message pushed, by sequence.
    messages: BTreeMap<u64, Stored>,
    /// Unacknowledged ones: sequence → when they are redelivered (ns).
    pending: BTreeMap<u64, u64>,
    /// Every settle, by stream sequence.
    settled: BTreeMap<u64, Vec<Settled>>,
    /// The next ack is lost on its way.
    lose_next_ack: bool,
    /// Last sequence per stream.
    last_seq: BTreeMap<String, u64>,
}

/// Settles a harness delivery against the simulated consumer.
struct SimSettle {
    consumers: Arc<Mutex<Consumers>>,
    clock: crate::clock::VirtualClock,
    seq: u64,
    attempt: u32,
}

impl SimSettle {
    fn with<R>(&self, f: impl FnOnce(&mut Consumers) -> R) -> R {
        f(&mut self.consumers.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[async_trait]
impl Settle for SimSettle {
    async fn ack(&self) -> Result<(), SettleError> {
        let (seq, attempt) = (self.seq, self.attempt);
        self.with(|c| {
            let outcome = if std::mem::take(&mut c.lose_next_ack) {
                Settled::AckLost { attempt }
            } else {
                c.pending.remove(&seq);
                Settled::Acked { attempt }
            };
            c.settled.entry(seq).or_default().push(outcome);
        });
        Ok(())
    }
    async fn nak(&self, delay: Duration) -> Result<(), SettleError> {
        let (seq, attempt, now) = (self.seq, self.attempt, self.clock.ns());
        self.with(|c| {
            if let Some(due) = c.pending.get_mut(&seq) {
                *due = now.saturating_add(ns(delay));
            }
            c.settled
                .entry(seq)
                .or_default()
                .push(Settled::Nakd { attempt, delay });
        });
        Ok(())
    }
    async fn term(&self) -> Result<(), SettleError> {
        let (seq, attempt) = (self.seq, self.attempt);
        self.with(|c| {
            c.pending.remove(&seq);
            c.settled
                .entry(seq)
                .or_default()
                .push(Settled::Termed { attempt });
        });
        Ok(())
    }
    async fn in_progress(&self) -> Result<(), SettleError> {
        let (seq, attempt, now) = (self.seq, self.attempt, self.clock.ns());
        self.with(|c| {
            let wait = c.messages.get(&seq).map_or(Duration::ZERO, |m| m.ack_wait);
            if let Some(due) = c.pending.get_mut(&seq) {
                *due = now.saturating_add(ns(wait));
            }
            c.settled
                .entry(seq)
                .or_default()
                .push(Settled::InProgress { attempt });
        });
        Ok(())
    }
    fn redelivers(&self) -> bool {
        true
    }
}

/// A `Write` the harness reads back.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A message a component published, as the harness saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The component.
    pub component: String,
    /// The subject.
    pub subject: String,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its payload.
    pub payload: Bytes,
}

impl Published {
    /// The payload as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// Components of a manifest under test.
pub struct Harness {
    replay: Replay,
    manifest: Manifest,
    out: Buffer,
    consumers: Arc<Mutex<Consumers>>,
    report: ReplayReport,
}

/// The time a harness starts at: 2025-07-30T08:00:00Z, the sample data's.
pub const START: Duration = Duration::from_secs(1_753_862_400);

impl Harness {
    /// Components from manifest TOML (paths relative to the current
    /// directory, which `cargo test` sets to the crate's).
    pub fn new(manifest_toml: &str) -> anyhow::Result<Harness> {
        let manifest = Manifest::from_toml(manifest_toml, &std::env::current_dir()?)?;
        Self::with_manifest(manifest)
    }

    /// Components of a loaded manifest.
    pub fn with_manifest(manifest: Manifest) -> anyhow::Result<Harness> {
        let out = Buffer::default();
        let replay = Replay::new(&manifest, Box::new(out.clone()), ReplayOptions::default())?;
        replay.clock().advance_to(SystemTime::UNIX_EPOCH + START);
        Ok(Harness {
            replay,
            manifest,
            out,
            consumers: Arc::default(),
            report: ReplayReport::default(),
        })
    }

    /// The virtual time.
    pub fn now(&self) -> SystemTime {
        self.replay.clock().now()
    }

    /// Publishes a message to the components, now; returns its stream
    /// sequence (0 when only core subscriptions took it).
    pub async fn push(&mut self, subject: &str, payload: impl Into<Bytes>) -> u64 {
        self.push_message(BusMessage::new(subject, payload)).await
    }

    /// [`Harness::push`] for a whole message (headers, reply-to).
    pub async fn push_message(&mut self, msg: BusMessage) -> u64 {
        self.replay.observe_market(&msg);
        let mut seq = 0;
        for (c, i) in self.replay.targets(&msg.subject) {
            let spec = self.spec(c);
            let sub = spec.subscribe[i].get_ref().clone();
            match &sub.stream {
                None => {
                    let settle = self.replay.core_settle(c, Arc::from(msg.subject.as_str()));
                    let meta = Meta {
                        attempt: 1,
                        time: Some(self.now()),
                        ..Meta::default()
                    };
                    self.replay.deliver_to(c, msg.clone(), meta, settle).await;
                }
                Some(stream) => {
                    seq = {
                        let mut cs = self.lock();
                        let last = cs.last_seq.entry(stream.clone()).or_default();
                        *last += 1;
                        let seq = *last;
                        cs.messages.insert(
                            seq,
                            Stored {
                                msg: msg.clone(),
                                component: c,
                                stream: stream.clone(),
                                delivered: 0,
                                ack_wait: ack_wait(&sub, &spec.limits),
                                max_deliver: server_max_deliver(&spec.limits),
                            },
                        );
                        cs.pending.insert(seq, 0);
                        seq
                    };
                    self.deliver_pending(seq).await;
                }
            }
        }
        self.replay.cascade(&mut self.report, seq).await;
        seq
    }

    fn spec(&self, c: usize) -> crate::manifest::ComponentSpec {
        let name = self.replay.component(c).name();
        self.manifest.components[name].clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Consumers> {
        self.consumers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers stream message `seq` once more (as the server would).
    async fn deliver_pending(&mut self, seq: u64) {
        let now = self.replay.clock().ns();
        let delivery = {
            let mut cs = self.lock();
            let Consumers {
                messages, pending, ..
            } = &mut *cs;
            let (Some(m), Some(due)) = (messages.get_mut(&seq), pending.get_mut(&seq)) else {
                return;
            };
            if m.delivered >= m.max_deliver {
                // The server's own limit: it stops delivering.
                pending.remove(&seq);
                return;
            }
            m.delivered += 1;
            *due = now.saturating_add(ns(m.ack_wait));
            (m.component, m.msg.clone(), m.delivered, m.stream.clone())
        };
        let (c, msg, attempt, stream) = delivery;
        let meta = Meta {
            stream: Some(stream),
            sequence: Some(seq),
            attempt,
            time: Some(self.now()),
            received: None,
        };
        let settle = SimSettle {
            consumers: self.consumers.clone(),
            clock: self.replay.clock().clone(),
            seq,
            attempt,
        };
        self.replay.deliver_to(c, msg, meta, Box::new(settle)).await;
    }

    /// Moves time forward by `d`, redelivering every stream message whose
    /// ack wait or nak delay runs out meanwhile, in the order they fall due.
    pub async fn advance(&mut self, d: Duration) {
        let until = self.replay.clock().ns().saturating_add(ns(d));
        loop {
            let next = self
                .lock()
                .pending
                .iter()
                .filter(|(_, due)| **due <= until)
                .min_by_key(|(seq, due)| (**due, **seq))
                .map(|(seq, due)| (*seq, *due));
            let Some((seq, due)) = next else { break };
            self.replay
                .clock()
                .advance_to(SystemTime::UNIX_EPOCH + Duration::from_nanos(due));
            self.deliver_pending(seq).await;
            self.replay.cascade(&mut self.report, seq).await;
        }
        self.replay
            .clock()
            .advance_to(SystemTime::UNIX_EPOCH + Duration::from_nanos(until));
    }

    /// The next ack is lost on its way to the server: that message comes
    /// back after its ack wait, behind whatever was pushed meanwhile.
    pub fn lose_next_ack(&mut self) {
        self.lock().lose_next_ack = true;
    }

    /// Delivers stream message `seq` again now, as a duplicate (a
    /// redelivery whose earlier ack the server never saw).
    pub async fn redeliver(&mut self, seq: u64) {
        {
            let mut cs = self.lock();
            if !cs.messages.contains_key(&seq) {
                return;
            }
            cs.pending.insert(seq, 0);
        }
        self.deliver_pending(seq).await;
        self.replay.cascade(&mut self.report, seq).await;
    }

    /// Every settle of stream message `seq`, in order.
    pub fn settled(&self, seq: u64) -> Vec<Settled> {
        self.lock().settled.get(&seq).cloned().unwrap_or_default()
    }

    /// Every record so far, as `weir replay` writes them.
    pub fn records(&self) -> Vec<serde_json::Value> {
        let _ = self.replay.flush();
        let bytes = self.out.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Messages published on subjects matching `filter`, in order.
    pub fn published(&self, filter: &str) -> Vec<Published> {
        self.records()
            .iter()
            .filter(|r| matches!(r["kind"].as_str(), Some("publish" | "jetstream_publish")))
            .filter_map(|r| {
                let subject = r["subject"].as_str()?;
                crate::subject::matches(filter, subject).then(|| Published {
                    component: r["component"].as_str().unwrap_or_default().to_owned(),
                    subject: subject.to_owned(),
                    headers: serde_json::from_value(r["headers"].clone()).unwrap_or_default(),
                    payload: payload_of(r),
                })
            })
            .collect()
    }

    /// Dead letters published so far.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.records()
            .iter()
            .filter(|r| r["kind"] == "dead_letter")
            .filter_map(|r| serde_json::from_slice(&payload_of(r)).ok())
            .collect()
    }

    /// What the cache holds for `key` (with its namespace, e.g. `sma:x`).
    pub async fn cache(&self, key: &str) -> Option<Bytes> {
        let store = self.replay.cache()?;
        store.get(key).await.ok().flatten()
    }
}

fn payload_of(r: &serde_json::Value) -> Bytes {
    let bytes = crate::bus::bytes_from(r["payload"].as_str(), r["payload_base64"].as_str());
    Bytes::from(bytes.unwrap_or_default())
}
