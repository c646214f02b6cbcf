//! `weir streams`: JetStream streams and consumers defined as JSON files.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use weir::bus::NatsBus;
use weir::manifest::{LogFormat, NatsSettings};
use weir::streams;

/// Manages JetStream streams and consumers defined as JSON files.
#[derive(clap::Args)]
pub struct StreamsArgs {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    server: String,
    #[command(subcommand)]
    action: StreamsAction,
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

/// Runs the action and prints its lines.
pub async fn run(args: StreamsArgs) -> anyhow::Result<()> {
    super::init_logging_at(LogFormat::Human, "warn");
    let nats = NatsBus::connect(
        &NatsSettings::with_url(&args.server),
        Path::new("."),
        "weir streams",
    )
    .await?;
    let js = nats.jetstream();
    let lines = match args.action {
        StreamsAction::Apply { dir } => streams::apply(js, &streams::load_dir(&dir)?).await?,
        StreamsAction::Ls => streams::list(js).await?,
        StreamsAction::Info { name } => vec![streams::info(js, &name).await?],
    };
    for l in lines {
        println!("{l}");
    }
    Ok(())
}
