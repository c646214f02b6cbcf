//! What a user sees from the `weir` binary when something is wrong: one
//! clear line on stderr and a failing exit code, whatever the environment
//! (`RUST_BACKTRACE=1` included).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::process::Command;

fn weir(args: &[&str]) -> (bool, String) {
    let (ok, _, stderr) = weir_out(args);
    (ok, stderr)
}

/// Success, stdout and stderr.
fn weir_out(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .env_remove("NATS_URL")
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line(stderr: &str, says: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, no backtrace: {stderr}");
    assert!(lines[0].starts_with("Error: "), "{stderr}");
    assert!(lines[0].contains(says), "{stderr}");
    assert!(!stderr.contains("Stack backtrace"), "{stderr}");
}

#[test]
fn a_manifest_problem_is_one_line() {
    let dir = std::env::temp_dir().join(format!("weir-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[components.x]\nwasm = \"missing.wasm\"\nsubscribe = [{ subject = \"a.b\" }]\ngrants = { subscribe = [\"a.b\"] }\n",
    )
    .unwrap();
    let (ok, stderr) = weir(&["check", path.to_str().unwrap()]);
    assert!(!ok);
    assert_one_line(&stderr, "missing.wasm");

    std::fs::write(&path, "[components.x\nwasm = 1\n").unwrap();
    let (ok, stderr) = weir(&["check", path.to_str().unwrap()]);
    assert!(!ok);
    assert_one_line(&stderr, "bad.toml");
}

#[test]
fn a_missing_server_is_one_line() {
    // Port 9 (discard) has no NATS server on loopback.
    let (ok, stderr) = weir(&["streams", "--server", "nats://127.0.0.1:9", "ls"]);
    assert!(!ok);
    assert_one_line(&stderr, "cannot connect to NATS at nats://127.0.0.1:9");
}

#[test]
fn inspect_names_what_a_component_imports_that_weir_lacks() {
    let dir = std::env::temp_dir().join(format!("weir-cli-inspect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("http.wasm");
    let bytes = wat::parse_str(
        r#"(component
            (import "wasi:http/types@0.2.0" (instance
                (export "http-error-code" (func (result u32)))))
            (import "wasi:io/poll@0.2.0" (instance)))"#,
    )
    .unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let (ok, stdout, stderr) = weir_out(&["inspect", path.to_str().unwrap()]);
    assert!(!ok, "a component weir would refuse fails the command");
    assert_one_line(
        &stderr,
        "imports wasi:http/types@0.2.0, which weir does not provide",
    );
    assert!(stdout.contains("  - wasi:http/types@0.2.0\n"), "{stdout}");
    assert!(stdout.contains("  + wasi:io/poll@0.2.0\n"), "{stdout}");
    assert!(
        stdout.contains(&format!("sha256   {}", weir::digest::sha256_hex(&bytes))),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("size     {} bytes", bytes.len())),
        "{stdout}"
    );

    let (ok, stdout, _) = weir_out(&["inspect", "--json", path.to_str().unwrap()]);
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["world"], serde_json::Value::Null);
    assert_eq!(v["imports"][0]["name"], "wasi:http/types@0.2.0");
    assert_eq!(v["imports"][0]["provided"], false);

    std::fs::write(&path, b"not wasm").unwrap();
    let (ok, stderr) = weir(&["inspect", path.to_str().unwrap()]);
    assert!(!ok);
    assert_one_line(&stderr, "is not a WebAssembly component");
}

#[test]
fn inspect_says_whether_a_component_takes_batches_and_decoded_market_data() {
    let wasm = |name: &str| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../target/wasm32-wasip2/release/{name}.wasm"))
    };
    let market = "market   decoded by weir: trades, books and candles (exports weir:host/market-handler@0.1.0)\n";
    // sma-crossover is a `Strategy`: batches and decoded market data.
    let (ok, stdout, _) = weir_out(&["inspect", wasm("sma_crossover").to_str().unwrap()]);
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("batches  yes (exports weir:host/batch-handler@0.1.0)\n"),
        "{stdout}"
    );
    assert!(stdout.contains(market), "{stdout}");
    // predictor takes bytes (`export_handler!`): batches, no market data.
    let (ok, stdout, _) = weir_out(&["inspect", wasm("predictor").to_str().unwrap()]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("batches  yes"), "{stdout}");
    assert!(!stdout.contains("market "), "{stdout}");
    // A wasmCloud component: neither.
    let (ok, stdout, _) = weir_out(&["inspect", wasm("wasmcloud_echo").to_str().unwrap()]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("world    wasmcloud"), "{stdout}");
    assert!(
        !stdout.contains("batches") && !stdout.contains("market "),
        "{stdout}"
    );
}

/// `WEIR_PROFILER=perfmap` writes the map `perf` reads to name a
/// component's compiled functions; a value weir does not know is one line.
#[test]
fn a_profiler_map_names_the_guests_functions() {
    let wasm = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release/sma_crossover.wasm");
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["inspect", wasm.to_str().unwrap()])
        .env("WEIR_PROFILER", "perfmap")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let map = std::path::PathBuf::from(format!("/tmp/perf-{}.map", child.id()));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = std::fs::read_to_string(&map).unwrap();
    std::fs::remove_file(&map).unwrap();
    // `<start> <size> <name>` lines; the strategy's own functions among
    // them (its step is inlined into the SDK's `on_trades` glue).
    let apply = text
        .lines()
        .find(|l| l.contains("sma_crossover8settings"))
        .unwrap_or_else(|| panic!("no sma_crossover::settings in {}", map.display()));
    let fields: Vec<&str> = apply.splitn(3, ' ').collect();
    assert!(
        u64::from_str_radix(fields[0].trim_start_matches("0x"), 16).is_ok_and(|a| a > 0),
        "{apply}"
    );
    assert!(
        u64::from_str_radix(fields[1], 16).is_ok_and(|n| n > 0),
        "{apply}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["inspect", wasm.to_str().unwrap()])
        .env("WEIR_PROFILER", "vtune-please")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_one_line(
        &String::from_utf8_lossy(&out.stderr),
        "WEIR_PROFILER=\"vtune-please\": use perfmap, jitdump or none",
    );
}

