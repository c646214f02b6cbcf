//! `weir:host/cache`: namespaced keys, size limits and errors over a
//! [`CacheStore`](crate::cache::CacheStore).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::bindings::weir::host::cache::{Host, Layer as WitLayer, LayerStats as WitLayerStats};

use super::{Capabilities, GuestError};
use crate::cache::{CacheError, CacheStore, Layer, LayerStats};
use crate::manifest::CacheSettings;
use crate::stats::ComponentStats;
use crate::telemetry::Trace;

type Answer<T> = wasmtime::Result<Result<T, GuestError>>;

impl From<CacheError> for GuestError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::Unavailable(m) => GuestError::Unavailable(m),
            CacheError::Invalid(m) => GuestError::Invalid(m),
            CacheError::Timeout(m) => GuestError::Timeout(m),
        }
    }
}

/// The cache capability of one component: the store under its granted
/// namespace, and the limits every call is checked against.
pub struct CacheCapability {
    /// The cache, when enabled and a namespace is granted.
    store: Option<Arc<dyn CacheStore>>,
    /// The granted namespace (`grants.cache`): every key is `<namespace>:<key>`.
    namespace: Option<String>,
    /// TTL for writes that give none.
    pub default_ttl: Duration,
    /// Largest cache key, bytes.
    max_key_bytes: usize,
    /// Largest cache value, bytes.
    max_value_bytes: usize,
    /// Whether calls may reach Redis (an L2 is configured): those get a
    /// span of their own in a recorded trace.
    remote: bool,
}

impl CacheCapability {
    /// `store` under `namespace` (none: no cache), with `[cache]`'s limits.
    pub fn new(
        namespace: Option<String>,
        store: Option<Arc<dyn CacheStore>>,
        settings: &CacheSettings,
    ) -> Self {
        let remote = store
            .as_ref()
            .is_some_and(|s| s.stats().iter().any(|l| l.layer == Layer::L2));
        CacheCapability {
            remote,
            store: if namespace.is_some() { store } else { None },
            namespace,
            default_ttl: Duration::from_secs(settings.default_ttl_secs),
            max_key_bytes: settings.max_key_bytes,
            max_value_bytes: settings.max_value_bytes,
        }
    }

    /// No cache: every call is denied.
    pub fn off() -> Self {
        Self::new(None, None, &CacheSettings::default())
    }

    /// The store, when the component has one.
    pub fn store(&self) -> Option<&Arc<dyn CacheStore>> {
        self.store.as_ref()
    }

    /// `<namespace>:<key>` after checking the key.
    pub(super) fn full_key(&self, key: &str) -> Result<String, GuestError> {
        if key.is_empty() {
            return Err(GuestError::Invalid("cache key is empty".into()));
        }
        if key.len() > self.max_key_bytes {
            return Err(GuestError::Invalid(format!(
                "cache key of {} bytes exceeds the limit of {} bytes",
                key.len(),
                self.max_key_bytes
            )));
        }
        // Concatenated by hand: `format!` costs several times more, twice
        // per event for a strategy that reads and writes its state.
        let namespace = self.namespace.as_deref().unwrap_or_default();
        let mut full = String::with_capacity(namespace.len() + 1 + key.len());
        full.push_str(namespace);
        full.push(':');
        full.push_str(key);
        Ok(full)
    }

    pub(super) fn check_value(&self, value: &[u8]) -> Result<(), GuestError> {
        if value.len() > self.max_value_bytes {
            return Err(GuestError::Invalid(format!(
                "cache value of {} bytes exceeds the limit of {} bytes",
                value.len(),
                self.max_value_bytes
            )));
        }
        Ok(())
    }

    fn ttl(&self, ttl_ms: Option<u64>) -> Result<Duration, GuestError> {
        match ttl_ms {
            None => Ok(self.default_ttl),
            Some(0) => Err(GuestError::Invalid("ttl-ms must be at least 1".into())),
            Some(ms) => Ok(Duration::from_millis(ms)),
        }
    }
}

impl Capabilities {
    /// The store and the component's cache capability, after spending a
    /// host call and checking the namespace grant. Borrowed, not cloned:
    /// both are shared by every instance of the component, and a clone per
    /// call would make each cache call write their reference counts, lines
    /// that the component's other instances write too.
    pub(super) fn cache(&mut self) -> Result<(&dyn CacheStore, &CacheCapability), GuestError> {
        self.spend()?;
        let ctx = &*self.ctx;
        let cache = &ctx.cache;
        if cache.namespace.is_none() {
            ComponentStats::bump(&ctx.stats.denied);
            return Err(GuestError::Denied(format!(
                "component {} has no cache namespace: grant one with grants.cache in the manifest",
                ctx.name
            )));
        }
        match &cache.store {
            Some(store) => Ok((&**store, cache)),
            None => Err(GuestError::Unavailable(
                "the cache is disabled on this host (cache.enabled = false)".into(),
            )),
        }
    }
}

