//! `weir push FILE REF` and `weir pull REF`: components to and from an OCI
//! registry, in the Wasm artifact layout other tools (`wkg`, `wash`,
//! `oras`) read and write.

use std::path::PathBuf;

use anyhow::Context as _;
use weir::registry::{Registry, Store};

/// Pushes a component to a registry as a Wasm artifact.
#[derive(clap::Args)]
pub struct PushArgs {
    /// The `.wasm` component.
    file: PathBuf,
    /// Where to: `REGISTRY/REPO:TAG` (`oci://` in front is optional).
    reference: String,
    /// Registries (`host:port`) spoken to over plain HTTP.
    #[arg(long, value_name = "REGISTRY")]
    insecure: Vec<String>,
}

/// Pulls a component into the local store and prints where it is.
#[derive(clap::Args)]
pub struct PullArgs {
    /// What: `REGISTRY/REPO:TAG` or `REGISTRY/REPO@sha256:…`.
    reference: String,
    /// Registries (`host:port`) spoken to over plain HTTP.
    #[arg(long, value_name = "REGISTRY")]
    insecure: Vec<String>,
    /// The store (default: `$WEIR_STORE`, else `~/.cache/weir/store`).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Also copy the component to this file.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// Checks the file is a component, pushes it, prints the digest reference.
pub async fn push(args: PushArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    if !bytes.starts_with(b"\0asm") || bytes.get(4..8) != Some(&[0x0d, 0x00, 0x01, 0x00]) {
        anyhow::bail!(
            "{} is not a WebAssembly component (build it for wasm32-wasip2)",
            args.file.display()
        );
    }
    let text = args.reference.trim_start_matches("oci://");
    let reference = weir::registry::parse_reference(text).map_err(anyhow::Error::msg)?;
    if reference.digest().is_some() {
        anyhow::bail!("push to a tag (REGISTRY/REPO:TAG); the registry gives the digest");
    }
    let registry = Registry::new(&args.insecure);
    let digest = registry
        .push(&reference, bytes)
        .await
        .with_context(|| format!("cannot push to oci://{text}"))?;
    println!(
        "oci://{}/{}@{digest}",
        reference.registry(),
        reference.repository()
    );
    Ok(())
}

/// Pulls into the store; prints the digest reference and the file.
pub async fn pull(args: PullArgs) -> anyhow::Result<()> {
    let text = args.reference.trim_start_matches("oci://");
    let store = Store::new(args.store.unwrap_or_else(Store::default_root));
    let registry = Registry::new(&args.insecure);
    let pulled = weir::registry::fetch(&registry, &store, text)
        .await
        .with_context(|| format!("cannot pull oci://{text}"))?;
    if let Some(out) = &args.output {
        std::fs::copy(&pulled.path, out)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    if pulled.offline {
        eprintln!(
            "the registry is unreachable: this is the store's copy of what the tag last named"
        );
    }
    println!("{}", pulled.reference);
    println!("{}", pulled.path.display());
    Ok(())
}
