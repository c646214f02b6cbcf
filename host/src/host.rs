//! A running weir host: the bus, the cache, and every component of a
//! manifest wired together.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinSet;

use crate::bus::{Bus, EmbeddedBus, NatsBus, Sink, Source};
use crate::cache::{self, CacheStore, LayerStats};
use crate::dispatch::Workers;
use crate::manifest::Manifest;
use crate::market::MarketStore;
use crate::observe::{Flow, Observed, Timeline};
use crate::runtime::{ComponentTemplate, Runtime, RuntimeConfig};
use crate::shutdown::{self, Shutdown, Trigger};
use crate::stats::{ComponentSnapshot, ComponentStats};
use crate::telemetry::Telemetry;
use crate::update::{Updater, Wiring};

/// Longest the start waits for NATS to confirm the subscriptions.
const STARTUP_FLUSH: Duration = Duration::from_secs(5);

/// The least time given to the last flush to NATS at shutdown.
const FINAL_FLUSH: Duration = Duration::from_millis(500);

/// A started host. Cheap accessors; [`Host::shutdown`] stops it.
pub struct Host {
    /// This host's id in coherence messages and logs.
    id: String,
    /// Where components publish and subscribe.
    bus: Arc<dyn Bus>,
    /// Set when the bus is the embedded one, to see its queues.
    embedded: Option<EmbeddedBus>,
    /// Set when the bus is NATS: JetStream and connection state.
    nats: Option<NatsBus>,
    /// The cache, when enabled.
    cache: Option<Arc<dyn CacheStore>>,
    /// Each component's counters (shared by its versions), in manifest order.
    stats: Vec<(String, Arc<ComponentStats>)>,
    /// Switches components to new versions; holds the running ones.
    updater: Updater,
    /// Sources, workers and every capability's housekeeping.
    tasks: JoinSet<()>,
    /// Tells sources to stop taking messages.
    shutdown: Trigger,
    /// Its tracing: what is queued is sent when the host stops.
    telemetry: Telemetry,
    /// What `/metrics` and friends read.
    observed: Observed,
    /// Where the HTTP endpoints listen, when enabled.
    http_addr: Option<std::net::SocketAddr>,
}

impl Host {
    /// Starts a host for the manifest: NATS when configured (it must be
    /// reachable), else the embedded bus.
    pub async fn start(manifest: &Manifest) -> anyhow::Result<Host> {
        // Components from registries are pulled (or found in the store)
        // before anything connects: a missing one stops the start here.
        let manifest = &crate::registry::resolve(manifest).await?;
        let id = manifest.host.id.clone().unwrap_or_else(default_host_id);
        match &manifest.nats {
            Some(settings) => {
                let nats =
                    NatsBus::connect(settings, &manifest.base_dir, &format!("weir {id}")).await?;
                Self::start_with_bus(manifest, id, Arc::new(nats.clone()), None, Some(nats)).await
            }
            None => {
                let bus = EmbeddedBus::new();
                Self::start_with_bus(manifest, id, Arc::new(bus.clone()), Some(bus), None).await
            }
        }
    }

