//! The cache behind the `weir:host/cache` interface.
//!
//! Layers implement [`CacheStore`]; the WIT glue in `capability::cache` is
//! written once against it. L1 is [`MemoryStore`]; Redis (L2) and NATS
//! coherence (L3) compose behind the same trait.

mod breaker;
pub mod codec;
mod counter;
pub mod glob;
mod l1;
pub mod l2;
pub mod l3;
mod layered;
pub mod monitor;
pub mod report;
mod service;
mod sketch;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use thiserror::Error;

pub use l1::{MemoryStore, MemoryStoreConfig};
pub use l2::RedisStore;
pub use l3::Coherence;
pub use layered::{LayeredCache, LayeredConfig};
pub use service::{CacheService, start};

/// Why a cache operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CacheError {
    /// A layer the write must reach is down or not configured.
    #[error("{0}")]
    Unavailable(String),
    /// Key, value or pattern is unacceptable.
    #[error("{0}")]
    Invalid(String),
    /// The layer did not answer in time.
    #[error("{0}")]
    Timeout(String),
}

/// Which layer a [`LayerStats`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// In-process memory.
    L1,
    /// Redis.
    L2,
    /// Cross-host coherence over NATS.
    L3,
}

impl Layer {
    /// `l1`, `l2` or `l3`: its name in reports, metrics and status.
    pub fn name(self) -> &'static str {
        match self {
            Layer::L1 => "l1",
            Layer::L2 => "l2",
            Layer::L3 => "l3",
        }
    }
}

/// Counters of one layer since start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerStats {
    /// Which layer.
    pub layer: Layer,
    /// Reads that found a value.
    pub hits: u64,
    /// Reads that found nothing.
    pub misses: u64,
    /// Writes confirmed.
    pub sets: u64,
    /// Keys deleted or invalidated.
    pub deletes: u64,
    /// Failed operations.
    pub errors: u64,
    /// Entries dropped to stay within bounds (not counting expiry).
    pub evictions: u64,
    /// Entries held now.
    pub entries: u64,
    /// Bytes held now.
    pub bytes: u64,
    /// Bytes saved by compression.
    pub bytes_saved: u64,
    /// Median latency (ns), 0 when not measured.
    pub latency_p50_ns: u64,
    /// 99th percentile latency (ns), 0 when not measured.
    pub latency_p99_ns: u64,
}

impl LayerStats {
    /// All-zero figures for a layer.
    pub fn empty(layer: Layer) -> Self {
        LayerStats {
            layer,
            hits: 0,
            misses: 0,
            sets: 0,
            deletes: 0,
            errors: 0,
            evictions: 0,
            entries: 0,
            bytes: 0,
            bytes_saved: 0,
            latency_p50_ns: 0,
            latency_p99_ns: 0,
        }
    }

    /// Hits over reads, 0 when nothing was read.
    pub fn hit_rate(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 {
            0.0
        } else {
            self.hits as f64 / reads as f64
        }
    }
}

/// What components saw over all layers: (reads, hits). Reads are L1's; an
/// L1 miss that L2 answered is a hit.
pub fn reads_and_hits(layers: &[LayerStats]) -> (u64, u64) {
    let of = |layer: Layer| layers.iter().find(|l| l.layer == layer);
    let reads = of(Layer::L1).map_or(0, |l| l.hits + l.misses);
    let hits = of(Layer::L1).map_or(0, |l| l.hits) + of(Layer::L2).map_or(0, |l| l.hits);
    (reads, hits.min(reads))
}

/// Hits over reads; `None` without reads.
pub fn hit_ratio(reads: u64, hits: u64) -> Option<f64> {
    (reads > 0).then(|| hits.min(reads) as f64 / reads as f64)
}

/// L1's bytes as a fraction of its budget (0 without a budget or an L1).
pub fn memory_usage(layers: &[LayerStats], max_l1_bytes: u64) -> f64 {
    match layers.iter().find(|l| l.layer == Layer::L1) {
        Some(l) if max_l1_bytes > 0 => l.bytes as f64 / max_l1_bytes as f64,
        _ => 0.0,
    }
}

/// A key/value store with TTLs: one cache layer, or several composed.
///
/// Keys arrive already namespaced; implementations do not check grants.
#[async_trait]
pub trait CacheStore: Send + Sync + 'static {
    /// Reads a live value.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError>;
    /// Writes a value that lives for `ttl`.
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), CacheError>;
    /// Removes a key; whether it was present.
    async fn delete(&self, key: &str) -> Result<bool, CacheError>;
    /// Reads several keys, one answer per key in order.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, CacheError> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.get(k).await?);
        }
        Ok(out)
    }
    /// Writes several values with one TTL.
    async fn set_many(
        &self,
        entries: Vec<(String, Bytes)>,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        for (k, v) in entries {
            self.set(&k, v, ttl).await?;
        }
        Ok(())
    }
    /// Removes every key matching a Redis-style glob; how many were removed.
    async fn invalidate_pattern(&self, pattern: &str) -> Result<u64, CacheError>;
    /// Adds `delta` to the decimal counter at `key` (absent: 0) atomically
    /// and returns the new value. A new counter lives for `ttl`; an
    /// existing one keeps its TTL.
    async fn increment(&self, key: &str, delta: u64, ttl: Duration) -> Result<u64, CacheError>;
    /// One page of live keys matching a glob, starting at `cursor` (0 for
    /// the first page): about `count` keys and the next page's cursor,
    /// `None` after the last page. A key present through the whole listing
    /// is returned at least once (like Redis `SCAN`, possibly twice).
    async fn scan(
        &self,
        pattern: &str,
        cursor: u64,
        count: usize,
    ) -> Result<(Vec<String>, Option<u64>), CacheError>;
    /// Figures per layer, L1 first.
    fn stats(&self) -> Vec<LayerStats>;
}
