//! `[registry]` and `[trust]`: where `oci://` components come from, and
//! whose signatures a component needs before it is compiled.

use std::path::PathBuf;
use std::time::SystemTime;

use oci_client::Reference;
use serde::Deserialize;

/// Where an `oci://` component was pulled to.
#[derive(Debug, Clone, PartialEq)]
pub struct Pulled {
    /// `oci://REGISTRY/REPO@sha256:…`: the manifest the reference
    /// resolved to, which is what runs.
    pub reference: String,
    /// The wasm layer's file in the store.
    pub path: PathBuf,
    /// Taken from the store because the registry could not be reached.
    pub offline: bool,
}

/// Parses the part of an `oci://` reference after the scheme:
/// `REGISTRY/REPO:TAG`, `REGISTRY/REPO@sha256:DIGEST` or both. The
/// registry is always named (no implicit Docker Hub). Parsed by hand: the
/// general reference grammar is a regular expression whose compilation
/// alone costs a start tens of milliseconds.
pub fn parse_reference(reference: &str) -> Result<Reference, String> {
    let bad = |why: &str| format!("oci://{reference} is not an OCI reference: {why}");
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    let (registry, path) = name
        .split_once('/')
        .ok_or_else(|| bad("write oci://REGISTRY/REPO:TAG"))?;
    let (repository, tag) = match path.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
        _ => (path, None),
    };
    // A host name, an IPv4 address or a bracketed IPv6 one, with a port.
    let host_ok = registry.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '[')
        && !registry.contains("..")
        && registry
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    if !host_ok {
        return Err(bad(&format!("{registry:?} is not a registry host")));
    }
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && p.starts_with(|c: char| c.is_ascii_alphanumeric())
    };
    if !repository.split('/').all(part_ok) {
        return Err(bad(&format!(
            "{repository:?} is not a repository (lower-case letters, digits, `._-`, parts joined by `/`)"
        )));
    }
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            && !tag.starts_with(['.', '-']);
        if !ok {
            return Err(bad(&format!("{tag:?} is not a tag")));
        }
    }
    let (registry, repository) = (registry.to_owned(), repository.to_owned());
    match (tag, digest) {
        (_, Some(digest)) => {
            let hex = digest
                .strip_prefix("sha256:")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| bad(&format!("{digest:?} is not sha256:<64 hex digits>")))?;
            let digest = format!("sha256:{}", hex.to_ascii_lowercase());
            Ok(match tag {
                Some(tag) => {
                    Reference::with_tag_and_digest(registry, repository, tag.to_owned(), digest)
                }
                None => Reference::with_digest(registry, repository, digest),
            })
        }
        (Some(tag), None) => Ok(Reference::with_tag(registry, repository, tag.to_owned())),
        (None, None) => Err(bad("name a tag (:TAG) or a digest (@sha256:…)")),
    }
}

/// `[registry]`: how components named `oci://REGISTRY/REPO:TAG` (or
/// `…@sha256:DIGEST`) are pulled.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySettings {
    /// The content-addressed store pulled components are kept in, so a
    /// host starts from it when the registry is away (relative to the
    /// manifest). Default: `$WEIR_STORE`, else `$XDG_CACHE_HOME/weir/store`,
    /// else `~/.cache/weir/store`.
    pub store: Option<PathBuf>,
    /// Registries (`host` or `host:port`) spoken to over plain HTTP; every
    /// other one over HTTPS.
    pub insecure: Vec<String>,
}

/// A signature policy: `[trust]` for every component, `trust = { … }` in
/// a component's entry for that one (its `keys` replace the host-wide
/// ones, its `require_signature` overrides).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrustSettings {
    /// Public keys a component's embedded signature is checked against:
    /// wasmsign2 key files or OpenSSH ed25519 public keys, relative to
    /// the manifest.
    pub keys: Vec<TrustedKey>,
    /// Refuse a component that no trusted key signed (default: false; a
    /// signature that is there is checked either way).
    pub require_signature: Option<bool>,
}

/// One trusted key: a path, or `{ path, expires }` for a key that stops
/// being trusted at a date (`2027-06-30` or RFC 3339).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TrustedKey {
    /// A key trusted without a date.
    Path(PathBuf),
    /// A key with an end date.
    Dated {
        /// The key file.
        path: PathBuf,
        /// After this instant its signatures are refused.
        expires: Option<String>,
    },
}

impl TrustedKey {
    /// The key file, as written.
    pub fn path(&self) -> &PathBuf {
        match self {
            TrustedKey::Path(path) | TrustedKey::Dated { path, .. } => path,
        }
    }

