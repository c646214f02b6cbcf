//! Typed helpers over `weir:host/cache`: JSON values, TTLs as
//! [`Duration`]s, batches and patterns. Keys are inside the component's
//! granted namespace, as with the raw interface.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::weir::host::cache as raw;
use crate::{Error, HandleError, reject};

pub use raw::{Layer, LayerStats, delete, get, invalidate_pattern, stats};

fn ttl_ms(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1))
}

/// Stores bytes; `None` keeps the host's default TTL.
pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), Error> {
    raw::set(key, value, ttl_ms(ttl))
}

/// Reads a JSON value; a value that does not decode rejects the message
/// (it was written by something that disagrees on its shape).
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, HandleError> {
    match raw::get(key)? {
        None => Ok(None),
        Some(bytes) => crate::events::from_json(&bytes)
            .map(Some)
            .map_err(|e| reject(format!("cache value {key} is not the JSON expected: {e}"))),
    }
}

/// Stores a value as JSON.
pub fn set_json<T: Serialize + ?Sized>(
    key: &str,
    value: &T,
    ttl: Option<Duration>,
) -> Result<(), HandleError> {
    let bytes =
        serde_json::to_vec(value).map_err(|e| reject(format!("cannot encode {key}: {e}")))?;
    Ok(set(key, &bytes, ttl)?)
}

/// Reads several JSON values at once, one answer per key, in order.
pub fn get_many_json<T: DeserializeOwned>(keys: &[String]) -> Result<Vec<Option<T>>, HandleError> {
    raw::get_many(keys)?
        .into_iter()
        .zip(keys)
        .map(|(v, key)| match v {
            None => Ok(None),
            Some(bytes) => crate::events::from_json(&bytes)
                .map(Some)
                .map_err(|e| reject(format!("cache value {key} is not the JSON expected: {e}"))),
        })
        .collect()
}

/// Stores several values as JSON with one TTL, pipelined by the host.
pub fn set_many_json<T: Serialize>(
    entries: &[(String, T)],
    ttl: Option<Duration>,
) -> Result<(), HandleError> {
    let encoded = entries
        .iter()
        .map(|(k, v)| {
            serde_json::to_vec(v)
                .map(|b| (k.clone(), b))
                .map_err(|e| reject(format!("cannot encode {k}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(raw::set_many(&encoded, ttl_ms(ttl))?)
}
