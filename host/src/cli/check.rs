//! `weir check`: a manifest loaded and its components compiled, then exit.

use std::path::PathBuf;
use std::time::Duration;

use weir::Host;

/// Checks a manifest and compiles its components, then exits.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The manifest (TOML).
    manifest: PathBuf,
}

/// Starts the host (which refuses what it cannot run), lists the
/// components and their worlds, and stops it.
pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let m = super::load(&args.manifest)?;
    let host = Host::start(&m).await?;
    let worlds = host.worlds();
    println!(
        "{}: {} component(s) compiled and ready",
        args.manifest.display(),
        worlds.len()
    );
    for (name, world) in worlds {
        println!("  {name}: {} world ({})", world.name(), world.handler());
    }
    host.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