impl Capabilities {
    /// The span of a cache call, when it may reach Redis and the trace is
    /// recorded.
    fn cache_span(&self, operation: &'static str) -> Trace {
        if self.ctx.cache.remote {
            self.trace.cache(operation)
        } else {
            Trace::default()
        }
    }
}

impl Host for Capabilities {
    async fn get(&mut self, key: String) -> Answer<Option<Vec<u8>>> {
        Ok(async {
            let span = self.cache_span("get");
            let (store, cache) = self.cache()?;
            let key = cache.full_key(&key)?;
            let value = store.get(&key).await;
            span.end_with(&value);
            Ok(value?.map(|b| b.to_vec()))
        }
        .await)
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Answer<()> {
        Ok(async {
            let span = self.cache_span("set");
            let (store, cache) = self.cache()?;
            let key = cache.full_key(&key)?;
            cache.check_value(&value)?;
            let ttl = cache.ttl(ttl_ms)?;
            let done = store.set(&key, Bytes::from(value), ttl).await;
            span.end_with(&done);
            Ok(done?)
        }
        .await)
    }

    async fn delete(&mut self, key: String) -> Answer<bool> {
        Ok(async {
            let span = self.cache_span("delete");
            let (store, cache) = self.cache()?;
            let key = cache.full_key(&key)?;
            let done = store.delete(&key).await;
            span.end_with(&done);
            Ok(done?)
        }
        .await)
    }

    async fn get_many(&mut self, keys: Vec<String>) -> Answer<Vec<Option<Vec<u8>>>> {
        Ok(async {
            let span = self.cache_span("mget");
            let (store, cache) = self.cache()?;
            let keys = keys
                .iter()
                .map(|k| cache.full_key(k))
                .collect::<Result<Vec<_>, _>>()?;
            let values = store.get_many(&keys).await;
            span.end_with(&values);
            Ok(values?.into_iter().map(|v| v.map(|b| b.to_vec())).collect())
        }
        .await)
    }

    async fn set_many(
        &mut self,
        entries: Vec<(String, Vec<u8>)>,
        ttl_ms: Option<u64>,
    ) -> Answer<()> {
        Ok(async {
            let span = self.cache_span("mset");
            let (store, cache) = self.cache()?;
            let ttl = cache.ttl(ttl_ms)?;
            let mut full = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                cache.check_value(&v)?;
                full.push((cache.full_key(&k)?, Bytes::from(v)));
            }
            let done = store.set_many(full, ttl).await;
            span.end_with(&done);
            Ok(done?)
        }
        .await)
    }

    async fn invalidate_pattern(&mut self, pattern: String) -> Answer<u64> {
        Ok(async {
            let span = self.cache_span("invalidate");
            let (store, cache) = self.cache()?;
            // The namespace is plain text (letters, digits, `-_.`), so the
            // prefix cannot widen the pattern beyond the namespace.
            let pattern = cache.full_key(&pattern)?;
            let done = store.invalidate_pattern(&pattern).await;
            span.end_with(&done);
            Ok(done?)
        }
        .await)
    }

    async fn stats(&mut self) -> wasmtime::Result<Vec<WitLayerStats>> {
        let store = self.ctx.cache.store.as_deref();
        Ok(store
            .map(|s| s.stats())
            .unwrap_or_default()
            .into_iter()
            .map(to_wit)
            .collect())
    }
}

fn to_wit(s: LayerStats) -> WitLayerStats {
    WitLayerStats {
        layer: match s.layer {
            Layer::L1 => WitLayer::L1,
            Layer::L2 => WitLayer::L2,
            Layer::L3 => WitLayer::L3,
        },
        hits: s.hits,
        misses: s.misses,
        sets: s.sets,
        deletes: s.deletes,
        errors: s.errors,
        evictions: s.evictions,
        entries: s.entries,
        bytes: s.bytes,
        bytes_saved: s.bytes_saved,
        latency_p50_ns: s.latency_p50_ns,
        latency_p99_ns: s.latency_p99_ns,
    }
}

/// Adds `weir:host/cache` to a linker.
pub(super) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut Capabilities,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    super::bindings::weir::host::cache::add_to_linker::<T, HasSelf<Capabilities>>(linker, get)?;
    Ok(())
}
