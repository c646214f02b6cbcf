//! Starting the cache of a manifest: composing the layers and owning
//! their housekeeping tasks.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;

use super::codec::{Codec, Codecs};
use super::monitor::CacheMonitor;
use super::{
    CacheStore, Coherence, LayeredCache, LayeredConfig, MemoryStore, MemoryStoreConfig, RedisStore,
    l3, report,
};
use crate::bus::{Bus, NatsBus};
use crate::manifest::{CacheSettings, Manifest, RedisSettings};
use crate::shutdown::Shutdown;

/// How often expired L1 entries are swept.
const PURGE_INTERVAL: Duration = Duration::from_secs(1);

/// The cache a host runs, with what observability reads of it.
pub struct CacheService {
    /// What components use, when the cache is enabled.
    pub store: Option<Arc<dyn CacheStore>>,
    /// The Redis layer, for readiness and the dashboard.
    pub redis: Option<RedisStore>,
    /// Threshold checks, when monitoring is on.
    pub monitor: Option<CacheMonitor>,
}

impl CacheService {
    /// No cache (`cache.enabled = false`).
    pub fn disabled() -> Self {
        CacheService {
            store: None,
            redis: None,
            monitor: None,
        }
    }
}

/// Starts the cache of a manifest: L1, plus L2 when Redis is configured,
/// plus L3 when the cache is distributed and the bus is NATS; with its
/// housekeeping tasks (expiry sweep, Redis health, reports), which stop on
/// `shutdown`.
pub async fn start(
    manifest: &Manifest,
    id: &str,
    bus: &Arc<dyn Bus>,
    nats: Option<&NatsBus>,
    shutdown: &Shutdown,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<CacheService> {
    if !manifest.cache.enabled {
        return Ok(CacheService::disabled());
    }
    let (layered, monitor) = layers(
        &manifest.cache,
        manifest.redis.as_ref(),
        Node { id, bus, nats },
        shutdown,
        tasks,
    )
    .await?;
    let redis = layered.l2().cloned();
    Ok(CacheService {
        store: Some(Arc::new(layered) as Arc<dyn CacheStore>),
        redis,
        monitor,
    })
}

/// Who this host is on the bus, for coherence and reports.
struct Node<'a> {
    id: &'a str,
    bus: &'a Arc<dyn Bus>,
    nats: Option<&'a NatsBus>,
}

async fn layers(
    settings: &CacheSettings,
    redis: Option<&RedisSettings>,
    Node { id, bus, nats }: Node<'_>,
    shutdown: &Shutdown,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<(LayeredCache, Option<CacheMonitor>)> {
    let max_l1_bytes = settings.max_mb * 1024 * 1024;
    let l1 = MemoryStore::new(MemoryStoreConfig {
        max_entries: settings.max_entries,
        max_bytes: max_l1_bytes,
    });
    tasks.spawn(purge_expired(l1.clone(), shutdown.clone()));
    let l2 = match redis {
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
            let codecs = Arc::new(codecs);
            Some(if redis.cluster.is_empty() {
                RedisStore::new(&redis.url, codecs, timeout)?
            } else {
                RedisStore::cluster(&redis.cluster, codecs, timeout)?
            })
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

async fn purge_expired(l1: MemoryStore, shutdown: Shutdown) {
    let mut every = tokio::time::interval(PURGE_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = every.tick() => { l1.purge_expired(); }
        }
    }
}
