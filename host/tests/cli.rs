//! What a user sees from the `weir` binary when something is wrong: one
//! clear line on stderr and a failing exit code, whatever the environment
//! (`RUST_BACKTRACE=1` included).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::process::Command;

fn weir(args: &[&str]) -> (bool, String) {
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