    async fn start_with_bus(
        manifest: &Manifest,
        id: String,
        bus: Arc<dyn Bus>,
        embedded: Option<EmbeddedBus>,
        nats: Option<NatsBus>,
    ) -> anyhow::Result<Host> {
        let telemetry = Telemetry::start(&manifest.telemetry, &id)?;
        if let Some(endpoint) = telemetry.endpoint() {
            tracing::info!(endpoint, "traces exported over OTLP");
        }
        let mut tasks = JoinSet::new();
        let (shutdown, signal) = shutdown::channel();
        let cache = cache::start(manifest, &id, &bus, nats.as_ref(), &signal, &mut tasks).await?;
        // The latest market data: subscribed before any component runs,
        // so what they read is never behind what they were handed.
        let market = start_market(manifest, &bus, nats.as_ref(), &signal, &mut tasks).await?;
        let runtime = Runtime::new(&RuntimeConfig::for_manifest(manifest))
            .context("cannot build the WebAssembly engine")?;
        let wiring = Wiring {
            cache: cache.store.clone(),
            bus: bus.clone(),
            market: market.clone(),
            telemetry: telemetry.clone(),
        };
        let components = runtime.load_manifest(manifest, |_| wiring.parts(None))?;
        let updater = Updater::new(runtime, wiring, manifest.clone(), &components);

        let flows = start_flows(
            manifest,
            &components,
            &updater,
            &bus,
            nats.as_ref(),
            &signal,
            &mut tasks,
        )
        .await?;
        // A subscription reaches the server asynchronously: one round trip
        // makes sure every one is in place before the host says it runs,
        // or a core message published right after the start may be lost.
        if let Some(nats) = &nats {
            match tokio::time::timeout(STARTUP_FLUSH, nats.client().flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("subscriptions may not be in place yet: {e}"),
                Err(_) => tracing::warn!(
                    "subscriptions may not be in place yet: NATS did not answer within {STARTUP_FLUSH:?}"
                ),
            }
        }
        for ((name, spec), template) in manifest.components.iter().zip(&components) {
            let signed = template
                .signer()
                .map_or_else(|| "no".to_owned(), ToString::to_string);
            tracing::info!(component = %name, world = template.world().name(), subscriptions = spec.subscribe.len(), instances = spec.limits.instances, from = template.origin(), sha256 = template.sha256(), signed_by = %signed, "component ready");
        }
        let layers: Vec<String> = cache
            .store
            .iter()
            .flat_map(|c| c.stats())
            .map(|l| format!("{:?}", l.layer))
            .collect();
        tracing::info!(host = %id, bus = %bus.describe(), cache = %layers.join("+"), "weir host started");
        let observed = Observed {
            host: id.clone(),
            components: components
                .iter()
                .map(|c| (c.name().to_owned(), c.ctx.stats.clone()))
                .collect(),
            flows,
            cache: cache.store.clone(),
            nats: nats.clone(),
            redis: cache.redis,
            monitor: cache.monitor,
            max_l1_bytes: (manifest.cache.max_mb * 1024 * 1024) as u64,
            timeline: Timeline::default(),
            started: Instant::now(),
            updater: Some(updater.clone()),
            telemetry: telemetry.clone(),
        };
        let http = manifest.host.http.as_deref();
        let http_addr = crate::observe::start(&observed, http, &signal, &mut tasks).await?;
        Ok(Host {
            id,
            bus,
            embedded,
            nats,
            observed,
            http_addr,
            cache: cache.store,
            stats: components
                .iter()
                .map(|c| (c.name().to_owned(), c.ctx.stats.clone()))
                .collect(),
            updater,
            tasks,
            shutdown,
            telemetry,
        })
    }

    /// This host's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The bus, to publish into or tap.
    pub fn bus(&self) -> Arc<dyn Bus> {
        self.bus.clone()
    }

    /// Counters per component, in manifest order.
    pub fn component_stats(&self) -> Vec<(String, ComponentSnapshot)> {
        self.stats
            .iter()
            .map(|(name, s)| (name.clone(), s.snapshot()))
            .collect()
    }

    /// The world each component is written for, in manifest order.
    pub fn worlds(&self) -> Vec<(String, crate::runtime::World)> {
        self.updater
            .templates()
            .iter()
            .map(|c| (c.name().to_owned(), c.world()))
            .collect()
    }

    /// Switches components to new versions (hot update).
    pub fn updater(&self) -> Updater {
        self.updater.clone()
    }

    /// The cache components use (keys are `<namespace>:<key>`), when enabled.
    pub fn cache(&self) -> Option<Arc<dyn CacheStore>> {
        self.cache.clone()
    }

    /// Cache figures per layer (empty when the cache is off).
    pub fn cache_stats(&self) -> Vec<LayerStats> {
        self.cache.as_ref().map(|c| c.stats()).unwrap_or_default()
    }

    /// The read-only view behind the HTTP endpoints.
    pub fn observed(&self) -> &Observed {
        &self.observed
    }

    /// Where `/metrics` listens, when `host.http` is set.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http_addr
    }

    /// The NATS connection, when the host runs on NATS.
    pub fn nats(&self) -> Option<&NatsBus> {
        self.nats.as_ref()
    }

    /// Messages queued or being handled anywhere in this host.
    pub fn backlog(&self) -> u64 {
        let queued = self.embedded.as_ref().map_or(0, EmbeddedBus::pending);
        queued
            + self
                .stats
                .iter()
                .map(|(_, s)| s.in_flight.load(Ordering::Relaxed))
                .sum::<u64>()
    }

    /// Waits until nothing is queued or in flight (seen twice in a row), or
    /// the timeout passes; whether it went idle.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let mut quiet = 0;
        while Instant::now() < until {
            quiet = if self.backlog() == 0 { quiet + 1 } else { 0 };
            if quiet >= 3 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Stops taking messages, lets in-flight ones finish, and stops.
    /// The whole stop, final flush included, takes at most `grace` (plus a
    /// moment): a flush to an unreachable NATS would otherwise wait for a
    /// reconnect that may never come.
    pub async fn shutdown(mut self, grace: Duration) {
        let until = tokio::time::Instant::now() + grace;
        self.shutdown.trigger();
        let drained = tokio::time::timeout_at(until, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown grace of {grace:?} passed; aborting remaining tasks");
            self.tasks.abort_all();
        }
        if self.telemetry.is_on() {
            let telemetry = self.telemetry.clone();
            let wait = until
                .saturating_duration_since(tokio::time::Instant::now())
                .max(FINAL_FLUSH);
            let _ = tokio::task::spawn_blocking(move || telemetry.shutdown(wait)).await;
        }
        if let Some(nats) = &self.nats {
            let flush_until = until.max(tokio::time::Instant::now() + FINAL_FLUSH);
            match tokio::time::timeout_at(flush_until, nats.client().flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!("could not flush the last acknowledgements to NATS: {e}");
                }
                Err(_) => tracing::warn!(
                    "NATS is {}: stopped without flushing; unacknowledged messages will be redelivered",
                    nats.state()
                ),
            }
        }
    }
}

