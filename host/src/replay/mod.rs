//! `weir replay`: a manifest's components over recorded events, on a
//! virtual clock, with every effect written in order to one NDJSON output.
//!
//! Events are handled one at a time, in input order, through the same
//! dispatcher policy as live traffic (`crate::dispatch::deliver`): an
//! event and everything it causes (messages components publish to each
//! other, retries on the virtual clock, dead letters) is finished before
//! the next one starts. Time inside components is the event's time,
//! random is seeded, cache TTLs count virtual time: the same input gives
//! byte-identical output, whatever the instance counts or the machine.

mod capture;
mod input;
mod record;
mod tape;

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;

pub use capture::{CaptureBus, RecordingCache, ReplaySettle, World};
pub use input::{Bound, Event, Input, RecordedLine, Skipped, parse_line};
pub use record::record;
pub use tape::{Record, Tape};

use crate::bus::BusMessage;
use crate::bus::{Delivery, Meta};
use crate::cache::{CacheStore, MemoryStore, MemoryStoreConfig};
use crate::clock::{Clock, VirtualClock};
use crate::dispatch::{DeadLetters, Worker};
use crate::manifest::Manifest;
use crate::market::MarketStore;
use crate::runtime::{ComponentTemplate, Parts, Runtime, RuntimeConfig};
use crate::stats::FlowStats;
use crate::subject;

/// How fast events are fed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// As fast as the components go.
    Max,
    /// Event time runs this many times faster than real time.
    Factor(f64),
}

impl std::str::FromStr for Speed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "max" {
            return Ok(Speed::Max);
        }
        match s.parse::<f64>() {
            Ok(f) if f > 0.0 && f.is_finite() => Ok(Speed::Factor(f)),
            _ => Err(format!("speed {s:?}: a positive number or `max`")),
        }
    }
}

/// What a replay is asked to do.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// First event (inclusive), by sequence or time.
    pub start: Option<Bound>,
    /// Last event (inclusive), by sequence or time.
    pub end: Option<Bound>,
    /// Pace.
    pub speed: Speed,
    /// Seeds WASI random.
    pub seed: u64,
    /// Streams (name, subject filters) that `jetstream-publish` stores into.
    pub streams: Vec<(String, Vec<String>)>,
    /// Messages components may publish to each other per event before the
    /// event is cut off as a runaway loop.
    pub max_cascade: usize,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            start: None,
            end: None,
            speed: Speed::Max,
            seed: 0,
            streams: Vec::new(),
            max_cascade: 10_000,
        }
    }
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Input events replayed.
    pub events: u64,
    /// Deliveries to components (events and the messages they caused).
    pub deliveries: u64,
    /// Lines written.
    pub records: u64,
    /// Input lines that could not be read.
    pub skipped: Skipped,
    /// Events cut off because components kept publishing to each other.
    pub runaways: u64,
    /// Wall time taken.
    pub elapsed: Duration,
}

/// One component and what it listens to.
struct Subscriber {
    template: Arc<ComponentTemplate>,
    /// Its name, for the settle records.
    name: Arc<str>,
    filters: Vec<String>,
    /// One per instance, with the dispatcher's policy; a failed instance
    /// is replaced on next use. Dead letters are stored before the next
    /// event (a replay's output must not depend on timing).
    workers: Vec<Worker>,
    flow: Arc<FlowStats>,
}

/// The components of a manifest set up for a replay writing to `out`.
pub struct Replay {
    clock: VirtualClock,
    /// The replay's own L1, when the cache is enabled.
    l1: Option<Arc<dyn CacheStore>>,
    world: Arc<World>,
    subscribers: Vec<Subscriber>,
    options: ReplayOptions,
    /// The latest market data and the subjects that feed it, when
    /// `[market]` names some: fed from the replayed messages, in order.
    market: Option<(MarketStore, Vec<String>)>,
}

