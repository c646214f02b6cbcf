//! The host side of weir's WIT interfaces.
//!
//! One `bindgen!` against `wit/`; each interface's glue lives in its own
//! module over a backend trait ([`crate::cache::CacheStore`],
//! [`crate::bus::Bus`]). [`ComponentContext`] is built once per component;
//! [`Capabilities`] is the per-instance view the generated traits run on.

mod cache;
mod config;
mod keyvalue;
mod lattice;
mod logging;
mod market;
mod messaging;
mod output;

pub use cache::CacheCapability;
pub use config::ConfigCapability;
pub use logging::LoggingCapability;
pub use market::MarketCapability;
pub(crate) use market::levels;
pub use messaging::MessagingCapability;
pub use output::GuestOutput;

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};

use crate::bus::Bus;
use crate::cache::CacheStore;
use crate::clock::Clock;
use crate::manifest::{Grants, Limits};
use crate::stats::ComponentStats;

/// Generated bindings; private so the WIT types stay behind this module.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        // Every interface weir serves and both handlers it calls: weir's
        // own (`strategy` and `alert` are the same today) and wasmCloud's.
        // A component uses any part; `runtime` picks its handler.
        world: "weir:host/host",
        imports: {
            "weir:host/config": trappable,
            "weir:host/logging": trappable,
            "weir:host/market": trappable,
            "wasi:config/runtime": trappable,
            "wasi:config/store": trappable,
            "wasi:logging/logging": trappable,
            "wasmcloud:bus/lattice": trappable,
            default: async | trappable,
        },
        exports: { default: async },
        // `handle` borrows the message: lowering copies it into the guest
        // straight from the host's buffers, with no owned copy in between.
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "wasi:keyvalue/store.bucket": super::keyvalue::Bucket,
            "wasmcloud:bus/lattice.call-target-interface": super::lattice::CallTarget,
        },
    });
}

pub(crate) use bindings::weir::host::types::Error as GuestError;

/// Everything a component may use, built once from the manifest: who it
/// is, its grants and limits, and one field per capability (each built
/// and checked once, with its own linker entry).
pub struct ComponentContext {
    /// The component's name, on every log line and error.
    pub name: String,
    /// What it may reach.
    pub grants: Grants,
    /// Its limits.
    pub limits: Limits,
    /// Its counters.
    pub stats: Arc<ComponentStats>,
    /// Time as the component sees it (WASI clocks), its backoffs and its
    /// rate limits count; virtual in a replay.
    pub clock: Clock,
    /// `weir:host/cache` and `wasi:keyvalue`.
    pub cache: CacheCapability,
    /// `weir:host/messaging` and wasmCloud's messaging.
    pub messaging: MessagingCapability,
    /// `weir:host/config` and `wasi:config`.
    pub config: ConfigCapability,
    /// `weir:host/logging`, `wasi:logging`, stdout and stderr.
    pub logging: LoggingCapability,
    /// `weir:host/market`.
    pub market: MarketCapability,
    /// Host directory mounted read-only at `/data`, when granted.
    pub data_dir: Option<std::path::PathBuf>,
    /// The host's tracing: the spans of its deliveries and host calls.
    pub telemetry: crate::telemetry::Telemetry,
    /// Seeds WASI random on a virtual clock (each instance gets its own
    /// stream, derived from this, the name and the instance's number).
    random_seed: u64,
    /// Instances made so far, numbering their random streams.
    instances_made: std::sync::atomic::AtomicU64,
}

impl ComponentContext {
    /// A context on the system clock with messaging on `bus`; the cache,
    /// config, market data and `/data` are off until given.
    pub fn new(name: String, grants: Grants, limits: Limits, bus: Arc<dyn Bus>) -> Self {
        let clock = Clock::System;
        ComponentContext {
            messaging: MessagingCapability::new(bus, &limits, &clock),
            logging: LoggingCapability::new(&clock),
            cache: CacheCapability::off(),
            config: ConfigCapability::default(),
            market: MarketCapability::default(),
            name,
            grants,
            limits,
            stats: Arc::new(ComponentStats::default()),
            clock,
            data_dir: None,
            telemetry: crate::telemetry::Telemetry::off(),
            random_seed: 0,
            instances_made: Default::default(),
        }
    }

    /// With the cache: `store` under the component's granted namespace
    /// (none granted: no cache), with the manifest's `[cache]` limits.
    pub fn with_cache(
        mut self,
        store: Option<Arc<dyn CacheStore>>,
        settings: &crate::manifest::CacheSettings,
    ) -> Self {
        self.cache = CacheCapability::new(self.grants.cache.clone(), store, settings);
        self
    }

    /// With `config` values (as strings).
    pub fn with_config(mut self, values: BTreeMap<String, String>) -> Self {
        self.config = ConfigCapability::new(values);
        self
    }

    /// With the host's latest market data, when it keeps it.
    pub fn with_market(mut self, store: Option<crate::market::MarketStore>) -> Self {
        self.market = MarketCapability::new(store);
        self
    }

    /// Runs the component on `clock`; on a virtual clock WASI random comes
    /// from `seed` and rate limits count virtual time, so runs repeat.
    pub fn on_clock(mut self, clock: Clock, seed: u64) -> Self {
        self.logging = LoggingCapability::new(&clock);
        self.messaging = MessagingCapability::new(self.messaging.bus.clone(), &self.limits, &clock);
        self.clock = clock;
        self.random_seed = seed;
        self
    }

