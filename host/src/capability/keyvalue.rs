//! `wasi:keyvalue@0.2.0-draft` (store, atomics, batch) over weir's cache,
//! for wasmCloud components: a bucket is a sub-namespace of the component's
//! granted cache namespace, so its values get L1, L2 (Redis, compressed),
//! L3 coherence, the size limits and the stats of `weir:host/cache`.
//!
//! Bucket `b`, key `k` is cache key `<namespace>:b:k`: a weir component
//! granted the same namespace reads it as `b:k`. `open("")` opens bucket
//! `default`. Values live for the cache's default TTL, like any cache value.

use bytes::Bytes;
use wasmtime::component::Resource;

use super::bindings::wasi::keyvalue::store::{Error as KvError, KeyResponse};
use super::bindings::wasi::keyvalue::{atomics, batch, store};
use super::{CacheCapability, Capabilities, GuestError, describe};
use crate::cache::CacheStore;

type Answer<T> = wasmtime::Result<Result<T, KvError>>;

/// Keys `list-keys` aims to return per page.
const PAGE: usize = 500;
/// Longest bucket name.
const MAX_BUCKET_NAME: usize = 64;

/// An open bucket: the prefix of its keys inside the namespace.
pub struct Bucket {
    /// `<name>:`
    prefix: String,
}

impl From<GuestError> for KvError {
    fn from(e: GuestError) -> Self {
        match e {
            // The denial was logged and counted with its reason already.
            GuestError::Denied(_) => KvError::AccessDenied,
            other => KvError::Other(describe(&other)),
        }
    }
}

impl From<crate::cache::CacheError> for KvError {
    fn from(e: crate::cache::CacheError) -> Self {
        GuestError::from(e).into()
    }
}

/// A bucket name: letters, digits, `-`, `_`, `.` (no `:`, which separates
/// it from the key; no glob characters, so a listing cannot widen).
fn valid_bucket(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_BUCKET_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// One key-value call: the store, the context and the bucket's prefix,
/// after spending a host call and checking the namespace grant.
struct Call<'a> {
    store: &'a dyn CacheStore,
    cache: &'a CacheCapability,
    prefix: String,
}

impl Call<'_> {
    /// The cache key of `key` in this bucket.
    fn key(&self, key: &str) -> Result<String, KvError> {
        if key.is_empty() {
            return Err(KvError::Other("invalid: key-value key is empty".into()));
        }
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        Ok(self.cache.full_key(&k)?)
    }

    fn keys(&self, keys: &[String]) -> Result<Vec<String>, KvError> {
        keys.iter().map(|k| self.key(k)).collect()
    }
}

impl Capabilities {
    fn kv(&mut self, bucket: &Resource<Bucket>) -> wasmtime::Result<Result<Call<'_>, KvError>> {
        let prefix = self.table.get(bucket)?.prefix.clone();
        Ok(self
            .cache()
            .map(|(store, cache)| Call {
                store,
                cache,
                prefix,
            })
            .map_err(KvError::from))
    }
}

impl store::Host for Capabilities {
    async fn open(&mut self, identifier: String) -> Answer<Resource<Bucket>> {
        let name = if identifier.is_empty() {
            "default"
        } else {
            identifier.as_str()
        };
        if !valid_bucket(name) {
            return Ok(Err(KvError::Other(format!(
                "invalid: bucket name {identifier:?}: use 1 to {MAX_BUCKET_NAME} letters, digits, '-', '_' or '.'"
            ))));
        }
        if let Err(e) = self.cache() {
            return Ok(Err(e.into()));
        }
        let bucket = Bucket {
            prefix: format!("{name}:"),
        };
        Ok(self.hold(bucket).map_err(KvError::Other))
    }
}

