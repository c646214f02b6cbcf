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
