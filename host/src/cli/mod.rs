//! The `weir` command line: one module per subcommand, each with its clap
//! arguments and its `run`.

mod check;
mod feed;
mod inspect;
mod new;
mod record;
mod registry;
mod replay;
mod run;
mod status;
mod streams;

use std::path::Path;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use weir::manifest::LogFormat;
use weir::telemetry::logs::WithDelivery;
use weir::{EnvOverrides, Manifest};

/// A WebAssembly component host for event-driven trading code.
#[derive(Parser)]
#[command(
    name = "weir",
    version,
    args_override_self = true,
    about = "A WebAssembly component host for event-driven trading code"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(run::RunArgs),
    New(new::NewArgs),
    Inspect(inspect::InspectArgs),
    Check(check::CheckArgs),
    Streams(streams::StreamsArgs),
    Status(status::StatusArgs),
    Replay(replay::ReplayArgs),
    Record(record::RecordArgs),
    Feed(feed::FeedArgs),
    Push(registry::PushArgs),
    Pull(registry::PullArgs),
}

/// Parses the arguments, runs the subcommand, prints an error as one line.
pub fn main() -> std::process::ExitCode {
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
            Command::Run(args) => run::run(args).await,
            Command::New(args) => new::run(args),
            Command::Inspect(args) => inspect::run(args).await,
            Command::Check(args) => check::run(args).await,
            Command::Streams(args) => streams::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Replay(args) => replay::run(args).await,
            Command::Record(args) => record::run(args).await,
            Command::Feed(args) => feed::run(args).await,
            Command::Push(args) => registry::push(args).await,
            Command::Pull(args) => registry::pull(args).await,
        }
    })
}

/// Loads a manifest (with the environment's overrides) and starts logging.
pub(crate) fn load(path: &Path) -> anyhow::Result<Manifest> {
    let m = Manifest::load(path, &EnvOverrides::from_process())?;
    init_logging(m.host.log_format);
    Ok(m)
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub(crate) async fn ctrl_c_or_term() {
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

pub(crate) fn init_logging(format: LogFormat) {
    init_logging_at(format, "info,cranelift=warn,wasmtime=warn,async_nats=warn");
}

pub(crate) fn init_logging_at(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: a log file or a shipper gets plain text.
    // Lines written while a delivery is handled end with its trace fields.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.map_event_format(WithDelivery::text).init(),
        LogFormat::Json => builder.json().map_event_format(WithDelivery::json).init(),
    }
}
