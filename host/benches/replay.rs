//! `weir replay` against the in-process cost of the same work: the demo's
//! two components handling each sample event directly (instances on an L1
//! and the embedded bus, no replay machinery), in the same run.
//!
//! Prints events/s for both and their ratio, the median of interleaved
//! rounds (the machine is noisy). The replay side includes reading and
//! parsing the NDJSON input and writing every record (to a sink).

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark code

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::bus::{BusMessage, EmbeddedBus};
use weir::cache::{CacheStore, MemoryStore, MemoryStoreConfig};
use weir::clock::Clock;
use weir::replay::{Input, Replay, ReplayOptions};
use weir::runtime::{HandleOutcome, Parts, Runtime, RuntimeConfig};
use weir::subject;
use weir::{EnvOverrides, Manifest};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn sample() -> std::path::PathBuf {
    root().join("examples/data/trades.ndjson")
}

/// Every sample event handled by every matching component, directly.
async fn direct(manifest: &Manifest, msgs: &[BusMessage]) -> Duration {
    let runtime = Runtime::new(&RuntimeConfig::for_manifest(manifest)).unwrap();
    let l1: Arc<dyn CacheStore> = Arc::new(MemoryStore::new(MemoryStoreConfig::default()));
    let bus = Arc::new(EmbeddedBus::new());
    let templates = runtime
        .load_manifest(manifest, |_| Parts {
            cache: Some(l1.clone()),
            bus: bus.clone(),
            clock: Clock::System,
            seed: 0,
            market: None,
            stats: None,
            telemetry: weir::telemetry::Telemetry::off(),
        })
        .expect("run `just build-components` first");
    let mut wired = Vec::new();
    for (t, spec) in templates.iter().zip(manifest.components.values()) {
        let filters: Vec<String> = spec
            .subscribe
            .iter()
            .map(|s| s.get_ref().subject.clone())
            .collect();
        wired.push((t, filters, t.instantiate().await.unwrap()));
    }
    let start = Instant::now();
    for m in msgs {
        for (t, filters, instance) in &mut wired {
            for f in filters.iter() {
                if subject::matches(f, &m.subject) {
                    let out = instance.handle(t, m, None, None, 1).await;
                    assert!(matches!(out, HandleOutcome::Handled), "{out:?}");
                }
            }
        }
    }
    start.elapsed()
}

async fn replay(manifest: &Manifest) -> Duration {
    let r = Replay::new(
        manifest,
        Box::new(std::io::sink()),
        ReplayOptions::default(),
    )
    .unwrap();
    let input = Input::file(&sample()).await.unwrap();
    let start = Instant::now();
    r.run(input).await.unwrap();
    start.elapsed()
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let manifest =
        Manifest::load(&root().join("examples/demo.toml"), &EnvOverrides::none()).unwrap();
    let msgs: Vec<BusMessage> = std::fs::read_to_string(sample())
        .unwrap()
        .lines()
        .map(|l| weir::feed::parse_line(l).unwrap())
        .collect();
    let n = msgs.len() as f64;
    let (mut d, mut r) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        d.push(n / rt.block_on(direct(&manifest, &msgs)).as_secs_f64());
        r.push(n / rt.block_on(replay(&manifest)).as_secs_f64());
    }
    d.sort_by(f64::total_cmp);
    r.sort_by(f64::total_cmp);
    println!(
        "\nreplay of the {n} sample events through the demo's two components, median of 7 rounds:"
    );
    println!(
        "  in-process direct {:>9.0} events/s   weir replay --speed max {:>9.0} events/s   ratio {:.2} (target >= 0.80)",
        d[3],
        r[3],
        r[3] / d[3]
    );
    // One row of `just bench`'s summary table.
    println!(
        "TABLE|replay --speed max, demo's two components|{:.0} ev/s|in-process direct {:.0} ev/s|{:.2}x|≥ 0.8x",
        r[3],
        d[3],
        r[3] / d[3]
    );
}
