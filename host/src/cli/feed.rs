//! `weir feed`: an NDJSON file of market events onto a NATS server.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use weir::bus::NatsBus;
use weir::feed::{self, FeedPace};
use weir::manifest::{LogFormat, NatsSettings};

/// Replays an NDJSON file of market events onto a NATS server.
#[derive(clap::Args)]
pub struct FeedArgs {
    /// The NDJSON file (trades, or {subject, data} envelopes).
    file: PathBuf,
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    server: String,
    /// Messages per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
}

/// Publishes the file, flushes, and says how many went out.
pub async fn run(args: FeedArgs) -> anyhow::Result<()> {
    super::init_logging_at(LogFormat::Human, "warn");
    let FeedArgs { file, server, rate } = args;
    let nats = NatsBus::connect(
        &NatsSettings::with_url(&server),
        Path::new("."),
        "weir feed",
    )
    .await?;
    let pace = FeedPace {
        rate,
        ..FeedPace::default()
    };
    let report = feed::replay(&nats, &file, pace, || 0).await?;
    nats.client()
        .flush()
        .await
        .context("cannot flush to NATS")?;
    for line in &report.skipped {
        eprintln!("skipped {line}");
    }
    println!(
        "published {} messages to {server} ({} lines skipped)",
        report.published, report.skipped_total
    );
    Ok(())
}
