//! The cache components see: L1 in front of L2 (Redis), kept coherent
//! across hosts by L3 (NATS), behind one [`CacheStore`].
//!
//! - get: L1, else L2 (one read per key however many instances miss at
//!   once: single flight), filling L1 with the remaining TTL — unless an
//!   invalidation arrived while Redis was read (the value may be stale).
//! - set: L1, then L2; the call succeeds only once Redis confirmed (when
//!   `l2_required`; else an L1-only write is logged), then a coherence
//!   message. L1 goes first so that a peer's message about a later Redis
//!   write always lands after it. delete: L2, L1, coherence message.
//! - Redis down: reads are served from L1 (an L1 miss is a miss), writes
//!   keep L1 current and report `unavailable` only where L2 is required;
//!   errors are counted and a circuit breaker probes Redis back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use super::codec::{dictionary_id, train_dictionary};
use super::l2::RedisStore;
use super::l3::Coherence;
use super::{CacheError, CacheStore, LayerStats, MemoryStore};
use crate::shutdown::Shutdown;

type Flight = Shared<BoxFuture<'static, Result<Option<(Bytes, Option<Duration>)>, CacheError>>>;

/// How often the L2 health watch looks at the breaker.
const HEALTH_TICK: Duration = Duration::from_millis(100);
/// Samples collected per prefix before a dictionary is trained.
const DICT_SAMPLES: usize = 256;
/// Dictionary size.
const DICT_BYTES: usize = 16 * 1024;

/// L1 + optional L2 + optional L3.
#[derive(Clone)]
pub struct LayeredCache {
    inner: Arc<Inner>,
}

struct Inner {
    l1: MemoryStore,
    l2: Option<RedisStore>,
    l3: Option<Coherence>,
    /// Writes fail when Redis cannot confirm them.
    l2_required: bool,
    /// Longest an entry stays in L1 when other hosts can change it.
    l1_max_ttl: Option<Duration>,
    /// L2 reads in progress, by key.
    flights: Mutex<HashMap<String, Flight>>,
    /// Key prefixes that get a trained dictionary, with samples so far.
    training: Mutex<Vec<(String, Vec<Vec<u8>>)>>,
    /// Writes Redis did not take (kept in L1 only), for the warning.
    l1_only_writes: AtomicU64,
}

/// How the layers are put together.
#[derive(Debug, Clone)]
pub struct LayeredConfig {
    /// Fail writes Redis did not confirm.
    pub l2_required: bool,
    /// Cap on L1 TTLs (None: no cap).
    pub l1_max_ttl: Option<Duration>,
    /// Key prefixes (full keys, e.g. `md:orderbook:`) to train zstd dictionaries for.
    pub dictionary_prefixes: Vec<String>,
}

impl LayeredCache {
    /// Composes the layers.
    pub fn new(
        l1: MemoryStore,
        l2: Option<RedisStore>,
        l3: Option<Coherence>,
        config: LayeredConfig,
    ) -> Self {
        let training = config
            .dictionary_prefixes
            .into_iter()
            .map(|p| (p, Vec::new()))
            .collect();
        LayeredCache {
            inner: Arc::new(Inner {
                l1,
                l2,
                l3,
                l2_required: config.l2_required,
                l1_max_ttl: config.l1_max_ttl,
                flights: Mutex::default(),
                training: Mutex::new(training),
                l1_only_writes: AtomicU64::new(0),
            }),
        }
    }

    /// The L1 layer.
    pub fn l1(&self) -> &MemoryStore {
        &self.inner.l1
    }

    /// The L2 layer, when configured.
    pub fn l2(&self) -> Option<&RedisStore> {
        self.inner.l2.as_ref()
    }

