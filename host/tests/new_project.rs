//! `weir new`: a generated strategy and alert build outside this repository
//! (in a temporary directory, with the SDK and WIT vendored), pass their own
//! test (`cargo test`: a wasm32-wasip2 build and a `weir replay` over the
//! sample data), and run under `weir run` with their manifest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::path::Path;
use std::process::Command;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn generated_projects_build_on_their_own_pass_their_test_and_run() {
    let dir = std::env::temp_dir().join(format!("weir-new-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // One target directory for both projects' test builds.
    let target = dir.join("target");
    for (kind, name, out, tap) in [
        ("strategy", "momo", "signals.", "signals.>"),
        ("alert", "btc-watch", "alerts.triggered", "alerts.triggered"),
    ] {
        run(Command::new(WEIR)
            .args(["new", kind, name, "--dir"])
            .arg(&dir));
        let project = dir.join(name);
        assert!(!project.starts_with(env!("CARGO_MANIFEST_DIR")));
        // Nothing in it points back into this repository.
        let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
        assert!(!manifest.contains(".."), "{manifest}");

        let test = run(Command::new(env!("CARGO"))
            .arg("test")
            .current_dir(&project)
            // The project finds the weir that made it, with no variable.
            .env_remove("WEIR")
            .env("CARGO_TARGET_DIR", &target));
        assert!(test.contains("1 passed"), "{test}");

        let lib = name.replace('-', "_");
        assert!(
            project
                .join(format!("target/wasm/wasm32-wasip2/release/{lib}.wasm"))
                .is_file()
        );
        let ran = run(Command::new(WEIR)
            .args([
                "run",
                "weir.toml",
                "--feed",
                "data/sample.ndjson",
                "--tap",
                tap,
            ])
            .current_dir(&project)
            .env("RUST_LOG", "warn"));
        let row = ran
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no summary row for {name}:\n{ran}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        // component received handled retried dead-ltr traps published
        assert_eq!((cols[1], cols[2]), ("400", "400"), "{row}");
        assert_eq!((cols[4], cols[5]), ("0", "0"), "{row}");
        assert!(cols[6].parse::<u64>().unwrap() > 0, "{row}");
        assert!(
            ran.contains(out),
            "tapped output shows what it published:\n{ran}"
        );
    }
    // The projects are self-contained: the vendored WIT is weir's own.
    assert_eq!(
        std::fs::read_to_string(dir.join("momo/weir-guest/wit/handler.wit")).unwrap(),
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/handler.wit"))
            .unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
