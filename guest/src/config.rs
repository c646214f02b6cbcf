//! Typed reads of the component's `config` table from the manifest.

use std::str::FromStr;

use serde::de::DeserializeOwned;

use crate::bindings::weir::host::config as raw;

pub use raw::{get, get_all};

/// A scalar parsed into `T`, or `default` when the key is absent or does
/// not parse.
pub fn get_or<T: FromStr>(key: &str, default: T) -> T {
    raw::get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A table or array (the host passes them as JSON text).
pub fn json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, String> {
    raw::get(key)
        .map(|v| serde_json::from_str(&v).map_err(|e| format!("config {key}: {e}")))
        .transpose()
}
