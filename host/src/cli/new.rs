//! `weir new strategy|alert NAME [--dir D]`: a component crate that builds
//! outside this repository. The SDK (`weir-guest`) and the WIT it is built
//! against are vendored into it from this binary, so the project needs
//! nothing but crates.io and a `weir` binary to test and run it.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// What kind of component to make.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    /// Trades in, signals out (`signals.<SYMBOL>`).
    Strategy,
    /// Trades in, alerts out (`alerts.triggered`).
    Alert,
}

/// The SDK's sources, as `weir-guest/<path>` in the new project.
const SDK: &[(&str, &str)] = &[
    ("src/lib.rs", include_str!("../../../guest/src/lib.rs")),
    ("src/alloc.rs", include_str!("../../../guest/src/alloc.rs")),
    ("src/batch.rs", include_str!("../../../guest/src/batch.rs")),
    ("src/cache.rs", include_str!("../../../guest/src/cache.rs")),
    (
        "src/config.rs",
        include_str!("../../../guest/src/config.rs"),
    ),
    (
        "src/events.rs",
        include_str!("../../../guest/src/events.rs"),
    ),
    (
        "src/events/trade_scan.rs",
        include_str!("../../../guest/src/events/trade_scan.rs"),
    ),
    (
        "src/messaging.rs",
        include_str!("../../../guest/src/messaging.rs"),
    ),
    (
        "src/strategy.rs",
        include_str!("../../../guest/src/strategy.rs"),
    ),
    // weir's own WIT package: what the SDK's bindings are generated from.
    ("wit/types.wit", include_str!("../../../wit/types.wit")),
    ("wit/cache.wit", include_str!("../../../wit/cache.wit")),
    (
        "wit/messaging.wit",
        include_str!("../../../wit/messaging.wit"),
    ),
    ("wit/handler.wit", include_str!("../../../wit/handler.wit")),
    ("wit/config.wit", include_str!("../../../wit/config.wit")),
    ("wit/logging.wit", include_str!("../../../wit/logging.wit")),
    ("wit/market.wit", include_str!("../../../wit/market.wit")),
    ("wit/worlds.wit", include_str!("../../../wit/worlds.wit")),
];

const SDK_CARGO: &str = r#"[package]
name = "weir-guest"
description = "SDK for weir components (vendored by `weir new`)"
version = "0.1.0"
edition = "2024"
license = "Apache-2.0"
publish = false

[features]
default = ["small-blocks"]
small-blocks = []

[dependencies]
serde = { version = "1", features = ["derive"] }
serde_json = "1"
wit-bindgen = { version = "0.63", default-features = false, features = ["macros", "realloc", "std"] }
"#;

/// Creates a component project (strategy or alert) that builds on its
/// own, with the SDK, a manifest entry, sample data and a test.
#[derive(clap::Args)]
pub struct NewArgs {
    /// What it is.
    kind: Kind,
    /// Its crate name, cache namespace and manifest key.
    name: String,
    /// Where to create it (the project is DIR/NAME).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

/// Makes the project; prints where it is and what to run next.
pub fn run(args: NewArgs) -> anyhow::Result<()> {
    let NewArgs { kind, name, dir } = args;
    let (name, dir) = (name.as_str(), dir.as_path());
    check_name(name)?;
    let root = dir.join(name);
    if root.exists() {
        bail!(
            "{} already exists; pick another name or --dir",
            root.display()
        );
    }
    for (path, text) in files(kind, name) {
        let path = root.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("created {} ({kind:?})", root.display());
    println!(
        "  cd {} && cargo test     # builds it for wasm32-wasip2 and replays data/sample.ndjson",
        root.display()
    );
    println!("  weir run weir.toml --feed data/sample.ndjson --tap '>'");
    Ok(())
}

/// A crate name that is also a valid cache namespace and subject token.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        bail!(
            "{name:?} is not a usable name: start with a lowercase letter, then lowercase letters, digits, '-' or '_' (at most 64)"
        );
    }
    Ok(())
}

