//! `weir inspect FILE.wasm`: what a component is and whether weir runs it,
//! without running it: world, imports (each marked provided or not),
//! exports, size and the sha256 to pin in the manifest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use weir::runtime::{Inspection, Runtime, RuntimeConfig};

/// Shows what a component file is: world, imports (provided by weir or
/// not), exports, size and sha256; fails when weir would refuse it.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// The `.wasm` component.
    file: PathBuf,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Prints the inspection as text, or as one JSON object with `--json`.
/// Fails (after printing) when weir would refuse the component.
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let (path, json) = (args.file.as_path(), args.json);
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let runtime = Runtime::new(&RuntimeConfig {
        epoch_tick: Duration::from_millis(10),
        max_memory_bytes: 64 << 20,
        max_instances: 1,
        fuel: false,
    })?;
    let report = runtime
        .inspect(&bytes)
        .with_context(|| format!("{} is not a WebAssembly component", path.display()))?;
    let out = if json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        text(path, &report)
    };
    // A closed pipe (`| head`) is the reader's choice, not an error.
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    match &report.refusal {
        Some(why) => anyhow::bail!("weir would refuse {}: {why}", path.display()),
        None => Ok(()),
    }
}

fn text(path: &Path, r: &Inspection) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "file     {}", path.display());
    let _ = writeln!(out, "size     {} bytes", r.size);
    let _ = writeln!(out, "sha256   {}", r.sha256);
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