impl Replay {
    /// Compiles the manifest's components against a capture bus and a
    /// fresh L1 on the virtual clock. Nothing live is touched.
    pub fn new(
        manifest: &Manifest,
        out: Box<dyn Write + Send>,
        options: ReplayOptions,
    ) -> anyhow::Result<Replay> {
        let clock = VirtualClock::starting_at(SystemTime::UNIX_EPOCH);
        let tape = Arc::new(Tape::new(out, clock.clone()));
        let filters = manifest
            .components
            .values()
            .flat_map(|s| s.subscribe.iter().map(|sub| sub.get_ref().subject.clone()))
            .chain(manifest.market.subjects.iter().cloned())
            .collect();
        let market = (!manifest.market.subjects.is_empty())
            .then(|| (MarketStore::default(), manifest.market.subjects.clone()));
        let world = Arc::new(World::new(tape, filters, options.streams.clone()));
        let l1: Option<Arc<dyn CacheStore>> = manifest.cache.enabled.then(|| {
            let config = MemoryStoreConfig {
                max_entries: manifest.cache.max_entries,
                max_bytes: manifest.cache.max_mb * 1024 * 1024,
            };
            Arc::new(MemoryStore::with_clock(
                config,
                Clock::Virtual(clock.clone()),
            )) as Arc<dyn CacheStore>
        });
        let runtime = Runtime::new(&RuntimeConfig::for_manifest(manifest))
            .context("cannot build the WebAssembly engine")?;
        let templates = runtime.load_manifest(manifest, |name| Parts {
            cache: l1.as_ref().map(|l1| {
                Arc::new(RecordingCache::new(l1.clone(), world.clone(), name))
                    as Arc<dyn CacheStore>
            }),
            bus: Arc::new(CaptureBus::new(world.clone(), name)),
            clock: Clock::Virtual(clock.clone()),
            seed: options.seed,
            market: market.as_ref().map(|(m, _)| m.clone()),
            stats: None,
            // A replay exports nothing: its output is the record.
            telemetry: crate::telemetry::Telemetry::off(),
        })?;
        let subscribers = templates
            .into_iter()
            .zip(manifest.components.values())
            .map(|(template, spec)| Subscriber {
                name: Arc::from(template.name()),
                filters: spec
                    .subscribe
                    .iter()
                    .map(|s| s.get_ref().subject.clone())
                    .collect(),
                workers: (0..spec.limits.instances.max(1))
                    .map(|i| {
                        let letters = DeadLetters::inline(template.ctx.messaging.bus.clone());
                        Worker::new(template.clone(), i, letters)
                    })
                    .collect(),
                flow: template.ctx.stats.add_flow(),
                template,
            })
            .collect();
        Ok(Replay {
            clock,
            l1,
            world,
            subscribers,
            options,
            market,
        })
    }