    /// Installs dictionaries other hosts already trained for our prefixes.
    pub async fn adopt_dictionaries(&self) {
        let Some(l2) = &self.inner.l2 else { return };
        let prefixes: Vec<String> = self
            .inner
            .training
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(p, _)| p.clone())
            .collect();
        for p in prefixes {
            match l2.adopt_dictionary(&p).await {
                Ok(true) => {
                    tracing::info!(prefix = %p, "using the shared zstd dictionary from Redis");
                    self.inner
                        .training
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|(x, _)| *x != p);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(prefix = %p, "cannot load a shared dictionary: {e}"),
            }
        }
    }

    fn l1_ttl(&self, ttl: Duration) -> Duration {
        self.inner.l1_max_ttl.map_or(ttl, |m| ttl.min(m))
    }

    /// Collects samples for dictionary prefixes; trains and shares a
    /// dictionary once enough arrived.
    fn sample(&self, key: &str, value: &Bytes) {
        let Some(l2) = &self.inner.l2 else { return };
        let ready = {
            let mut t = self
                .inner
                .training
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let Some(pos) = t.iter().position(|(p, _)| key.starts_with(p.as_str())) else {
                return;
            };
            t[pos].1.push(value.to_vec());
            if t[pos].1.len() < DICT_SAMPLES {
                return;
            }
            t.remove(pos)
        };
        let l2 = l2.clone();
        tokio::spawn(async move {
            let (prefix, samples) = ready;
            let trained =
                tokio::task::spawn_blocking(move || train_dictionary(&samples, DICT_BYTES)).await;
            let raw = match trained {
                Ok(Ok(raw)) => raw,
                Ok(Err(e)) => return tracing::warn!(%prefix, "dictionary training failed: {e}"),
                Err(e) => return tracing::warn!(%prefix, "dictionary training panicked: {e}"),
            };
            let id = dictionary_id(&raw);
            if let Err(e) = l2.codecs().install_dictionary(id, &raw) {
                return tracing::warn!(%prefix, "dictionary not usable: {e}");
            }
            match l2.publish_dictionary(&prefix, id, &raw).await {
                Ok(()) => {
                    l2.codecs().use_dictionary_for(&prefix, id);
                    tracing::info!(%prefix, id = format!("{id:08x}"), bytes = raw.len(), "trained and shared a zstd dictionary");
                }
                Err(e) => tracing::warn!(%prefix, "dictionary not shared, so not used: {e}"),
            }
        });
    }

    /// One L2 read per key at a time; concurrent readers share its result.
    async fn read_l2(
        &self,
        l2: &RedisStore,
        key: &str,
    ) -> Result<Option<(Bytes, Option<Duration>)>, CacheError> {
        let flight = {
            let mut flights = self.inner.flights.lock().unwrap_or_else(|e| e.into_inner());
            match flights.get(key) {
                Some(f) => f.clone(),
                None => {
                    let (l2, k) = (l2.clone(), key.to_owned());
                    let f = async move { l2.get(&k).await }.boxed().shared();
                    flights.insert(key.to_owned(), f.clone());
                    f
                }
            }
        };
        let result = flight.clone().await;
        let mut flights = self.inner.flights.lock().unwrap_or_else(|e| e.into_inner());
        if flights.get(key).is_some_and(|f| f.ptr_eq(&flight)) {
            flights.remove(key);
        }
        result
    }

    /// Watches Redis's health without waiting for traffic (see
    /// [`RedisStore::check_health`]); once it answers again, adopts the
    /// dictionaries other hosts trained meanwhile. Runs until shutdown.
    pub async fn watch_l2(self, shutdown: Shutdown) {
        let Some(l2) = self.inner.l2.clone() else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(HEALTH_TICK) => {}
            }
            if l2.check_health().await {
                self.adopt_dictionaries().await;
            }
        }
    }

    async fn write(&self, entries: Vec<(String, Bytes)>, ttl: Duration) -> Result<(), CacheError> {
        // L1 first: a peer's coherence message about a later write to
        // Redis is sent after that write, so it arrives after this and
        // drops the value here; written after Redis, this value could land
        // after such a message and outlive the value Redis holds.
        for (k, v) in &entries {
            self.inner.l1.set_now(k, v.clone(), self.l1_ttl(ttl))?;
        }
        if let Some(l2) = &self.inner.l2 {
            match l2.set_many(&entries, ttl).await {
                Ok(()) => {}
                Err(e) if self.inner.l2_required => {
                    // Not written: nothing of it may stay in L1.
                    for (k, _) in &entries {
                        self.inner.l1.delete_now(k);
                    }
                    return Err(e);
                }
                Err(e) => {
                    // Never silent: other hosts will not see this value.
                    let n = self.inner.l1_only_writes.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        tracing::warn!(
                            writes = n,
                            "cache write kept in this host's L1 only (other hosts will not see it): {e}"
                        );
                    }
                }
            }
        }
        for (k, v) in &entries {
            self.sample(k, v);
        }
        if let Some(l3) = &self.inner.l3 {
            let keys: Vec<String> = entries.into_iter().map(|(k, _)| k).collect();
            l3.updated(&keys, ttl.as_secs()).await;
        }
        Ok(())
    }
}

