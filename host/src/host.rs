//! A running weir host: the bus, the cache, and every component of a
//! manifest wired together.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::bus::{Bus, EmbeddedBus, NatsBus, Subscription};
use crate::cache::codec::{Codec, Codecs};
use crate::cache::monitor::CacheMonitor;
use crate::cache::{
    CacheStore, Coherence, LayerStats, LayeredCache, LayeredConfig, MemoryStore, MemoryStoreConfig,
    RedisStore, l3, report,
};
use crate::capability::ComponentContext;
use crate::consumer;
use crate::dispatch::{self, Workers};
use crate::manifest::Manifest;
use crate::observe::{Flow, Observed, Timeline};
use crate::runtime::{ComponentTemplate, Runtime, RuntimeConfig};
use crate::stats::ComponentSnapshot;

/// Where a component's messages come from.
enum Source {
    /// A core subscription.
    Core(Subscription),
    /// A JetStream durable pull consumer.
    Stream(Box<async_nats::jetstream::consumer::PullConsumer>),
}

/// The least time given to the last flush to NATS at shutdown.
const FINAL_FLUSH: Duration = Duration::from_millis(500);

/// How often the dashboard's timeline takes a sample.
const TIMELINE_INTERVAL: Duration = Duration::from_secs(1);

/// How often expired L1 entries are swept.
const PURGE_INTERVAL: Duration = Duration::from_secs(1);

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
    /// Loaded components, in manifest order.
    components: Vec<Arc<ComponentTemplate>>,
    /// Routers, workers and housekeeping.
    tasks: JoinSet<()>,
    /// Tells routers to stop taking messages.
    shutdown: watch::Sender<bool>,
    /// What `/metrics` and friends read.
    observed: Observed,
    /// Where the HTTP endpoints listen, when enabled.
    http_addr: Option<std::net::SocketAddr>,
}