/// A running `weir run` takes a new component version on SIGHUP (and keeps
/// running), and on a file change with `--watch`.
#[test]
fn sighup_and_watch_update_a_running_host() {
    let hostile = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release/hostile.wasm");
    assert!(
        hostile.exists(),
        "build the components first (just build-components)"
    );
    let start = |tag: &str, watch: bool| {
        let dir =
            std::env::temp_dir().join(format!("weir-cli-update-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let manifest = dir.join("weir.toml");
        let hostile = hostile.clone();
        let write = move |version: &str| {
            let text = format!(
                "[host]\nhttp = \"127.0.0.1:{port}\"\n[components.t]\nwasm = {hostile:?}\nsubscribe = [{{ subject = \"a.b\" }}]\ngrants = {{ subscribe = [\"a.b\"] }}\nconfig = {{ behaviour = \"ok\", version = \"{version}\" }}\n"
            );
            std::fs::write(&manifest, text).unwrap();
        };
        write("v1");
        let mut args = vec![
            "run".to_owned(),
            dir.join("weir.toml").display().to_string(),
        ];
        if watch {
            args.push("--watch".into());
        }
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(&args)
            .env_remove("NATS_URL")
            .env_remove("REDIS_URL")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        (child, dir, port, write)
    };
    let (mut hup, hup_dir, hup_port, hup_write) = start("hup", false);
    let (mut watched, watched_dir, watched_port, watched_write) = start("watch", true);
    assert_eq!(version_at(hup_port, 1, &hup_dir), 1);
    assert_eq!(version_at(watched_port, 1, &watched_dir), 1);

    hup_write("v2");
    let ok = Command::new("kill")
        .args(["-HUP", &hup.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    assert_eq!(version_at(hup_port, 2, &hup_dir), 2);
    assert!(hup.try_wait().unwrap().is_none(), "SIGHUP stopped weir");

    watched_write("v2");
    assert_eq!(version_at(watched_port, 2, &watched_dir), 2);

    for (child, dir) in [(&mut hup, &hup_dir), (&mut watched, &watched_dir)] {
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(child.wait().unwrap().success());
        let log = std::fs::read_to_string(dir.join("log")).unwrap();
        assert!(log.contains("component updated"), "{log}");
    }
}

/// Polls `/api/status` until the first component runs `want` (30 s at
/// most); the version it last saw.
fn version_at(port: u16, want: u64, dir: &std::path::Path) -> u64 {
    use std::io::{Read, Write};
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = 0;
    while std::time::Instant::now() < until {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /api/status HTTP/1.0\r\n\r\n");
            let mut raw = String::new();
            let _ = s.read_to_string(&mut raw);
            if let Some((_, body)) = raw.split_once("\r\n\r\n")
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(body)
            {
                seen = v["components"][0]["version"].as_u64().unwrap_or(0);
                if seen == want {
                    return seen;
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    panic!("version {seen}, not {want}, after 30 s; log:\n{log}");
}

/// The demo's two components subscribe to the same trades: weir decodes
/// each trade once for both (and for its latest-value store), as
/// `weir_market_decodes_total` on `/metrics` shows.
#[test]
fn the_demo_decodes_each_trade_once_for_both_components() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("weir-cli-decode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let demo = std::fs::read_to_string(root.join("examples/demo.toml")).unwrap();
    let wasm_dir = root.join("target/wasm32-wasip2/release");
    let manifest = demo
        .replace("127.0.0.1:9464", &format!("127.0.0.1:{port}"))
        .replace(
            "../target/wasm32-wasip2/release",
            wasm_dir.to_str().unwrap(),
        );
    assert!(
        manifest.contains(&format!(":{port}")),
        "the demo names its port"
    );
    std::fs::write(dir.join("weir.toml"), manifest).unwrap();
    let trades = root.join("examples/data/trades.ndjson");
    // Each line with a symbol is a trade (the feed puts it on `TRADE.trade.<SYMBOL>`).
    let sent = std::fs::read_to_string(&trades)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('{') && l.contains("\"symbol\":"))
        .count();
    assert!(sent > 1000, "{sent} trades in the sample");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("run")
        .arg(dir.join("weir.toml"))
        .arg("--feed")
        .arg(&trades)
        .arg("--stay")
        .env_remove("NATS_URL")
        .env_remove("REDIS_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let value = |text: &str, series: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    };
    let sma = "weir_messages_handled_total{component=\"sma-crossover\",subject=\"TRADE.trade.*\"} ";
    let alert = "weir_messages_handled_total{component=\"price-alert\",subject=\"TRADE.trade.*\"} ";
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut text = String::new();
    while std::time::Instant::now() < until {
        text = http_get(port, "/metrics").unwrap_or_default();
        if value(&text, sma) == Some(sent as u64) && value(&text, alert) == Some(sent as u64) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(value(&text, sma), Some(sent as u64), "{text}");
    assert_eq!(value(&text, alert), Some(sent as u64), "{text}");
    assert_eq!(
        value(&text, "weir_market_decodes_total "),
        Some(sent as u64),
        "one decode per trade for two components; {text}"
    );
}

/// A port nothing listens on.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of `GET path` on a local port.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}
