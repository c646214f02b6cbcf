//! `weir inspect FILE.wasm` (or `oci://…`): what a component is and
//! whether weir runs it, without running it: world, imports (each marked
//! provided or not), exports, size, the sha256 to pin in the manifest,
//! and its signature, checked against `--key`s.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use weir::runtime::{Inspection, Runtime, RuntimeConfig};

/// Shows what a component file (or `oci://` reference) is: world, imports
/// (provided by weir or not), exports, size, sha256 and signature; fails
/// when weir would refuse it.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// The `.wasm` component, or `oci://REGISTRY/REPO:TAG` (pulled into
    /// the store first).
    file: PathBuf,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// A trusted public key (wasmsign2, PEM, DER or OpenSSH Ed25519): the
    /// component's signature must verify with one of them.
    #[arg(long = "key", value_name = "FILE")]
    keys: Vec<PathBuf>,
    /// Registries (`host:port`) spoken to over plain HTTP.
    #[arg(long, value_name = "REGISTRY")]
    insecure: Vec<String>,
}

/// Prints the inspection as text, or as one JSON object with `--json`.
/// Fails (after printing) when weir would refuse the component.
pub async fn run(args: InspectArgs) -> anyhow::Result<()> {
    let json = args.json;
    let (pulled, origin) = match args.file.to_str().and_then(|f| f.strip_prefix("oci://")) {
        Some(reference) => {
            let store = weir::registry::Store::new(weir::registry::Store::default_root());
            let registry = weir::registry::Registry::new(&args.insecure);
            let pulled = weir::registry::fetch(&registry, &store, reference)
                .await
                .with_context(|| format!("cannot pull oci://{reference}"))?;
            (pulled.path, Some(pulled.reference))
        }
        None => (args.file.clone(), None),
    };
    let path = pulled.as_path();
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let runtime = Runtime::new(&RuntimeConfig {
        epoch_tick: Duration::from_millis(10),
        max_memory_bytes: 64 << 20,
        max_instances: 1,
        fuel: false,
    })?;
    let mut report = runtime
        .inspect(&bytes)
        .with_context(|| format!("{} is not a WebAssembly component", path.display()))?;
    if !args.keys.is_empty() {
        let policy = weir::manifest::TrustPolicy {
            keys: args.keys.iter().map(|k| (k.clone(), None)).collect(),
            require_signature: true,
        };
        match weir::signature::verify(&bytes, &policy, std::time::SystemTime::now()) {
            Ok(signer) => report.signer = signer,
            Err(e) => {
                report.refusal.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let shown = origin.unwrap_or_else(|| path.display().to_string());
    let out = if json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        text(&shown, &report)
    };
    // A closed pipe (`| head`) is the reader's choice, not an error.
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    match &report.refusal {
        Some(why) => anyhow::bail!("weir would refuse {shown}: {why}"),
        None => Ok(()),
    }
}

fn text(origin: &str, r: &Inspection) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "file     {origin}");
    let _ = writeln!(out, "size     {} bytes", r.size);
    let _ = writeln!(out, "sha256   {}", r.sha256);
    let _ = match (&r.signer, r.signed) {
        (Some(signer), _) => writeln!(out, "signed   by {signer}"),
        (None, true) => writeln!(out, "signed   yes (give --key to check by whom)"),
        (None, false) => writeln!(out, "signed   no"),
    };
    match r.world {
        Some(w) => {
            let _ = writeln!(out, "world    {} (exports {})", w.name(), w.handler());
            let batch = weir::runtime::BATCH_HANDLER;
            if r.exports.iter().any(|e| e == batch) {
                let _ = writeln!(out, "batches  yes (exports {batch})");
            }
            let market = weir::runtime::MARKET_HANDLER;
            if r.exports.iter().any(|e| e == market) {
                let _ = writeln!(
                    out,
                    "market   decoded by weir: trades, books and candles (exports {market})"
                );
            }
        }
        None => {
            let _ = writeln!(out, "world    none that weir runs");
        }
    }
    let _ = writeln!(out, "imports  (+ provided by weir, - not provided)");
    for i in &r.imports {
        let _ = writeln!(out, "  {} {}", if i.provided { '+' } else { '-' }, i.name);
    }
    let _ = writeln!(out, "exports");
    for name in &r.exports {
        let _ = writeln!(out, "    {name}");
    }
    match &r.refusal {
        None => {
            let _ = writeln!(out, "runs     yes; pin it with sha256 = \"{}\"", r.sha256);
        }
        Some(why) => {
            let _ = writeln!(out, "runs     no: {why}");
        }
    }
    out
}
