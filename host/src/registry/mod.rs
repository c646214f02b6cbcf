//! Components from OCI registries: `wasm = "oci://REGISTRY/REPO:TAG"` (or
//! `…@sha256:DIGEST`) in the manifest, `weir push` and `weir pull`.
//!
//! A reference is resolved once, when a host starts or reloads: a tag to
//! the digest of its manifest, the manifest to its one wasm layer. The
//! layer is kept in a content-addressed [`Store`], and the digest is what
//! runs, what the logs and `/api/status` show. A digest reference the
//! store holds needs no network; a tag whose registry cannot be reached
//! runs what it last resolved to, with a warning; with no copy the host
//! refuses to start, naming the registry. The bytes then go through the
//! same checks as a file's (sha256 pin, signature, compile, imports).

mod client;
mod store;

use std::path::PathBuf;

use oci_client::Reference;
use oci_client::errors::OciDistributionError;
use thiserror::Error;

use crate::manifest::Manifest;
pub use crate::manifest::{Pulled, parse_reference};
use crate::runtime::MAX_COMPONENT_BYTES;

pub use client::{Registry, WASM_CONFIG, WASM_LAYER};
pub use store::{Store, sha256_digest};

/// Why a component could not be pulled. The running version, if any,
/// keeps running.
#[derive(Debug, Error)]
#[error("component {component}: cannot pull oci://{reference}: {failure}")]
pub struct RegistryError {
    /// The component.
    pub component: String,
    /// Its reference, as the manifest writes it (without `oci://`).
    pub reference: String,
    /// What went wrong.
    pub failure: Failure,
}

/// What went wrong with one reference.
#[derive(Debug, Error)]
pub enum Failure {
    /// Not an OCI reference.
    #[error("{0}")]
    Reference(String),
    /// No connection to the registry (and, at a start, no copy in the store).
    #[error("registry {registry} is unreachable ({reason}) and the store holds no copy")]
    Unreachable {
        /// The registry's host and port.
        registry: String,
        /// The transport's error.
        reason: String,
    },
    /// The registry answered with an error (no such tag, no access).
    #[error("registry {registry} answered: {reason}")]
    Registry {
        /// The registry's host and port.
        registry: String,
        /// Its answer.
        reason: String,
    },
    /// What it holds is not a Wasm component weir takes, or its bytes do
    /// not match their digest.
    #[error("{0}")]
    Refused(String),
    /// The local store cannot be written.
    #[error("cannot write to the store {0}")]
    Store(String),
}

impl Failure {
    pub(crate) fn from_oci(reference: &Reference, e: OciDistributionError) -> Failure {
        let registry = reference.registry().to_owned();
        match e {
            OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
                Failure::Unreachable {
                    registry,
                    reason: chain(&e),
                }
            }
            OciDistributionError::DigestError(e) => {
                Failure::Refused(format!("its bytes do not match their digest: {e}"))
            }
            OciDistributionError::ImageManifestNotFoundError(_) => Failure::Registry {
                registry,
                reason: format!("no manifest for {}", reference.whole()),
            },
            other => Failure::Registry {
                registry,
                reason: chain(&other),
            },
        }
    }
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// The store a manifest's components are pulled into.
pub fn store_for(manifest: &Manifest) -> Store {
    Store::new(
        manifest
            .registry
            .store
            .as_ref()
            .map_or_else(Store::default_root, |dir| manifest.base_dir.join(dir)),
    )
}

/// `manifest` with every `oci://` component pulled (its `pulled` set).
pub async fn resolve(manifest: &Manifest) -> Result<Manifest, RegistryError> {
    let mut out = manifest.clone();
    if manifest
        .components
        .values()
        .all(|s| s.oci_reference().is_none())
    {
        return Ok(out);
    }
    let registry = Registry::new(&manifest.registry.insecure);
    let store = store_for(manifest);
    for (name, spec) in &mut out.components {
        let Some(reference) = spec.oci_reference().map(str::to_owned) else {
            continue;
        };
        let pulled = fetch(&registry, &store, &reference)
            .await
            .map_err(|failure| RegistryError {
                component: name.clone(),
                reference: reference.clone(),
                failure,
            })?;
        if pulled.offline {
            tracing::warn!(component = %name, from = %pulled.reference, "the registry is unreachable: running oci://{reference} as last resolved, from the store");
        } else {
            tracing::debug!(component = %name, from = %pulled.reference, "resolved oci://{reference}");
        }
        spec.pulled = Some(pulled);
    }
    Ok(out)
}

/// Pulls one reference (the part after `oci://`) into `store`.
pub async fn fetch(registry: &Registry, store: &Store, reference: &str) -> Result<Pulled, Failure> {
    let r = parse_reference(reference).map_err(Failure::Reference)?;
    if let Some(digest) = r.digest()
        && let Some(pulled) = stored(store, &r, digest)
    {
        return Ok(pulled);
    }
    let (manifest, digest) = match registry.manifest(&r).await {
        Ok(found) => found,
        Err(Failure::Unreachable { registry, reason }) => {
            return match store.tag(&r).and_then(|d| stored(store, &r, &d)) {
                Some(pulled) if r.digest().is_none() => Ok(Pulled {
                    offline: true,
                    ..pulled
                }),
                _ => Err(Failure::Unreachable { registry, reason }),
            };
        }
        Err(e) => return Err(e),
    };
    let layer = client::wasm_layer(&manifest, MAX_COMPONENT_BYTES)?;
    let path = match store.blob(&layer.digest) {
        Some(_) => store.blob_path(&layer.digest),
        None => {
            let bytes = registry.layer(&r, &layer, MAX_COMPONENT_BYTES).await?;
            Some(put(store, &layer.digest, &bytes)?)
        }
    }
    .ok_or_else(|| Failure::Refused(format!("{} is not a sha256 digest", layer.digest)))?;
    put(store, &digest, &manifest)?;
    if r.digest().is_none() {
        store
            .set_tag(&r, &digest)
            .map_err(|e| Failure::Store(format!("{}: {e}", store.root().display())))?;
    }
    Ok(Pulled {
        reference: format!("oci://{}/{}@{digest}", r.registry(), r.repository()),
        path,
        offline: false,
    })
}

fn put(store: &Store, digest: &str, bytes: &[u8]) -> Result<PathBuf, Failure> {
    store
        .put_blob(digest, bytes)
        .map_err(|e| Failure::Store(format!("{}: {e}", store.root().display())))
}

/// A manifest the store holds, with its wasm layer.
fn stored(store: &Store, r: &Reference, digest: &str) -> Option<Pulled> {
    let manifest = store.blob(digest)?;
    let layer = client::wasm_layer(&manifest, MAX_COMPONENT_BYTES).ok()?;
    store.blob(&layer.digest)?;
    Some(Pulled {
        reference: format!("oci://{}/{}@{digest}", r.registry(), r.repository()),
        path: store.blob_path(&layer.digest)?,
        offline: false,
    })
}
