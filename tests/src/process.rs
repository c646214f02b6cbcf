//! `weir run` as a separate process, so a test can SIGKILL it mid-message,
//! stop it gracefully or send it SIGHUP, as an operator would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The `weir` binary: `WEIR_BIN` when set (benches use a release build),
/// else the one `cargo test --workspace` builds (the host package's
/// integration tests make cargo build it).
pub fn weir_bin() -> PathBuf {
    let p = std::env::var_os("WEIR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::root().join("target/debug/weir"));
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p weir` (`just test` builds it)",
        p.display()
    );
    p
}

/// Runs a `weir` command to its end with extra environment variables:
/// whether it succeeded, its stdout and its stderr.
pub fn weir_command(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(weir_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `weir run MANIFEST`, its output in a log file; killed on drop.
pub struct WeirProcess {
    child: Option<Child>,
    /// stdout and stderr.
    pub log: PathBuf,
}

impl WeirProcess {
    /// Starts `weir run manifest` (no feed: it serves until stopped) and
    /// waits until it says it started.
    pub fn start(manifest: &Path) -> WeirProcess {
        let p = WeirProcess::spawn(manifest);
        p.wait_for_log("weir host started", Duration::from_secs(60));
        p
    }

    /// Starts `weir run manifest` without waiting for it.
    pub fn spawn(manifest: &Path) -> WeirProcess {
        let log = manifest.with_extension("log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(weir_bin())
            .arg("run")
            .arg(manifest)
            .env_remove("NATS_URL")
            .env_remove("REDIS_URL")
            .env(
                "RUST_LOG",
                "info,cranelift=warn,wasmtime=warn,async_nats=warn",
            )
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        WeirProcess {
            child: Some(child),
            log,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal by name (`HUP`, `TERM`, `KILL`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{name} failed");
    }

    /// SIGKILL: no goodbye, messages in hand are left unacknowledged.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for it to exit; whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        self.signal("TERM");
        let Some(mut c) = self.child.take() else {
            return false;
        };
        c.wait().is_ok_and(|s| s.success())
    }

    /// What it has written so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its output contains `text` `times` times (fails after
    /// `timeout`, showing the output).
    pub fn wait_for_log_n(&self, text: &str, times: usize, timeout: Duration) {
        let until = Instant::now() + timeout;
        loop {
            let out = self.output();
            if out.matches(text).count() >= times {
                return;
            }
            assert!(
                Instant::now() < until,
                "weir did not say {text:?} ({times}×) within {timeout:?}:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`WeirProcess::wait_for_log_n`] once.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) {
        self.wait_for_log_n(text, 1, timeout);
    }
}

impl Drop for WeirProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
