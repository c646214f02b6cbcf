//! The `weir` command line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

mod cmd_inspect;
mod cmd_new;
mod cmd_replay;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use weir::bus::NatsBus;
use weir::feed::{self, FeedPace};
use weir::manifest::{LogFormat, NatsSettings};
use weir::{EnvOverrides, Host, Manifest};

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    args_override_self = true,
    about = "A WebAssembly component host for event-driven trading code"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the components of a manifest until Ctrl-C (or until a --feed is done).
    Run {
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
    },
    /// Creates a component project (strategy or alert) that builds on its
    /// own, with the SDK, a manifest entry, sample data and a test.
    New {
        /// What it is.
        kind: cmd_new::Kind,
        /// Its crate name, cache namespace and manifest key.
        name: String,
        /// Where to create it (the project is DIR/NAME).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Shows what a component file is: world, imports (provided by weir or
    /// not), exports, size and sha256; fails when weir would refuse it.
    Inspect {
        /// The `.wasm` component.
        file: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Checks a manifest and compiles its components, then exits.
    Check {
        /// The manifest (TOML).
        manifest: PathBuf,
    },
    /// Manages JetStream streams and consumers defined as JSON files.
    Streams {
        /// NATS server URL.
        #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
        server: String,
        #[command(subcommand)]
        action: StreamsAction,
    },
    /// Shows a running host's components, rates, errors, cache and connections.
    Status {
        /// The host's `host.http` address.
        #[arg(long, default_value = "127.0.0.1:9464")]
        addr: String,
    },
    /// Runs the manifest's components over recorded events on a virtual
    /// clock; writes every publish, cache write, dead letter and settle, in
    /// order, as NDJSON (same input, same bytes). Nothing goes live.
    Replay(cmd_replay::ReplayArgs),
    /// Records live NATS traffic in the format `weir replay --from` reads.
    Record {
        /// Subjects (wildcards allowed).
        #[arg(required = true)]
        subjects: Vec<String>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// NATS server URL.
        #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
        server: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Replays an NDJSON file of market events onto a NATS server.
    Feed {
        /// The NDJSON file (trades, or {subject, data} envelopes).
        file: PathBuf,
        /// NATS server URL.
        #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
        server: String,
        /// Messages per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
    },
}

#[derive(Subcommand)]
enum StreamsAction {
    /// Creates or updates every stream and consumer defined in DIR (*.json).
    Apply {
        /// Directory of definitions in the nats CLI's JSON format.
        dir: PathBuf,
    },
    /// Lists streams with their subjects and sizes.
    Ls,
    /// Shows one stream's config and state.
    Info {
        /// Stream name.
        name: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run_cli(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// A user-facing error as one line: the causes joined with `: `, never a
/// backtrace (whatever `RUST_BACKTRACE` says) nor a multi-line report.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_cli(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Inspect { file, json } => cmd_inspect::inspect(&file, json),
            Command::New { kind, name, dir } => cmd_new::new(kind, &name, &dir),
            Command::Check { manifest } => {
                let m = load(&manifest)?;
                let host = Host::start(&m).await?;
                let worlds = host.worlds();
                println!(
                    "{}: {} component(s) compiled and ready",
                    manifest.display(),
                    worlds.len()
                );
                for (name, world) in worlds {
                    println!("  {name}: {} world ({})", world.name(), world.handler());
                }
                host.shutdown(Duration::from_secs(1)).await;
                Ok(())
            }
            Command::Run {
                manifest,
                feed,
                rate,
                taps,
                stay,
                watch,
            } => run(load(&manifest)?, feed, rate, taps, stay, watch).await,
            Command::Streams { server, action } => {
                init_logging_at(LogFormat::Human, "warn");
                let nats = NatsBus::connect(
                    &NatsSettings::with_url(&server),
                    Path::new("."),
                    "weir streams",
                )
                .await?;
                let js = nats.jetstream();
                let lines = match action {
                    StreamsAction::Apply { dir } => {
                        weir::streams::apply(js, &weir::streams::load_dir(&dir)?).await?
                    }
                    StreamsAction::Ls => weir::streams::list(js).await?,
                    StreamsAction::Info { name } => vec![weir::streams::info(js, &name).await?],
                };
                for l in lines {
                    println!("{l}");
                }
                Ok(())
            }
            Command::Status { addr } => print_status(&addr).await,
            Command::Replay(args) => {
                init_logging_at(LogFormat::Human, "warn");
                cmd_replay::replay(args).await
            }
            Command::Record {
                subjects,
                out,
                server,
                count,
            } => {
                init_logging_at(LogFormat::Human, "warn");
                cmd_replay::record(&server, &subjects, &out, count, shutdown_signal())
                    .await
                    .map(|_| ())
            }
            Command::Feed { file, server, rate } => {
                init_logging_at(LogFormat::Human, "warn");
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
        }
    })
}

/// Loads a manifest (with the environment's overrides) and starts logging.
fn load(path: &Path) -> anyhow::Result<Manifest> {
    let m = Manifest::load(path, &EnvOverrides::from_process())?;
    init_logging(m.host.log_format);
    Ok(m)
}

async fn run(
    manifest: Manifest,
    feed: Option<PathBuf>,
    rate: Option<f64>,
    taps: Vec<String>,
    stay: bool,
    watch: bool,
) -> anyhow::Result<()> {
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
            _ = shutdown_signal() => {
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
        shutdown_signal().await;
        if feed.is_none() {
            print_summary(&host, None, &tap_counts);
        }
    }
    weir::host::run(host, async {}).await;
    Ok(())
}

async fn print_status(addr: &str) -> anyhow::Result<()> {
    let (code, body) = weir::observe::http_get(addr, "/api/dashboard?since=0")
        .await
        .with_context(|| format!("no weir host answers on {addr} (is host.http set?)"))?;
    anyhow::ensure!(code == 200, "{addr} answered {code}: {body}");
    let d: serde_json::Value =
        serde_json::from_str(&body).context("unexpected dashboard document")?;
    print!("{}", status_screen(&d));
    Ok(())
}

/// `weir status`: one screen from the dashboard document.
fn status_screen(d: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let ready: Vec<String> = d["ready"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    let ready = if ready.is_empty() {
        "ready".to_owned()
    } else {
        format!("NOT READY: {}", ready.join("; "))
    };
    let _ = writeln!(
        out,
        "host {}  up {}s  {ready}",
        text(&d["host"]),
        n(&d["uptime_secs"])
    );
    let c = &d["connections"];
    let nats = match c["nats"].as_str() {
        Some(s) => format!("{s} ({} reconnects)", n(&c["nats_reconnects"])),
        None => "embedded bus".to_owned(),
    };
    let _ = writeln!(
        out,
        "nats {nats}  redis {}",
        c["redis"].as_str().unwrap_or("not configured")
    );
    let _ = writeln!(
        out,
        "\n{:<16} {:<8} {:>8} {:>9} {:>9} {:>7} {:>8} {:>6} {:>9} {:>9}",
        "component",
        "state",
        "events/s",
        "p99 ms",
        "handled",
        "failed",
        "dead-ltr",
        "traps",
        "published",
        "in flight"
    );
    for comp in d["components"].as_array().into_iter().flatten() {
        let k = &comp["counters"];
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:>8.1} {:>9.3} {:>9} {:>7} {:>8} {:>6} {:>9} {:>9}",
            text(&comp["name"]),
            text(&comp["state"]),
            f(&comp["now"]["handled_per_s"]),
            f(&comp["now"]["p99_ms"]),
            n(&k["handled"]),
            n(&k["failed"]),
            n(&k["dead_lettered"]),
            n(&k["traps"]),
            n(&k["published"]),
            n(&k["in_flight"]),
        );
    }
    let _ = writeln!(out);
    for l in d["cache_layers"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "cache {}: hit rate {:.1}% ({} hits, {} misses), {} errors, {} entries, {} bytes",
            text(&l["layer"]),
            f(&l["hit_rate"]) * 100.0,
            n(&l["hits"]),
            n(&l["misses"]),
            n(&l["errors"]),
            n(&l["entries"]),
            n(&l["bytes"])
        );
    }
    let alerts = d["recent_alerts"].as_array().map_or(&[][..], Vec::as_slice);
    if let Some(last) = alerts.last() {
        let _ = writeln!(
            out,
            "cache alerts: {} recent, last: {} ({})",
            alerts.len(),
            text(&last["message"]),
            text(&last["timestamp"])
        );
    }
    out
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

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn init_logging(format: LogFormat) {
    init_logging_at(format, "info,cranelift=warn,wasmtime=warn,async_nats=warn");
}

fn init_logging_at(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: a log file or a shipper gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use weir::stats::ComponentStats;

    #[tokio::test]
    async fn status_screen_shows_components_counters_and_readiness() {
        let busy = Arc::new(ComponentStats::default());
        let flow = busy.add_flow();
        for _ in 0..7 {
            ComponentStats::bump(&flow.handled);
        }
        ComponentStats::bump(&flow.dead_lettered);
        let o = weir::observe::Observed::new(
            "h1",
            vec![
                ("sma-crossover".into(), busy),
                ("price-alert".into(), Arc::default()),
            ],
        );
        let screen = super::status_screen(&weir::observe::dashboard(&o, None).await);
        let lines: Vec<&str> = screen.lines().collect();
        assert!(lines[0].starts_with("host h1  up 0s  ready"), "{screen}");
        assert!(lines[1].contains("embedded bus"), "{screen}");
        let sma: Vec<&str> = lines
            .iter()
            .find(|l| l.starts_with("sma-crossover"))
            .unwrap()
            .split_whitespace()
            .collect();
        // name, state, events/s, p99, handled, failed, dead-lettered, ...
        assert_eq!((sma[1], sma[4], sma[6]), ("idle", "7", "1"), "{screen}");
        assert!(screen.contains("price-alert"), "{screen}");
    }
}