/// Every file of the project, by path relative to its root.
fn files(kind: Kind, name: &str) -> Vec<(PathBuf, String)> {
    // The project's test runs the `weir` that made it (a Rust string literal).
    let weir_path = std::env::current_exe()
        .map(|p| format!("{:?}", p.display().to_string()))
        .unwrap_or_else(|_| "\"weir\"".to_owned());
    let lib = name.replace('-', "_");
    let (source, noun, out_prefix, publish, config) = match kind {
        Kind::Strategy => (
            include_str!("../../templates/strategy.rs.txt"),
            "signal",
            "signals.",
            "signals.*",
            "{ window = 20 }",
        ),
        Kind::Alert => (
            include_str!("../../templates/alert.rs.txt"),
            "alert",
            "alerts.triggered",
            "alerts.triggered",
            "{ symbol = \"BTCUSDT\", threshold = 64000 }",
        ),
    };
    let fill = |t: &str| {
        t.replace("{name}", name)
            .replace("{kind}", noun)
            .replace("{out_prefix}", out_prefix)
            .replace("{weir_path}", &weir_path)
    };
    let mut out = vec![
        (PathBuf::from("Cargo.toml"), cargo_toml(name)),
        (PathBuf::from("src/lib.rs"), fill(source)),
        (
            PathBuf::from("tests/replay.rs"),
            fill(include_str!("../../templates/replay_test.rs.txt")),
        ),
        (
            PathBuf::from("weir.toml"),
            manifest(name, &lib, publish, config),
        ),
        (PathBuf::from("data/sample.ndjson"), sample_trades()),
        (PathBuf::from("README.md"), readme(kind, name, noun)),
        (PathBuf::from(".gitignore"), "/target\n".to_owned()),
        (PathBuf::from("weir-guest/Cargo.toml"), SDK_CARGO.to_owned()),
    ];
    out.extend(
        SDK.iter()
            .map(|(p, text)| (Path::new("weir-guest").join(p), (*text).to_owned())),
    );
    out
}

fn cargo_toml(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
weir-guest = {{ path = "weir-guest" }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

[dev-dependencies]
serde_json = "1"

# Whole-program optimisation: std and serde inline into the handler
# (about 8% fewer instructions per event than without LTO).
[profile.release]
codegen-units = 1
lto = true
debug = false
strip = "debuginfo"

# A project of its own, not part of an enclosing workspace.
[workspace]
"#
    )
}

fn manifest(name: &str, lib: &str, publish: &str, config: &str) -> String {
    format!(
        r#"# weir run weir.toml --feed data/sample.ndjson --tap '>'
# Copy the [components.{name}] table into your own manifest to deploy it.

[components.{name}]
wasm = "target/wasm/wasm32-wasip2/release/{lib}.wasm"
subscribe = [{{ subject = "TRADE.trade.*" }}]
grants = {{ subscribe = ["TRADE.trade.*"], publish = ["{publish}"], cache = "{name}" }}
limits = {{ max_deliver = 3 }}
config = {config}
"#
    )
}

/// 400 trades of two symbols whose prices swing ±1% around 64000 and 150,
/// so the templates have crossings to report.
fn sample_trades() -> String {
    let mut out = String::new();
    for i in 0..400u64 {
        let (symbol, base, id_base) = if i % 2 == 0 {
            ("BTCUSDT", 64_000.0, 3_000_000_000u64)
        } else {
            ("SOLUSDT", 150.0, 800_000_000u64)
        };
        let swing = ((i / 2) as f64 / 12.0).sin() * 0.01;
        let price = (base * (1.0 + swing) * 1000.0).round() / 1000.0;
        let qty = 0.1 + (i % 7) as f64 * 0.05;
        let ts = 1_753_862_400_000 + i * 250;
        out.push_str(&format!(
            "{{\"symbol\":\"{symbol}\",\"price\":{price},\"qty\":{qty:.2},\"ts\":{ts},\"trade_id\":{}}}\n",
            id_base + i / 2 + 1
        ));
    }
    out
}

fn readme(kind: Kind, name: &str, noun: &str) -> String {
    let what = match kind {
        Kind::Strategy => "a strategy: trades in, signals out on `signals.<SYMBOL>`",
        Kind::Alert => "an alert rule: trades in, alerts out on `alerts.triggered`",
    };
    format!(
        r#"# {name}

A weir component, {what}. Made with `weir new`.

```sh
rustup target add wasm32-wasip2
cargo test                      # builds the component and replays data/sample.ndjson through it
weir run weir.toml --feed data/sample.ndjson --tap '>'
```

- `src/lib.rs`: the handler. It uses `weir-guest`, the SDK: a `Strategy` takes the
  trades, books and candles weir decodes (`on_trade`, `on_trades`, `on_depth`,
  `on_ohlcv`) and any other message as bytes (`on_message`); `export_handler!` takes
  every message as bytes instead. Plain `wit-bindgen` against `weir-guest/wit` works
  as well.
- `weir.toml`: the manifest entry: subjects, grants (what it may publish, its cache
  namespace), limits and config.
- `tests/replay.rs`: builds the component for `wasm32-wasip2` (into `target/wasm`)
  and runs `weir replay` over the sample data: every {noun} it publishes is checked,
  and no message may be dead-lettered. It runs the `weir` that made the project
  (or `WEIR`, when set, or the one on the PATH).
- `weir-guest/`: the SDK and the WIT, vendored, so the project builds on its own.

Returning `Err(retry(..))` delivers the message again with backoff; `Err(reject(..))`
dead-letters it on `dlq.<subject>`. Host errors convert with `?`: `denied` and
`invalid` reject, `unavailable`, `timeout` and `limited` retry.
"#
    )
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn names_are_crate_names_and_namespaces() {
        for ok in ["momo", "my-strat", "a1_b"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1x", "My", "a.b", "a b", "a:b", "ü"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
