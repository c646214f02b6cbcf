//! Signatures embedded in components, checked against a component's
//! trust policy before it is compiled, whether it came from a file or a
//! registry.
//!
//! The format is the WebAssembly tool conventions' (`wasmsign2`): an
//! Ed25519 signature in a custom section at the start of the binary, over
//! everything after it. It travels with the bytes, so a file copied by
//! hand and a layer pulled from a registry are checked the same way, with
//! no network; operators sign with the `wasmsign2` tool, with a key pair
//! of its own or their OpenSSH Ed25519 key.

use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;
use thiserror::Error;
use wasmsign2::{PublicKey, PublicKeySet, WSError};

use crate::manifest::TrustPolicy;

/// Who signed a component: the trusted key a signature verified with.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Signer {
    /// The key file, as the manifest resolves it.
    pub key: String,
    /// The first 16 hex digits of the sha256 of the Ed25519 public key:
    /// the same for the same key in any file format.
    pub key_id: String,
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (key id {})", self.key, self.key_id)
    }
}

/// Why a component's signature is refused.
#[derive(Debug, Error, PartialEq)]
pub enum SignatureError {
    /// No signature, and the policy requires one.
    #[error("it is not signed, and its trust policy requires a signature by {keys}")]
    Unsigned {
        /// The trusted keys.
        keys: String,
    },
    /// Signed, but by none of the trusted keys, or altered after signing.
    #[error(
        "its signature does not verify with any trusted key ({keys}): it was signed by another key, or altered after signing"
    )]
    Untrusted {
        /// The trusted keys.
        keys: String,
    },
    /// Signed by a trusted key whose end date has passed.
    #[error("it is signed by {signer}, which the manifest stopped trusting at {expired}")]
    Expired {
        /// The key.
        signer: Signer,
        /// Its end date (RFC 3339).
        expired: String,
    },
    /// A trusted key file cannot be read.
    #[error("the trusted key {path} cannot be read: {reason}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The signature section is there but cannot be read.
    #[error("its signature section cannot be read: {0}")]
    Malformed(String),
}

/// Checks `bytes` against `policy` at `now`: the signer when a trusted
/// key's signature verifies, `None` for an unsigned component the policy
/// lets run (or any component when the policy names no keys).
pub fn verify(
    bytes: &[u8],
    policy: &TrustPolicy,
    now: SystemTime,
) -> Result<Option<Signer>, SignatureError> {
    if policy.keys.is_empty() {
        return Ok(None);
    }
    let keys = policy
        .keys
        .iter()
        .map(|(path, expires)| Ok((path.as_path(), *expires, read_key(path)?)))
        .collect::<Result<Vec<_>, SignatureError>>()?;
    let names = || {
        keys.iter()
            .map(|(path, _, _)| path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let set = PublicKeySet::new(keys.iter().map(|(_, _, pk)| pk.clone()).collect());
    let verified = match set.verify(&mut &bytes[..], None) {
        Ok(verified) => verified,
        Err(WSError::NoSignatures) if policy.require_signature => {
            return Err(SignatureError::Unsigned { keys: names() });
        }
        Err(WSError::NoSignatures) => return Ok(None),
        Err(WSError::VerificationFailed) => {
            return Err(SignatureError::Untrusted { keys: names() });
        }
        Err(e) => return Err(SignatureError::Malformed(e.to_string())),
    };
    let mut expired = None;
    for (path, expires, pk) in &keys {
        if !verified.iter().any(|v| v.pk == pk.pk) {
            continue;
        }
        let signer = Signer {
            key: path.display().to_string(),
            key_id: key_id(pk),
        };
        match expires {
            Some(at) if *at <= now => {
                expired = Some(SignatureError::Expired {
                    signer,
                    expired: humantime::format_rfc3339_seconds(*at).to_string(),
                });
            }
            _ => return Ok(Some(signer)),
        }
    }
    Err(expired.unwrap_or(SignatureError::Untrusted { keys: names() }))
}

/// Whether `bytes` carry an embedded signature at all (for `weir inspect`).
pub fn is_signed(bytes: &[u8]) -> bool {
    let Ok(module) = wasmsign2::Module::deserialize(&mut &bytes[..]) else {
        return false;
    };
    module
        .sections
        .first()
        .is_some_and(wasmsign2::Section::is_signature_header)
}

/// A key file in any format `wasmsign2` writes or reads: its own, PEM,
/// DER or an OpenSSH Ed25519 public key.
fn read_key(path: &Path) -> Result<PublicKey, SignatureError> {
    PublicKey::from_any_file(path).map_err(|e| SignatureError::Key {
        path: path.display().to_string(),
        reason: match e {
            WSError::IOError(io) => io.to_string(),
            _ => "not an Ed25519 public key (wasmsign2, PEM, DER or OpenSSH)".into(),
        },
    })
}

/// A key's id: the first 16 hex digits of the sha256 of its 32 bytes.
pub fn key_id(pk: &PublicKey) -> String {
    let mut hex = crate::digest::sha256_hex(pk.pk.as_ref());
    hex.truncate(16);
    hex
}
