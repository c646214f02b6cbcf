//! The local store of pulled components, addressed by digest: what a host
//! starts from when the registry is away, and what a digest reference
//! needs no network for.
//!
//! ```text
//! <root>/blobs/sha256/<hex>              manifests and wasm layers, by digest
//! <root>/tags/<registry>/<repo>/<tag>    the manifest digest a tag last resolved to
//! ```
//!
//! Every file is written to a temporary name and renamed, so a reader
//! never sees half a blob; a blob is only ever stored under the digest of
//! its bytes.

use std::io;
use std::path::{Path, PathBuf};

use oci_client::Reference;

/// A store rooted at a directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    /// The directory holding `blobs/` and `tags/`.
    root: PathBuf,
}

impl Store {
    /// A store at `root` (made on first write).
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The default place: `$WEIR_STORE`, else `$XDG_CACHE_HOME/weir/store`,
    /// else `~/.cache/weir/store`, else `.weir/store`.
    pub fn default_root() -> PathBuf {
        if let Some(dir) = std::env::var_os("WEIR_STORE") {
            return dir.into();
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            return Path::new(&dir).join("weir/store");
        }
        match std::env::var_os("HOME") {
            Some(home) => Path::new(&home).join(".cache/weir/store"),
            None => PathBuf::from(".weir/store"),
        }
    }

    /// The directory it lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with `digest` (`sha256:<hex>`) is or would be; `None`
    /// for a digest that is not a sha256 of 64 hex digits.
    pub fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(
            self.root
                .join("blobs/sha256")
                .join(hex.to_ascii_lowercase()),
        )
    }

    /// The stored blob with `digest`, if the store has it and its bytes
    /// still hash to it (a file changed on disk is not trusted).
    pub fn blob(&self, digest: &str) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.blob_path(digest)?).ok()?;
        (sha256_digest(&bytes) == digest.to_ascii_lowercase()).then_some(bytes)
    }

    /// Stores `bytes` under their digest, which must be `digest`.
    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> io::Result<PathBuf> {
        let path = self
            .blob_path(digest)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a sha256 digest"))?;
        if sha256_digest(bytes) != digest.to_ascii_lowercase() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the bytes do not hash to their digest",
            ));
        }
        write_atomically(&path, bytes)?;
        Ok(path)
    }

    /// The manifest digest `reference`'s tag last resolved to.
    pub fn tag(&self, reference: &Reference) -> Option<String> {
        let text = std::fs::read_to_string(self.tag_path(reference)?).ok()?;
        let digest = text.trim().to_owned();
        self.blob_path(&digest).map(|_| digest)
    }

    /// Remembers that `reference`'s tag resolved to `digest`.
    pub fn set_tag(&self, reference: &Reference, digest: &str) -> io::Result<()> {
        match self.tag_path(reference) {
            Some(path) => write_atomically(&path, digest.as_bytes()),
            None => Ok(()),
        }
    }

    fn tag_path(&self, reference: &Reference) -> Option<PathBuf> {
        let tag = reference.tag()?;
        // The reference grammar allows no `..` in any of these parts.
        Some(
            self.root
                .join("tags")
                .join(reference.resolve_registry())
                .join(reference.repository())
                .join(tag),
        )
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::digest::sha256_hex(bytes))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("blob"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::{Store, sha256_digest};

    #[test]
    fn blobs_are_kept_by_digest_and_a_changed_file_is_not_trusted() {
        let dir = std::env::temp_dir().join(format!("weir-store-{}", std::process::id()));
        let store = Store::new(&dir);
        let digest = sha256_digest(b"\0asm");
        assert!(store.blob(&digest).is_none());
        assert!(store.put_blob(&sha256_digest(b"other"), b"\0asm").is_err());
        let path = store.put_blob(&digest, b"\0asm").unwrap();
        assert_eq!(store.blob(&digest).as_deref(), Some(&b"\0asm"[..]));
        std::fs::write(&path, b"\0asn").unwrap();
        assert!(store.blob(&digest).is_none(), "a blob altered on disk");
        let r: oci_client::Reference = "127.0.0.1:5000/strategies/sma:v1".parse().unwrap();
        assert_eq!(store.tag(&r), None);
        store.set_tag(&r, &digest).unwrap();
        assert_eq!(store.tag(&r), Some(digest));
        assert!(store.blob_path("sha256:../../etc").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