impl store::HostBucket for Capabilities {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Answer<Option<Vec<u8>>> {
        let call = self.kv(&bucket)?;
        Ok(async {
            let call = call?;
            let key = call.key(&key)?;
            Ok(call.store.get(&key).await?.map(|b| b.to_vec()))
        }
        .await)
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> Answer<()> {
        let call = self.kv(&bucket)?;
        Ok(async {
            let call = call?;
            let key = call.key(&key)?;
            call.cache.check_value(&value)?;
            let ttl = call.cache.default_ttl;
            Ok(call.store.set(&key, Bytes::from(value), ttl).await?)
        }
        .await)
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Answer<()> {
        let call = self.kv(&bucket)?;
        Ok(async {
            let call = call?;
            let key = call.key(&key)?;
            call.store.delete(&key).await?;
            Ok(())
        }
        .await)
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Answer<bool> {
        let call = self.kv(&bucket)?;
        Ok(async {
            let call = call?;
            let key = call.key(&key)?;
            Ok(call.store.get(&key).await?.is_some())
        }
        .await)
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Answer<KeyResponse> {
        let call = self.kv(&bucket)?;
        Ok(async {
            let call = call?;
            // Namespace and bucket name are plain text, so the pattern
            // covers this bucket and nothing else.
            let prefix = call.key("*")?;
            let pattern = prefix.as_str();
            let strip = pattern.len() - 1;
            let (keys, cursor) = call.store.scan(pattern, cursor.unwrap_or(0), PAGE).await?;
            let keys = keys
                .into_iter()
                .filter_map(|k| k.get(strip..).map(str::to_owned))
                .collect();
            Ok(KeyResponse { keys, cursor })
        }
        .await)
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.release(bucket)
    }
}

impl atomics::Host for Capabilities {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Answer<u64> {
        let call = self.kv(&bucket)?;
        Ok(async {
            let call = call?;
            let key = call.key(&key)?;
            let ttl = call.cache.default_ttl;
            Ok(call.store.increment(&key, delta, ttl).await?)
        }
        .await)
    }
}

impl batch::Host for Capabilities {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Answer<Vec<Option<(String, Vec<u8>)>>> {
        let call = self.kv(&bucket)?;
        Ok(async {
            let call = call?;
            let full = call.keys(&keys)?;
            let values = call.store.get_many(&full).await?;
            Ok(keys
                .into_iter()
                .zip(values)
                .map(|(k, v)| v.map(|v| (k, v.to_vec())))
                .collect())
        }
        .await)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Answer<()> {
        let call = self.kv(&bucket)?;
        Ok(async {
            let call = call?;
            let mut entries = Vec::with_capacity(key_values.len());
            for (k, v) in key_values {
                call.cache.check_value(&v)?;
                entries.push((call.key(&k)?, Bytes::from(v)));
            }
            Ok(call.store.set_many(entries, call.cache.default_ttl).await?)
        }
        .await)
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Answer<()> {
        let call = self.kv(&bucket)?;
        Ok(async {
            let call = call?;
            for key in call.keys(&keys)? {
                call.store.delete(&key).await?;
            }
            Ok(())
        }
        .await)
    }
}

/// Adds `wasi:keyvalue` (`store`, `atomics`, `batch`) to a linker.
pub(super) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut Capabilities,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    super::bindings::wasi::keyvalue::store::add_to_linker::<T, HasSelf<Capabilities>>(linker, get)?;
    super::bindings::wasi::keyvalue::atomics::add_to_linker::<T, HasSelf<Capabilities>>(
        linker, get,
    )?;
    super::bindings::wasi::keyvalue::batch::add_to_linker::<T, HasSelf<Capabilities>>(linker, get)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::valid_bucket;

    #[test]
    fn bucket_names_cannot_reach_outside_their_prefix() {
        for ok in ["default", "trades", "a-b_c.d", "X9"] {
            assert!(valid_bucket(ok), "{ok}");
        }
        let long = "b".repeat(65);
        for bad in ["", "a:b", "a*", "a?", "[a]", "a b", "ä", long.as_str()] {
            assert!(!valid_bucket(bad), "{bad}");
        }
    }
}