impl Host {
    /// Starts a host for the manifest: NATS when configured (it must be
    /// reachable), else the embedded bus.
    pub async fn start(manifest: &Manifest) -> anyhow::Result<Host> {
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
        let mut tasks = JoinSet::new();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (cache, redis_layer, monitor) = if manifest.cache.enabled {
            let (layered, monitor) =
                build_cache(manifest, &id, &bus, nats.as_ref(), &shutdown_rx, &mut tasks).await?;
            let redis = layered.l2().cloned();
            (
                Some(Arc::new(layered) as Arc<dyn CacheStore>),
                redis,
                monitor,
            )
        } else {
            (None, None, None)
        };

        let specs = &manifest.components;
        let runtime = Runtime::new(&RuntimeConfig {
            epoch_tick: Duration::from_millis(manifest.host.epoch_tick_ms),
            max_memory_bytes: specs
                .values()
                .map(|s| s.limits.memory_mb)
                .max()
                .unwrap_or(64)
                * 1024
                * 1024,
            // Room for every instance plus a replacement for each.
            max_instances: (specs.values().map(|s| s.limits.instances).sum::<usize>() * 2 + 4)
                as u32,
            fuel: specs.values().any(|s| s.limits.fuel_per_event.is_some()),
        })
        .context("cannot build the WebAssembly engine")?;

        // Load everything and open every subscription before any message
        // flows, so a missing stream or bad component stops the start.
        let mut components = Vec::new();
        let mut sources = Vec::new();
        for (name, spec) in specs {
            let ctx = ComponentContext::new(
                name.clone(),
                spec.grants.clone(),
                spec.limits.clone(),
                spec.config_strings(),
                cache.clone(),
                &manifest.cache,
                bus.clone(),
            );
            let mut ctx = ctx;
            ctx.data_dir = spec
                .grants
                .data_dir
                .as_ref()
                .map(|d| manifest.base_dir.join(d));
            let sha = spec.sha256.as_ref().map(|s| s.get_ref().as_str());
            let template = Arc::new(runtime.load(Arc::new(ctx), &manifest.wasm_path(spec), sha)?);
            for sub in &spec.subscribe {
                let sub = sub.get_ref();
                let source = match (&sub.stream, &nats) {
                    (Some(stream), None) => bail!(
                        "component {name} consumes stream {stream}: JetStream needs a NATS server (set [nats] url or NATS_URL)"
                    ),
                    (Some(_), Some(nats)) => Source::Stream(Box::new(
                        consumer::open(nats.jetstream(), name, sub, &spec.limits).await?,
                    )),
                    (None, _) => Source::Core(
                        bus.subscribe(&sub.subject, sub.queue_group.as_deref())
                            .await
                            .with_context(|| {
                                format!("component {name}: cannot subscribe to {}", sub.subject)
                            })?,
                    ),
                };
                sources.push((components.len(), sub, source));
            }
            components.push(template);
        }
        let workers: Vec<Workers> = components
            .iter()
            .map(|t| Workers::spawn(t.clone(), bus.clone(), &mut tasks))
            .collect();
        let mut flows = Vec::new();
        for (i, sub, source) in sources {
            let w = workers[i].for_subscription();
            flows.push(Flow {
                component: components[i].name().to_owned(),
                subject: sub.subject.clone(),
                stream: sub.stream.clone(),
                stats: w.flow().clone(),
            });
            match source {
                Source::Core(sub) => tasks.spawn(dispatch::route(sub, w, shutdown_rx.clone())),
                Source::Stream(c) => tasks.spawn(consumer::route(
                    *c,
                    w,
                    components[i].name().to_owned(),
                    shutdown_rx.clone(),
                )),
            };
        }
        for (name, spec) in specs {
            tracing::info!(component = %name, subscriptions = spec.subscribe.len(), instances = spec.limits.instances, "component ready");
        }
        let layers: Vec<String> = cache
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
            cache: cache.clone(),
            nats: nats.clone(),
            redis: redis_layer,
            monitor,
            max_l1_bytes: (manifest.cache.max_mb * 1024 * 1024) as u64,
            timeline: Timeline::default(),
            started: Instant::now(),
        };
        tasks.spawn(crate::observe::sample_every(
            observed.clone(),
            observed.timeline.clone(),
            TIMELINE_INTERVAL,
            shutdown_rx.clone(),
        ));
        let http_addr = match &manifest.host.http {
            None => None,
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for HTTP on {addr} (host.http)"))?;
                let local = listener.local_addr().ok();
                let mut stop = shutdown_rx.clone();
                let done = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                tasks.spawn(crate::observe::serve(listener, observed.clone(), done));
                tracing::info!(
                    "dashboard on http://{0}/ (metrics on http://{0}/metrics)",
                    local.map(|a| a.to_string()).unwrap_or_default()
                );
                local
            }
        };
        Ok(Host {
            id,
            bus,
            embedded,
            nats,
            observed,
            http_addr,
            cache,
            components,
            tasks,
            shutdown,
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
        self.components
            .iter()
            .map(|c| (c.name().to_owned(), c.ctx.stats.snapshot()))
            .collect()
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
                .components
                .iter()
                .map(|c| c.ctx.stats.in_flight.load(Ordering::Relaxed))
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
        let _ = self.shutdown.send(true);
        let drained = tokio::time::timeout_at(until, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown grace of {grace:?} passed; aborting remaining tasks");
            self.tasks.abort_all();
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

/// Runs a host until `shutdown` resolves, then stops it gracefully.
pub async fn run(host: Host, shutdown: impl Future) {
    shutdown.await;
    tracing::info!(host = host.id(), "shutting down");
    host.shutdown(Duration::from_secs(10)).await;
}

/// L1, plus L2 when Redis is configured, plus L3 when the cache is
/// distributed and the bus is NATS; with its housekeeping tasks.
async fn build_cache(
    manifest: &Manifest,
    id: &str,
    bus: &Arc<dyn Bus>,
    nats: Option<&NatsBus>,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<(LayeredCache, Option<CacheMonitor>)> {
    let settings = &manifest.cache;
    let max_l1_bytes = settings.max_mb * 1024 * 1024;
    let l1 = MemoryStore::new(MemoryStoreConfig {
        max_entries: settings.max_entries,
        max_bytes: max_l1_bytes,
    });
    tasks.spawn(purge_expired(l1.clone(), shutdown.clone()));
    let l2 = match &manifest.redis {
        None => None,
        Some(redis) => {
            let codec = if settings.compression {
                settings.codec
            } else {
                Codec::None
            };
            let codecs = Codecs::new(
                settings.compress_threshold_bytes,
                codec,
                settings.max_value_bytes,
            )
            .map_err(|e| anyhow::anyhow!("cannot set up cache codecs: {e}"))?;
            let timeout = Duration::from_millis(settings.redis_timeout_ms);
            Some(RedisStore::new(&redis.url, Arc::new(codecs), timeout)?)
        }
    };
    // Coherence keeps L1 copies of a shared store honest; without Redis each
    // host's L1 is the only copy, and dropping it on a peer's word (or on
    // a reconnect) would lose data.
    let l3 = match nats {
        Some(nats) if settings.distributed && l2.is_some() => {
            let l3 = Coherence::new(bus.clone(), id.to_owned());
            let updates = bus
                .subscribe(l3::UPDATE, None)
                .await
                .context("cannot subscribe to cache.update")?;
            let invalidations = bus
                .subscribe(l3::INVALIDATE, None)
                .await
                .context("cannot subscribe to cache.invalidate")?;
            tasks.spawn(l3.clone().run(
                l1.clone(),
                updates,
                invalidations,
                Some(nats.reconnects()),
                shutdown.clone(),
            ));
            Some(l3)
        }
        _ => None,
    };
    let shared = l2.is_some() || l3.is_some();
    let layered = LayeredCache::new(
        l1,
        l2,
        l3,
        LayeredConfig {
            l2_required: settings.l2_required,
            l1_max_ttl: shared.then(|| Duration::from_secs(settings.l1_max_ttl_secs)),
            dictionary_prefixes: settings.dictionaries.clone(),
        },
    );
    layered.adopt_dictionaries().await;
    tasks.spawn(layered.clone().watch_l2(shutdown.clone()));
    let mut monitor = None;
    if settings.monitoring {
        let every = Duration::from_secs(settings.stats_interval_secs.max(1));
        let cache = Arc::new(layered.clone()) as Arc<dyn CacheStore>;
        let checks = CacheMonitor::new(id, settings.monitor);
        monitor = Some(checks.clone());
        tasks.spawn(report::serve_thresholds(
            checks.clone(),
            bus.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(report::run(
            id.to_owned(),
            cache,
            bus.clone(),
            checks,
            every,
            max_l1_bytes as u64,
            shutdown.clone(),
        ));
    }
    Ok((layered, monitor))
}

async fn purge_expired(l1: MemoryStore, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(PURGE_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = every.tick() => { l1.purge_expired(); }
        }
    }
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
