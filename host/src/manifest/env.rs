//! The seed's environment variables, applied over the manifest.

use std::collections::HashMap;

use super::{Manifest, NatsSettings, RedisSettings};

/// The variables weir reads, captured once so tests can supply their own.
#[derive(Debug, Clone, Default)]
pub struct EnvOverrides {
    vars: HashMap<String, String>,
}

/// Every variable that overrides the manifest.
pub const VARIABLES: [&str; 13] = [
    "NATS_URL",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "NATS_MAX_RECONNECT_ATTEMPTS",
    "NATS_RECONNECT_TIME_WAIT",
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
                    m.nats = match (value.is_empty(), m.nats.take()) {
                        (true, _) => None,
                        (false, Some(mut n)) => {
                            n.url = value.to_owned();
                            Some(n)
                        }
                        (false, None) => Some(NatsSettings::with_url(value)),
                    }
                }
                "NATS_USER"
                | "NATS_PASSWORD"
                | "NATS_TOKEN"
                | "NATS_MAX_RECONNECT_ATTEMPTS"
                | "NATS_RECONNECT_TIME_WAIT" => {}
                "REDIS_URL" => {
                    m.redis = (!value.is_empty()).then(|| RedisSettings::with_url(value))
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
        // NATS credentials and reconnect settings apply once a URL is known.
        if let Some(n) = m.nats.as_mut() {
            let get = |k: &str| self.vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
            let bad =
                |k: &str, what: &str| (k.to_owned(), format!("{:?} is not {what}", self.vars[k]));
            if let Some(v) = get("NATS_USER") {
                n.user = Some(v.to_owned());
            }
            if let Some(v) = get("NATS_PASSWORD") {
                n.password = Some(v.to_owned());
            }
            if let Some(v) = get("NATS_TOKEN") {
                n.token = Some(v.to_owned());
            }
            if let Some(v) = get("NATS_MAX_RECONNECT_ATTEMPTS") {
                let k = "NATS_MAX_RECONNECT_ATTEMPTS";
                n.max_reconnects = Some(v.parse().map_err(|_| bad(k, "a whole number"))?);
            }
            if let Some(v) = get("NATS_RECONNECT_TIME_WAIT") {
                let secs: f64 = v
                    .parse()
                    .map_err(|_| bad("NATS_RECONNECT_TIME_WAIT", "a number of seconds"))?;
                n.reconnect_wait_ms = (secs * 1000.0) as u64;
            }
        }
        Ok(())
    }
}
