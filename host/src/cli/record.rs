//! `weir record`: live NATS traffic into the file `weir replay --from` reads.

use std::path::{Path, PathBuf};

use weir::bus::NatsBus;
use weir::manifest::{LogFormat, NatsSettings};

/// Records live NATS traffic in the format `weir replay --from` reads.
#[derive(clap::Args)]
pub struct RecordArgs {
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
}

/// Records until `--count` messages or Ctrl-C.
pub async fn run(args: RecordArgs) -> anyhow::Result<()> {
    super::init_logging_at(LogFormat::Human, "warn");
    let RecordArgs {
        subjects,
        out,
        server,
        count,
    } = args;
    let nats = NatsBus::connect(
        &NatsSettings::with_url(&server),
        Path::new("."),
        "weir record",
    )
    .await?;
    let mut w = super::replay::writer(Some(&out))?;
    let n = weir::replay::record(
        &nats,
        &subjects,
        &mut w,
        count,
        super::ctrl_c_or_term(),
        || {
            eprintln!(
                "recording {} to {} (Ctrl-C to stop)",
                subjects.join(", "),
                out.display()
            );
        },
    )
    .await?;
    eprintln!("recorded {n} messages");
    Ok(())
}
