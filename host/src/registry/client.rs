//! Talking to an OCI registry (the distribution API, through `oci-client`)
//! in the CNCF layout for Wasm artifacts: a config of media type
//! `application/vnd.wasm.config.v0+json` and one `application/wasm` layer,
//! so what `wkg`, `wash` or `oras` push, weir pulls, and the other way round.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::{Failure, store::sha256_digest};

/// The wasm layer's media type.
pub const WASM_LAYER: &str = "application/wasm";
/// The config's media type in the Wasm artifact layout.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// Configs weir accepts beside its own: the empty config `oras push`
/// writes by default (the layer is what runs; the config is metadata).
const OTHER_CONFIGS: [&str; 2] = [
    "application/vnd.oci.empty.v1+json",
    "application/vnd.oci.image.config.v1+json",
];

/// A client for the registries one host uses. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    /// The distribution client (its connection pool and tokens are
    /// shared), made on first use: making it loads the system's root
    /// certificates, which a start from the store does not need.
    client: Arc<OnceLock<Client>>,
    /// Registries spoken to over plain HTTP.
    insecure: Arc<[String]>,
}

impl Registry {
    /// A client speaking HTTPS, but plain HTTP to the `insecure` registries.
    pub fn new(insecure: &[String]) -> Registry {
        Registry {
            client: Arc::default(),
            insecure: insecure.into(),
        }
    }

    fn client(&self) -> &Client {
        self.client.get_or_init(|| {
            // reqwest is built without a TLS provider of its own: it uses
            // ring, the one the NATS client's rustls already brings.
            // Installing it twice is harmless (the first one stays).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let protocol = if self.insecure.is_empty() {
                ClientProtocol::Https
            } else {
                ClientProtocol::HttpsExcept(self.insecure.to_vec())
            };
            Client::new(ClientConfig {
                protocol,
                connect_timeout: Some(Duration::from_secs(5)),
                read_timeout: Some(Duration::from_secs(30)),
                ..ClientConfig::default()
            })
        })
    }

    /// The manifest `reference` names, its bytes and digest (checked
    /// against the reference's digest when it has one).
    pub async fn manifest(&self, reference: &Reference) -> Result<(Vec<u8>, String), Failure> {
        let (bytes, digest) = self
            .client()
            .pull_manifest_raw(reference, &auth(reference), &[OCI_IMAGE_MEDIA_TYPE])
            .await
            .map_err(|e| Failure::from_oci(reference, e))?;
        Ok((bytes.to_vec(), digest))
    }

    /// The wasm layer `layer`: at most `limit` bytes, which must hash to
    /// the layer's digest.
    pub async fn layer(
        &self,
        reference: &Reference,
        layer: &OciDescriptor,
        limit: u64,
    ) -> Result<Vec<u8>, Failure> {
        let mut stream = self
            .client()
            .pull_blob_stream(reference, layer)
            .await
            .map_err(|e| Failure::from_oci(reference, e))?;
        let mut bytes = Vec::with_capacity(usize::try_from(layer.size.max(0)).unwrap_or(0));
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                // The client checks the digest too, as the last bytes
                // arrive: all of them here means they are the wrong ones.
                Err(_) if bytes.len() as u64 == layer.size.max(0) as u64 => break,
                Err(e) => {
                    return Err(Failure::Registry {
                        registry: reference.registry().to_owned(),
                        reason: format!("the layer's download broke off: {e}"),
                    });
                }
            };
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > limit {
                return Err(Failure::Refused(format!(
                    "the wasm layer is larger than {limit} bytes"
                )));
            }
        }
        let actual = sha256_digest(&bytes);
        if actual != layer.digest.to_ascii_lowercase() {
            return Err(Failure::Refused(format!(
                "the wasm layer's bytes hash to {actual}, not to the manifest's {}",
                layer.digest
            )));
        }
        Ok(bytes)
    }

    /// Pushes `wasm` as a Wasm artifact to `reference` (a tag); returns
    /// the manifest's digest.
    pub async fn push(&self, reference: &Reference, wasm: Vec<u8>) -> Result<String, Failure> {
        let layer_digest = sha256_digest(&wasm);
        let config = serde_json::json!({
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer_digest],
        });
        let config = Config {
            data: serde_json::to_vec(&config).unwrap_or_default().into(),
            media_type: WASM_CONFIG.into(),
            annotations: None,
        };
        let layers = [ImageLayer::new(wasm, WASM_LAYER.into(), None)];
        let manifest = OciImageManifest::build(&layers, &config, None);
        self.client()
            .push(reference, &layers, config, &auth(reference), Some(manifest))
            .await
            .map_err(|e| Failure::from_oci(reference, e))?;
        // The digest of the manifest as the registry stores it.
        Ok(self.manifest(reference).await?.1)
    }
}

