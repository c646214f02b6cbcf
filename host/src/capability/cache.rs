//! `weir:host/cache`: namespaced keys, size limits and errors over a
//! [`CacheStore`](crate::cache::CacheStore).

use std::time::Duration;

use bytes::Bytes;

use super::bindings::weir::host::cache::{Host, Layer as WitLayer, LayerStats as WitLayerStats};
use super::{Capabilities, ComponentContext, GuestError};
use crate::cache::{CacheError, CacheStore, Layer, LayerStats};
use crate::stats::ComponentStats;

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

impl Capabilities {
    /// The store and the component's context, after spending a host call
    /// and checking the namespace grant. Borrowed, not cloned: both are
    /// shared by every instance of the component, and a clone per call
    /// would make each cache call write their reference counts, lines
    /// that the component's other instances write too.
    pub(super) fn cache(&mut self) -> Result<(&dyn CacheStore, &ComponentContext), GuestError> {
        self.spend()?;
        let ctx = &*self.ctx;
        if ctx.grants.cache.is_none() {
            ComponentStats::bump(&ctx.stats.denied);
            return Err(GuestError::Denied(format!(
                "component {} has no cache namespace: grant one with grants.cache in the manifest",
                ctx.name
            )));
        }
        match &ctx.cache {
            Some(store) => Ok((&**store, ctx)),
            None => Err(GuestError::Unavailable(
                "the cache is disabled on this host (cache.enabled = false)".into(),
            )),
        }
    }
}

impl ComponentContext {
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
        let namespace = self.grants.cache.as_deref().unwrap_or_default();
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

impl Host for Capabilities {
    async fn get(&mut self, key: String) -> Answer<Option<Vec<u8>>> {
        Ok(async {
            let (store, ctx) = self.cache()?;
            let key = ctx.full_key(&key)?;
            Ok(store.get(&key).await?.map(|b| b.to_vec()))
        }
        .await)
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Answer<()> {
        Ok(async {
            let (store, ctx) = self.cache()?;
            let key = ctx.full_key(&key)?;
            ctx.check_value(&value)?;
            let ttl = ctx.ttl(ttl_ms)?;
            Ok(store.set(&key, Bytes::from(value), ttl).await?)
        }
        .await)
    }

    async fn delete(&mut self, key: String) -> Answer<bool> {
        Ok(async {
            let (store, ctx) = self.cache()?;
            let key = ctx.full_key(&key)?;
            Ok(store.delete(&key).await?)
        }
        .await)
    }

    async fn get_many(&mut self, keys: Vec<String>) -> Answer<Vec<Option<Vec<u8>>>> {
        Ok(async {
            let (store, ctx) = self.cache()?;
            let keys = keys
                .iter()
                .map(|k| ctx.full_key(k))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(store
                .get_many(&keys)
                .await?
                .into_iter()
                .map(|v| v.map(|b| b.to_vec()))
                .collect())
        }
        .await)
    }

    async fn set_many(
        &mut self,
        entries: Vec<(String, Vec<u8>)>,
        ttl_ms: Option<u64>,
    ) -> Answer<()> {
        Ok(async {
            let (store, ctx) = self.cache()?;
            let ttl = ctx.ttl(ttl_ms)?;
            let mut full = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                ctx.check_value(&v)?;
                full.push((ctx.full_key(&k)?, Bytes::from(v)));
            }
            Ok(store.set_many(full, ttl).await?)
        }
        .await)
    }

    async fn invalidate_pattern(&mut self, pattern: String) -> Answer<u64> {
        Ok(async {
            let (store, ctx) = self.cache()?;
            // The namespace is plain text (letters, digits, `-_.`), so the
            // prefix cannot widen the pattern beyond the namespace.
            let pattern = ctx.full_key(&pattern)?;
            Ok(store.invalidate_pattern(&pattern).await?)
        }
        .await)
    }

    async fn stats(&mut self) -> wasmtime::Result<Vec<WitLayerStats>> {
        let store = self.ctx.cache.as_deref();
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
