//! `weir run`: a manifest's components, until Ctrl-C or the end of a feed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use weir::Host;
use weir::feed::{self, FeedPace};

/// Runs the components of a manifest until Ctrl-C (or until a --feed is done).
#[derive(clap::Args)]
pub struct RunArgs {
    /// The manifest (TOML).
    manifest: PathBuf,
    /// Replays an NDJSON file of market events onto the bus once the components are up.
    #[arg(long)]
    feed: Option<PathBuf>,
    /// Messages per second for --feed (default: as fast as the host keeps up).
    #[arg(long)]
    rate: Option<f64>,
    /// Prints every message on this subject filter as it happens (repeatable).
    #[arg(long = "tap")]
    taps: Vec<String>,
    /// Keeps running after the --feed is done, until Ctrl-C.
    #[arg(long)]
    stay: bool,
    /// Hot-updates components when the manifest or a `.wasm` changes
    /// (SIGHUP and `POST /api/reload` always do).
    #[arg(long)]
    watch: bool,
}

/// Starts the host, feeds it, taps it, and stops on Ctrl-C (or once the
/// feed is done, without `--stay`).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        manifest,
        feed,
        rate,
        taps,
        stay,
        watch,
    } = args;
    let manifest = super::load(&manifest)?;
    let host = Host::start(&manifest).await?;
    update_on_hangup(host.updater())?;
    if watch {
        tokio::spawn(host.updater().watch_files(WATCH_EVERY));
        tracing::info!("watching the manifest and component files for changes");
    }
    let mut tap_counts = Vec::new();
    for filter in &taps {
        let mut sub = host
            .bus()
            .subscribe(filter, None)
            .await
            .with_context(|| format!("cannot tap {filter}"))?;
        let count = Arc::new(AtomicU64::new(0));
        tap_counts.push((filter.clone(), count.clone()));
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                count.fetch_add(1, Ordering::Relaxed);
                println!(
                    "{:<24} {}",
                    msg.subject,
                    String::from_utf8_lossy(&msg.payload)
                );
            }
        });
    }

    let started = Instant::now();
    if let Some(path) = &feed {
        let pace = FeedPace {
            rate,
            ..FeedPace::default()
        };
        let bus = host.bus();
        let report = tokio::select! {
            r = feed::replay(&*bus, path, pace, || host.backlog()) => r?,
            _ = super::ctrl_c_or_term() => {
                tracing::warn!("interrupted while feeding; shutting down");
                weir::host::run(host, async {}).await;
                return Ok(());
            }
        };
        for line in &report.skipped {
            eprintln!("skipped {line}");
        }
        host.wait_idle(Duration::from_secs(60)).await;
        // Let taps print what is still in flight.
        tokio::time::sleep(Duration::from_millis(50)).await;
        print_summary(&host, Some(&(report, started.elapsed())), &tap_counts);
    }
    if feed.is_none() || stay {
        match host.http_addr() {
            Some(a) => tracing::info!("running; dashboard on http://{a}/ ; Ctrl-C to stop"),
            None => tracing::info!("running; Ctrl-C to stop"),
        }
        super::ctrl_c_or_term().await;
        if feed.is_none() {
            print_summary(&host, None, &tap_counts);
        }
    }
    weir::host::run(host, async {}).await;
    Ok(())
}

fn print_summary(
    host: &Host,
    fed: Option<&(feed::FeedReport, Duration)>,
    taps: &[(String, Arc<AtomicU64>)],
) {
    println!();
    println!("── weir summary ──────────────────────────────────────────────────────────");
    if let Some((report, took)) = fed {
        let rate = report.published as f64 / took.as_secs_f64().max(1e-9);
        println!(
            "events in        {:>8}  ({} skipped) in {:.2?}, {:.0} events/s",
            report.published, report.skipped_total, took, rate
        );
    }
    for (filter, count) in taps {
        println!("out {filter:<12} {:>8}", count.load(Ordering::Relaxed));
    }
    println!();
    println!(
        "{:<16} {:>9} {:>9} {:>8} {:>8} {:>6} {:>10}",
        "component", "received", "handled", "retried", "dead-ltr", "traps", "published"
    );
    for (name, s) in host.component_stats() {
        println!(
            "{name:<16} {:>9} {:>9} {:>8} {:>8} {:>6} {:>10}",
            s.received, s.handled, s.retried, s.dead_lettered, s.traps, s.published
        );
    }
    for l in host.cache_stats() {
        println!();
        println!(
            "cache {:?}: hit rate {:.1}% ({} hits, {} misses), {} sets, {} entries, {} bytes, {} evictions",
            l.layer,
            l.hit_rate() * 100.0,
            l.hits,
            l.misses,
            l.sets,
            l.entries,
            l.bytes,
            l.evictions
        );
    }
}

/// How often `--watch` looks at the files.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Hot-updates the host on each SIGHUP (which no longer stops weir).
fn update_on_hangup(updater: weir::update::Updater) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let _ = updater.reload_logged("SIGHUP").await;
        }
    });
    Ok(())
}