    /// The seed of the next instance's random stream (virtual clock only).
    pub(crate) fn next_random_seed(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let n = self
            .instances_made
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.random_seed, &self.name, n).hash(&mut h);
        h.finish()
    }

    /// The component's stdout or stderr, for its WASI context.
    pub fn output(&self, stream: &'static str) -> GuestOutput {
        self.logging.output(&self.name, stream, &self.stats)
    }
}

/// The per-instance state the generated host traits are implemented on.
pub struct Capabilities {
    /// Shared, read-only description of the component.
    pub(crate) ctx: Arc<ComponentContext>,
    /// Host calls left in the current event.
    calls_left: u32,
    /// Reply subject of the message being handled: publishing to it needs
    /// no grant while it is an inbox (see `messaging::check_reply`).
    reply_to: Option<String>,
    /// The trace of the call in progress: what the component sends
    /// carries it, host calls that leave the process are spans under it.
    pub(crate) trace: crate::telemetry::Trace,
    /// Key-value buckets and lattice targets the guest holds handles to.
    table: ResourceTable,
    /// Entries in `table`, against [`MAX_HANDLES`].
    handles: usize,
}

/// Most resources a guest may hold open at once.
const MAX_HANDLES: usize = 1024;

/// A guest error in words, for interfaces whose errors are strings
/// (wasmCloud's) or have no room for the reason.
pub(crate) fn describe(e: &GuestError) -> String {
    let (kind, why) = match e {
        GuestError::Denied(m) => ("denied", m),
        GuestError::Unavailable(m) => ("unavailable", m),
        GuestError::Invalid(m) => ("invalid", m),
        GuestError::Timeout(m) => ("timeout", m),
        GuestError::Limited(m) => ("limited", m),
    };
    format!("{kind}: {why}")
}

impl Capabilities {
    /// A fresh view for a new instance.
    pub fn new(ctx: Arc<ComponentContext>) -> Self {
        let calls_left = ctx.limits.host_calls_per_event;
        Capabilities {
            ctx,
            calls_left,
            reply_to: None,
            trace: crate::telemetry::Trace::default(),
            table: ResourceTable::new(),
            handles: 0,
        }
    }

    /// Resets per-event budgets before a `handle` call.
    pub fn begin_event(&mut self, reply_to: Option<String>) {
        self.calls_left = self.ctx.limits.host_calls_per_event;
        self.reply_to = reply_to;
    }

    /// Starts a batch of `events` messages (none with a reply-to): the
    /// per-event budget times their number.
    pub fn begin_batch(&mut self, events: usize) {
        let n = u32::try_from(events).unwrap_or(u32::MAX);
        self.calls_left = self.ctx.limits.host_calls_per_event.saturating_mul(n);
        self.reply_to = None;
    }

    /// Spends one host call from the event's budget.
    fn spend(&mut self) -> Result<(), GuestError> {
        if self.calls_left == 0 {
            ComponentStats::bump(&self.ctx.stats.limited);
            return Err(GuestError::Limited(format!(
                "component {} used all {} host calls allowed per event",
                self.ctx.name, self.ctx.limits.host_calls_per_event
            )));
        }
        self.calls_left -= 1;
        Ok(())
    }

    /// Puts a resource in the guest's table (buckets, lattice targets);
    /// refused past [`MAX_HANDLES`], so a guest that never drops its
    /// handles cannot grow the host's memory without bound.
    fn hold<R: Send + 'static>(&mut self, r: R) -> Result<Resource<R>, String> {
        if self.handles >= MAX_HANDLES {
            ComponentStats::bump(&self.ctx.stats.limited);
            return Err(format!(
                "limited: component {} holds {MAX_HANDLES} open handles; drop some first",
                self.ctx.name
            ));
        }
        let r = self.table.push(r).map_err(|e| e.to_string())?;
        self.handles += 1;
        Ok(r)
    }

    /// Takes a resource out of the guest's table.
    fn release<R: 'static>(&mut self, r: Resource<R>) -> wasmtime::Result<()> {
        self.table.delete(r)?;
        self.handles = self.handles.saturating_sub(1);
        Ok(())
    }

    /// Counts and builds a `denied` error.
    fn denied(&self, message: String) -> GuestError {
        ComponentStats::bump(&self.ctx.stats.denied);
        tracing::warn!(component = %self.ctx.name, "denied: {message}");
        GuestError::Denied(message)
    }
}

impl bindings::weir::host::types::Host for Capabilities {}

/// Adds every interface weir serves to a linker whose store data exposes
/// [`Capabilities`] through `get`: one line per capability.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut Capabilities,
) -> wasmtime::Result<()> {
    bindings::weir::host::types::add_to_linker::<T, HasSelf<Capabilities>>(linker, get)?;
    cache::add_to_linker(linker, get)?;
    keyvalue::add_to_linker(linker, get)?;
    messaging::add_to_linker(linker, get)?;
    config::add_to_linker(linker, get)?;
    logging::add_to_linker(linker, get)?;
    market::add_to_linker(linker, get)?;
    lattice::add_to_linker(linker, get)?;
    Ok(())
}

/// A token bucket: `rate` tokens per second, holding at most `burst`.
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    /// When tokens were last added, on `clock` (ns).
    last: u64,
    clock: Clock,
}

impl TokenBucket {
    fn new(rate: f64, burst: f64, clock: Clock) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: clock.mono_ns(),
            clock,
        }
    }

    /// Takes a token if one is there.
    fn take(&mut self) -> bool {
        let now = self.clock.mono_ns();
        let elapsed = now.saturating_sub(self.last) as f64 / 1e9;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