    /// Replays every event of `input` within the options' range.
    pub async fn run(mut self, mut input: Input) -> anyhow::Result<ReplayReport> {
        let started = Instant::now();
        let mut report = ReplayReport::default();
        let mut paced: Option<(SystemTime, Instant)> = None;
        let (start, end) = (self.options.start, self.options.end);
        while let Some(event) = input.next(start, end, &mut report.skipped).await? {
            if let Some(t) = event.time {
                if let Speed::Factor(f) = self.options.speed {
                    let (t0, i0) = *paced.get_or_insert((t, Instant::now()));
                    let due = t.duration_since(t0).unwrap_or_default().div_f64(f);
                    tokio::time::sleep_until((i0 + due).into()).await;
                }
                self.clock.advance_to(t);
            }
            self.world.tape.begin_event(event.seq);
            let meta = Meta {
                stream: None,
                sequence: Some(event.seq),
                attempt: 1,
                time: event.time,
                received: None,
            };
            report.deliveries += self.deliver(&event.msg, &meta).await;
            self.cascade(&mut report, event.seq).await;
            report.events += 1;
        }
        self.world
            .tape
            .finish()
            .context("cannot write the replay output")?;
        report.records = self.world.tape.records();
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Delivers one message to every subscription that matches it, in
    /// manifest order; how many deliveries that made.
    async fn deliver(&mut self, msg: &BusMessage, meta: &Meta) -> u64 {
        self.observe_market(msg);
        let subject_: Arc<str> = Arc::from(msg.subject.as_str());
        let targets = self.targets(&msg.subject);
        for &(c, _) in &targets {
            let settle = self.core_settle(c, subject_.clone());
            self.deliver_to(c, msg.clone(), meta.clone(), settle).await;
        }
        targets.len() as u64
    }

    /// Feeds the latest-value store before the message is delivered, as the
    /// host's own subscription would have seen it first.
    pub(crate) fn observe_market(&self, msg: &BusMessage) {
        if let Some((store, filters)) = &self.market
            && filters.iter().any(|f| subject::matches(f, &msg.subject))
        {
            // A malformed message is the components' to reject.
            let _ = store.update(&msg.subject, &msg.payload);
        }
    }

    /// How component `c`'s delivery of a message on `subject_` settles:
    /// once, on the tape.
    pub(crate) fn core_settle(&self, c: usize, subject_: Arc<str>) -> Box<dyn crate::bus::Settle> {
        Box::new(ReplaySettle {
            world: self.world.clone(),
            component: self.subscribers[c].name.clone(),
            subject: subject_,
        })
    }

    /// (component, subscription) pairs whose filter matches `subject_`, in
    /// manifest order.
    pub(crate) fn targets(&self, subject_: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (c, s) in self.subscribers.iter().enumerate() {
            for (i, f) in s.filters.iter().enumerate() {
                if subject::matches(f, subject_) {
                    out.push((c, i));
                }
            }
        }
        out
    }

    /// Runs one delivery through component `c` (on the instance its
    /// subject maps to) with the dispatcher's policy.
    pub(crate) async fn deliver_to(
        &mut self,
        c: usize,
        msg: BusMessage,
        meta: Meta,
        settle: Box<dyn crate::bus::Settle>,
    ) {
        let s = &mut self.subscribers[c];
        let index = (stable_hash(&msg.subject) % s.workers.len() as u64) as usize;
        let delivery = Delivery { msg, meta, settle };
        if let Some(worker) = s.workers.get_mut(index) {
            worker.deliver(delivery, &s.flow).await;
        }
    }

    /// Delivers what components published to each other during the
    /// current event; false when it was cut off as a runaway loop.
    pub(crate) async fn cascade(&mut self, report: &mut ReplayReport, event: u64) {
        let mut cascade = 0;
        while let Some(msg) = self.world.next_pending() {
            cascade += 1;
            if cascade > self.options.max_cascade {
                let dropped = self.world.clear_pending() + 1;
                tracing::warn!(
                    event,
                    dropped,
                    "components kept publishing to each other: the rest of this event's messages were dropped"
                );
                report.runaways += 1;
                return;
            }
            let meta = Meta {
                attempt: 1,
                time: Some(self.clock.now()),
                ..Meta::default()
            };
            report.deliveries += self.deliver(&msg, &meta).await;
        }
    }

    /// The virtual clock.
    pub(crate) fn clock(&self) -> &VirtualClock {
        &self.clock
    }

    /// Component `c`, in manifest order.
    pub(crate) fn component(&self, c: usize) -> &ComponentTemplate {
        &self.subscribers[c].template
    }

    /// The replay's L1 (keys with their namespaces).
    pub(crate) fn cache(&self) -> Option<&Arc<dyn CacheStore>> {
        self.l1.as_ref()
    }

    /// Flushes the output.
    pub(crate) fn flush(&self) -> std::io::Result<()> {
        self.world.tape.finish()
    }
}

/// The same subject gives the same instance on every run and machine.
fn stable_hash(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}