#[async_trait]
impl CacheStore for LayeredCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        if let Some(v) = self.inner.l1.get_now(key) {
            return Ok(Some(v));
        }
        let Some(l2) = &self.inner.l2 else {
            return Ok(None);
        };
        let generation = self.inner.l1.generation();
        match self.read_l2(l2, key).await {
            Ok(Some((v, ttl))) => {
                // An entry without a TTL in Redis still ages out of L1.
                let ttl = self.l1_ttl(ttl.unwrap_or(Duration::from_secs(60)));
                self.inner.l1.fill(key, v.clone(), ttl, generation);
                Ok(Some(v))
            }
            Ok(None) => Ok(None),
            // Reads never fail because Redis is away: L1 missed, so it is a miss.
            Err(_) => Ok(None),
        }
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, CacheError> {
        let mut out: Vec<Option<Bytes>> = keys.iter().map(|k| self.inner.l1.get_now(k)).collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
        if let (Some(l2), false) = (&self.inner.l2, missing.is_empty()) {
            let wanted: Vec<String> = missing.iter().map(|&i| keys[i].clone()).collect();
            let generation = self.inner.l1.generation();
            if let Ok(found) = l2.get_many(&wanted).await {
                for (&i, v) in missing.iter().zip(found) {
                    if let Some(v) = &v {
                        let ttl = self.l1_ttl(Duration::from_secs(60));
                        self.inner.l1.fill(&keys[i], v.clone(), ttl, generation);
                    }
                    out[i] = v;
                }
            }
        }
        Ok(out)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), CacheError> {
        if self.inner.l2.is_none() && self.inner.l3.is_none() {
            // L1 alone: what `write` would do, without building its list.
            return self.inner.l1.set_now(key, value, self.l1_ttl(ttl));
        }
        self.write(vec![(key.to_owned(), value)], ttl).await
    }

    async fn set_many(
        &self,
        entries: Vec<(String, Bytes)>,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        self.write(entries, ttl).await
    }

    async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        if let Some(l2) = &self.inner.l2
            && let Err(e) = l2.delete(&[key.to_owned()]).await
            && self.inner.l2_required
        {
            return Err(e);
        }
        let was = self.inner.l1.delete_now(key);
        if let Some(l3) = &self.inner.l3 {
            l3.invalidated(key).await;
        }
        Ok(was)
    }

    async fn invalidate_pattern(&self, pattern: &str) -> Result<u64, CacheError> {
        if let Some(l2) = &self.inner.l2
            && let Err(e) = l2.invalidate_pattern(pattern).await
            && self.inner.l2_required
        {
            return Err(e);
        }
        let n = self.inner.l1.invalidate_pattern_now(pattern);
        if let Some(l3) = &self.inner.l3 {
            l3.invalidated_pattern(pattern).await;
        }
        Ok(n)
    }

    async fn increment(&self, key: &str, delta: u64, ttl: Duration) -> Result<u64, CacheError> {
        let Some(l2) = &self.inner.l2 else {
            // No Redis: this host's count (peers drop their own copies).
            let n = self.inner.l1.increment_now(key, delta, self.l1_ttl(ttl))?;
            if let Some(l3) = &self.inner.l3 {
                l3.updated(&[key.to_owned()], ttl.as_secs()).await;
            }
            return Ok(n);
        };
        // Redis counts for every host. Without it the count cannot be
        // shared, so the call fails even where writes may stay in L1.
        let generation = self.inner.l1.generation();
        let (n, left) = l2.increment(key, delta, ttl).await?;
        // The new value replaces L1's unless an invalidation came in
        // meanwhile: then a peer counted after us and its value wins.
        let l1_ttl = self.l1_ttl(left.unwrap_or(ttl));
        let kept = self
            .inner
            .l1
            .fill(key, Bytes::from(n.to_string()), l1_ttl, generation);
        if !kept {
            self.inner.l1.delete_now(key);
        }
        if let Some(l3) = &self.inner.l3 {
            l3.updated(&[key.to_owned()], ttl.as_secs()).await;
        }
        Ok(n)
    }

    /// With Redis, pages through Redis (`SCAN`), then through the keys only
    /// L1 holds (writes Redis did not take); the top bit of the cursor says
    /// which phase it is in. Without Redis, pages through L1.
    async fn scan(
        &self,
        pattern: &str,
        cursor: u64,
        count: usize,
    ) -> Result<(Vec<String>, Option<u64>), CacheError> {
        const L1_PHASE: u64 = 1 << 63;
        let l1 = &self.inner.l1;
        let Some(l2) = &self.inner.l2 else {
            return Ok(l1.scan_now(pattern, cursor & !L1_PHASE, count));
        };
        if cursor & L1_PHASE == 0 {
            let (keys, next) = l2.scan(pattern, cursor, count).await?;
            // SCAN cursors stay far below 2^63 (they index Redis's table).
            let next = if next == 0 {
                L1_PHASE
            } else {
                next & !L1_PHASE
            };
            return Ok((keys, Some(next)));
        }
        let (keys, next) = l1.scan_now(pattern, cursor & !L1_PHASE, count);
        let in_l2 = l2.exist(&keys).await?;
        let only_l1 = keys
            .into_iter()
            .zip(in_l2)
            .filter_map(|(k, there)| (!there).then_some(k))
            .collect();
        Ok((only_l1, next.map(|n| n | L1_PHASE)))
    }

    fn stats(&self) -> Vec<LayerStats> {
        let mut out = vec![self.inner.l1.layer_stats()];
        out.extend(self.inner.l2.as_ref().map(RedisStore::layer_stats));
        out.extend(self.inner.l3.as_ref().map(Coherence::layer_stats));
        out
    }
}