    /// When the key stops being trusted, if it does; an error says why a
    /// date cannot be read.
    pub fn expires(&self) -> Result<Option<SystemTime>, String> {
        let TrustedKey::Dated {
            expires: Some(text),
            ..
        } = self
        else {
            return Ok(None);
        };
        let full = if text.len() == 10 {
            format!("{text}T00:00:00Z")
        } else {
            text.clone()
        };
        humantime::parse_rfc3339_weak(full.trim_end_matches('Z'))
            .map(Some)
            .map_err(|e| {
                format!("expires = {text:?}: {e} (write 2027-06-30 or 2027-06-30T12:00:00Z)")
            })
    }
}

/// The policy one component is held to: its own `trust` over `[trust]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrustPolicy {
    /// The keys, paths resolved against the manifest's directory.
    pub keys: Vec<(PathBuf, Option<SystemTime>)>,
    /// Whether an unsigned component is refused.
    pub require_signature: bool,
}

impl TrustPolicy {
    /// Combines the host-wide and the component's settings; key paths are
    /// resolved against `base`. Dates were checked when the manifest was
    /// loaded; one that cannot be read counts as already passed.
    pub fn of(host: &TrustSettings, own: Option<&TrustSettings>, base: &std::path::Path) -> Self {
        let keys = match own {
            Some(own) if !own.keys.is_empty() => &own.keys,
            _ => &host.keys,
        };
        let require = own
            .and_then(|o| o.require_signature)
            .or(host.require_signature)
            .unwrap_or(false);
        TrustPolicy {
            keys: keys
                .iter()
                .map(|k| {
                    let expires = k.expires().unwrap_or(Some(SystemTime::UNIX_EPOCH));
                    (base.join(k.path()), expires)
                })
                .collect(),
            require_signature: require,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{TrustPolicy, TrustSettings, TrustedKey, parse_reference};

    #[test]
    fn references_name_a_registry_a_repository_and_a_tag_or_digest() {
        let hex = "ab".repeat(32);
        let r = parse_reference("127.0.0.1:5000/strategies/sma:v1.2").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag(), r.digest()),
            ("127.0.0.1:5000", "strategies/sma", Some("v1.2"), None)
        );
        let r = parse_reference(&format!("ghcr.io/acme/sma@sha256:{hex}")).unwrap();
        assert_eq!(r.digest(), Some(format!("sha256:{hex}").as_str()));
        assert_eq!(r.tag(), None);
        let r = parse_reference(&format!(
            "ghcr.io/acme/sma:v1@sha256:{}",
            hex.to_uppercase()
        ))
        .unwrap();
        assert_eq!(
            (r.tag(), r.digest()),
            (Some("v1"), Some(format!("sha256:{hex}").as_str()))
        );
        for bad in [
            "sma:v1",
            "ghcr.io/acme/sma",
            "ghcr.io/Acme/sma:v1",
            "ghcr.io/acme/sma:",
            "ghcr.io/acme/../sma:v1",
            "ghcr.io/acme/sma@sha256:abc",
            "ghcr.io/acme/sma@md5:abc",
            "ghcr.io//sma:v1",
            "../sma:v1",
            ".ghcr.io/sma:v1",
        ] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
    }
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_component_s_keys_replace_the_host_s_and_dates_read_both_ways() {
        let host = TrustSettings {
            keys: vec![TrustedKey::Path("team.pub".into())],
            require_signature: Some(true),
        };
        let own = TrustSettings {
            keys: vec![TrustedKey::Dated {
                path: "quant.pub".into(),
                expires: Some("2027-06-30".into()),
            }],
            require_signature: None,
        };
        let p = TrustPolicy::of(&host, Some(&own), Path::new("/m"));
        let day = SystemTime::UNIX_EPOCH + Duration::from_secs(1_814_313_600);
        assert_eq!(
            p.keys,
            vec![(Path::new("/m/quant.pub").to_owned(), Some(day))]
        );
        assert!(p.require_signature);
        let p = TrustPolicy::of(&host, None, Path::new("/m"));
        assert_eq!(p.keys, vec![(Path::new("/m/team.pub").to_owned(), None)]);
        let bad = TrustedKey::Dated {
            path: "k".into(),
            expires: Some("next year".into()),
        };
        assert!(bad.expires().is_err());
        let precise = TrustedKey::Dated {
            path: "k".into(),
            expires: Some("2027-06-30T12:00:00Z".into()),
        };
        assert_eq!(
            precise.expires(),
            Ok(Some(day + Duration::from_secs(12 * 3600)))
        );
    }
}