/// Follows `[market]`'s subjects (or its stream) into a latest-value
/// store, when the manifest names any.
async fn start_market(
    manifest: &Manifest,
    bus: &Arc<dyn Bus>,
    nats: Option<&NatsBus>,
    signal: &Shutdown,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<Option<MarketStore>> {
    if manifest.market.subjects.is_empty() {
        return Ok(None);
    }
    let store = MarketStore::default();
    let subjects = &manifest.market.subjects;
    match (&manifest.market.stream, nats) {
        (Some(stream), Some(nats)) => {
            let follow = store
                .follow_stream(nats.jetstream(), stream, subjects, signal.clone())
                .await?;
            tasks.spawn(follow);
        }
        (Some(stream), None) => anyhow::bail!(
            "[market] stream = {stream:?} needs JetStream: configure [nats], or drop the stream to follow the subjects on the embedded bus"
        ),
        (None, _) => {
            let follow = store.follow(bus, subjects, signal.clone()).await?;
            tasks.spawn(follow);
        }
    }
    Ok(Some(store))
}

/// Opens every subscription before any message flows (so a missing stream
/// or a refused subscription stops the start), starts each component's
/// workers, and feeds each source into its component's workers.
async fn start_flows(
    manifest: &Manifest,
    components: &[Arc<ComponentTemplate>],
    updater: &Updater,
    bus: &Arc<dyn Bus>,
    nats: Option<&NatsBus>,
    signal: &Shutdown,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<Vec<Flow>> {
    // Open every subscription before any message flows, so a missing
    // stream or a refused subscription stops the start.
    let mut sources = Vec::new();
    for (i, spec) in manifest.components.values().enumerate() {
        let name = components[i].name();
        for sub in &spec.subscribe {
            let sub = sub.get_ref();
            let source = open_source(bus, nats, name, sub, &spec.limits).await?;
            sources.push((i, sub, source));
        }
    }
    let mut workers = Vec::new();
    for i in 0..components.len() {
        let current = updater
            .watch(i)
            .context("a component without its version")?;
        workers.push(Workers::spawn(current, tasks));
    }
    let mut flows = Vec::new();
    for (i, sub, source) in sources {
        let w = workers[i].for_subscription();
        flows.push(Flow {
            component: components[i].name().to_owned(),
            subject: sub.subject.clone(),
            stream: sub.stream.clone(),
            stats: w.flow().clone(),
        });
        tasks.spawn(source.run(w, signal.clone()));
    }
    Ok(flows)
}

/// Runs a host until `shutdown` resolves, then stops it gracefully.
pub async fn run(host: Host, shutdown: impl Future) {
    shutdown.await;
    tracing::info!(host = host.id(), "shutting down");
    host.shutdown(Duration::from_secs(10)).await;
}

fn default_host_id() -> String {
    let name = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let name = if name.is_empty() {
        "weir".to_owned()
    } else {
        name
    };
    format!("{name}-{}", std::process::id())
}

/// Opens where one subscription's deliveries come from: the durable
/// consumer it names (JetStream needs NATS; the stream must exist), else a
/// core subscription on the bus.
async fn open_source(
    bus: &Arc<dyn Bus>,
    nats: Option<&NatsBus>,
    component: &str,
    sub: &crate::manifest::Subscription,
    limits: &crate::manifest::Limits,
) -> anyhow::Result<Source> {
    match (&sub.stream, nats) {
        (Some(stream), None) => anyhow::bail!(
            "component {component} consumes stream {stream}: JetStream needs a NATS server (set [nats] url or NATS_URL)"
        ),
        (Some(_), Some(nats)) => Ok(Source::Stream(Box::new(
            crate::bus::nats::consumer::open(nats.jetstream(), component, sub, limits).await?,
        ))),
        (None, _) => {
            let s = bus
                .subscribe(&sub.subject, sub.queue_group.as_deref())
                .await
                .with_context(|| {
                    format!("component {component}: cannot subscribe to {}", sub.subject)
                })?;
            Ok(Source::Core(s))
        }
    }
}