/// Checks a manifest is a Wasm artifact weir runs: one `application/wasm`
/// layer no larger than `limit`, and a Wasm (or empty) config. Returns
/// the layer.
pub fn wasm_layer(manifest: &[u8], limit: u64) -> Result<OciDescriptor, Failure> {
    let manifest: OciImageManifest = serde_json::from_slice(manifest)
        .map_err(|e| Failure::Refused(format!("its manifest is not an OCI image manifest: {e}")))?;
    let config = manifest.config.media_type.as_str();
    if config != WASM_CONFIG && !OTHER_CONFIGS.contains(&config) {
        return Err(Failure::Refused(format!(
            "its config has media type {config}, not {WASM_CONFIG}: not a Wasm component"
        )));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(Failure::Refused(format!(
            "it has {} layers; a Wasm component has exactly one",
            manifest.layers.len()
        )));
    };
    if layer.media_type != WASM_LAYER {
        return Err(Failure::Refused(format!(
            "its layer has media type {}, not {WASM_LAYER}",
            layer.media_type
        )));
    }
    if layer.size < 0 || layer.size as u64 > limit {
        return Err(Failure::Refused(format!(
            "its wasm layer is {} bytes, more than the {limit} weir accepts",
            layer.size
        )));
    }
    Ok(layer.clone())
}

/// Credentials for `reference`'s registry: `WEIR_REGISTRY_USERNAME` and
/// `WEIR_REGISTRY_PASSWORD`, else docker's `config.json` (`$DOCKER_CONFIG`
/// or `~/.docker`, credential helpers included), else none.
fn auth(reference: &Reference) -> RegistryAuth {
    if let (Ok(user), Ok(password)) = (
        std::env::var("WEIR_REGISTRY_USERNAME"),
        std::env::var("WEIR_REGISTRY_PASSWORD"),
    ) {
        return RegistryAuth::Basic(user, password);
    }
    match docker_credential::get_credential(reference.resolve_registry()) {
        Ok(docker_credential::DockerCredential::UsernamePassword(user, password)) => {
            RegistryAuth::Basic(user, password)
        }
        Ok(docker_credential::DockerCredential::IdentityToken(token)) => {
            RegistryAuth::Bearer(token)
        }
        Err(_) => RegistryAuth::Anonymous,
    }
}

#[cfg(test)]
mod tests {
    use super::{WASM_CONFIG, wasm_layer};

    fn manifest(config: &str, layers: &[(&str, i64)]) -> Vec<u8> {
        let layers: Vec<_> = layers
            .iter()
            .map(|(t, size)| serde_json::json!({"mediaType": t, "digest": format!("sha256:{}", "a".repeat(64)), "size": size}))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": config, "digest": format!("sha256:{}", "b".repeat(64)), "size": 2},
            "layers": layers,
        }))
        .unwrap()
    }

    #[test]
    fn only_one_wasm_layer_of_a_bounded_size_is_taken() {
        assert!(wasm_layer(&manifest(WASM_CONFIG, &[("application/wasm", 10)]), 10).is_ok());
        let why = |m: Vec<u8>| wasm_layer(&m, 10).unwrap_err().to_string();
        assert!(
            why(manifest(WASM_CONFIG, &[("application/wasm", 11)])).contains("more than the 10")
        );
        assert!(
            why(manifest(WASM_CONFIG, &[("application/octet-stream", 1)]))
                .contains("not application/wasm")
        );
        assert!(why(manifest(WASM_CONFIG, &[])).contains("0 layers"));
        assert!(
            why(manifest(
                "application/vnd.docker.container.image.v1+json",
                &[("application/wasm", 1)]
            ))
            .contains("not a Wasm component")
        );
        assert!(why(b"{}".to_vec()).contains("not an OCI image manifest"));
    }
}
