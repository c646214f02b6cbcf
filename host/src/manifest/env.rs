//! The seed's environment variables, applied over the manifest.

use std::collections::HashMap;

use super::{Manifest, NatsSettings, RedisSettings};

/// The variables weir reads, captured once so tests can supply their own.
#[derive(Debug, Clone, Default)]
pub struct EnvOverrides {
    vars: HashMap<String, String>,
}

/// Every variable that overrides the manifest.
pub const VARIABLES: [&str; 8] = [
    "NATS_URL",
    "REDIS_URL",
    "CACHE_TTL",
    "CACHE_MAX_SIZE",
    "CACHE_ENABLED",
    "CACHE_COMPRESSION_ENABLED",
    "CACHE_DISTRIBUTED_ENABLED",
    "CACHE_MONITORING_ENABLED",
];

impl EnvOverrides {
    /// Reads the variables from the process environment.
    pub fn from_process() -> Self {
        Self::from_pairs(
            VARIABLES
                .iter()
                .filter_map(|v| std::env::var(v).ok().map(|x| (v.to_string(), x))),
        )
    }

    /// Uses the given pairs instead of the environment.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        EnvOverrides {
            vars: pairs.into_iter().collect(),
        }
    }

    /// No overrides at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// Applies the overrides; on error returns the variable and the problem.
    pub(super) fn apply(&self, m: &mut Manifest) -> Result<(), (String, String)> {
        for (var, value) in &self.vars {
            let value = value.trim();
            let bad = |what: &str| (var.clone(), format!("{value:?} is not {what}"));
            let flag = || match value.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(bad("true or false")),
            };
            match var.as_str() {
                // An empty URL means "not configured": the embedded default.
                "NATS_URL" => {
                    m.nats = (!value.is_empty()).then(|| NatsSettings {
                        url: value.to_owned(),
                    })
                }
                "REDIS_URL" => {
                    m.redis = (!value.is_empty()).then(|| RedisSettings {
                        url: value.to_owned(),
                    })
                }
                "CACHE_TTL" => {
                    m.cache.default_ttl_secs =
                        value.parse().map_err(|_| bad("a number of seconds"))?
                }
                "CACHE_MAX_SIZE" => {
                    m.cache.max_entries = value.parse().map_err(|_| bad("a number of entries"))?
                }
                "CACHE_ENABLED" => m.cache.enabled = flag()?,
                "CACHE_COMPRESSION_ENABLED" => m.cache.compression = flag()?,
                "CACHE_DISTRIBUTED_ENABLED" => m.cache.distributed = flag()?,
                "CACHE_MONITORING_ENABLED" => m.cache.monitoring = flag()?,
                _ => {}
            }
        }
        Ok(())
    }
}
