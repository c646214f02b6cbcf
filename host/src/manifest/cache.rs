//! The `[cache]` table: the settings the cache tiers are built from.

use serde::{Deserialize, Serialize};

/// Cache settings (`CACHE_*` environment variables override them).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Master switch: off means every cache call answers `unavailable`.
    pub enabled: bool,
    /// Time to live when a component gives none, in seconds.
    pub default_ttl_secs: u64,
    /// L1 bound on entries.
    pub max_entries: usize,
    /// L1 bound on bytes, in MiB.
    pub max_mb: usize,
    /// Compress L2 values above the threshold.
    pub compression: bool,
    /// Broadcast and apply cross-host invalidations (L3).
    pub distributed: bool,
    /// Publish cache statistics periodically.
    pub monitoring: bool,
    /// Largest key a component may use, in bytes.
    pub max_key_bytes: usize,
    /// Largest value a component may store, in bytes.
    pub max_value_bytes: usize,
    /// L2 codec above the threshold: `zstd`, `gzip` or `none`.
    pub codec: Codec,
    /// Compress L2 values of at least this many bytes.
    pub compress_threshold_bytes: usize,
    /// Full-key prefixes (`<namespace>:<prefix>`) that get a trained zstd
    /// dictionary shared through Redis.
    pub dictionaries: Vec<String>,
    /// Fail writes Redis did not confirm (else L1 keeps serving).
    pub l2_required: bool,
    /// Cap on L1 TTLs when other hosts share the data: the staleness bound
    /// while coherence messages cannot arrive, seconds.
    pub l1_max_ttl_secs: u64,
    /// Time limit per Redis call, milliseconds.
    pub redis_timeout_ms: u64,
    /// Publish `cache.stats` and `cache.performance` this often, seconds;
    /// the monitor checks its thresholds at the same pace.
    pub stats_interval_secs: u64,
    /// Alert thresholds of the cache monitor (`[cache.monitor]`).
    pub monitor: Thresholds,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            enabled: true,
            default_ttl_secs: 300,
            max_entries: 100_000,
            max_mb: 256,
            compression: true,
            distributed: true,
            monitoring: true,
            max_key_bytes: 512,
            max_value_bytes: 1024 * 1024,
            codec: Codec::Zstd,
            compress_threshold_bytes: 256,
            dictionaries: Vec::new(),
            l2_required: false,
            l1_max_ttl_secs: 30,
            redis_timeout_ms: 250,
            stats_interval_secs: 10,
            monitor: Thresholds::default(),
        }
    }
}

/// Which codec compresses values above the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Never compress.
    None,
    /// gzip level 6, for readers that only know gzip.
    Gzip,
    /// zstd (with a key prefix's dictionary when one is installed).
    Zstd,
}

/// Alert thresholds (the seed's names and defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Lowest acceptable hit rate.
    pub hit_rate_min: f64,
    /// Highest acceptable L2 response time (p99), seconds.
    pub response_time_max: f64,
    /// Highest acceptable L1 memory use, fraction of `cache.max_mb`.
    pub memory_usage_max: f64,
    /// Highest acceptable share of failed operations.
    pub error_rate_max: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            hit_rate_min: 0.7,
            response_time_max: 0.1,
            memory_usage_max: 0.8,
            error_rate_max: 0.05,
        }
    }
}
