//! Test harness shared by weir's integration tests: component paths,
//! manifests written to temporary directories, message collectors, and a
//! native reference implementation of the demo components' logic.

#![deny(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support code

pub mod browser;
pub mod partition;
pub mod process;
pub mod reference;
pub mod servers;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use weir::bus::{Bus, BusMessage};
use weir::{EnvOverrides, Host, Manifest};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The demo's two components (as in examples/demo.toml), for [`manifest`].
pub const DEMO: &str = r#"
[components.sma-crossover]
wasm = "{sma}"
subscribe = [{ subject = "TRADE.trade.*" }]
grants = { subscribe = ["TRADE.trade.*"], publish = ["signals.*"], cache = "sma" }
limits = { instances = 2 }
config = { fast_window = 5, slow_window = 20 }

[components.price-alert]
wasm = "{alert}"
subscribe = [{ subject = "TRADE.trade.*" }, { subject = "alerts.created" }]
grants = { subscribe = ["TRADE.trade.*", "alerts.created"], publish = ["alerts.triggered"], cache = "alerts" }

[components.price-alert.config]
alerts = [
    { id = "btc-below-62k", symbol = "BTCUSDT", condition = "below", threshold = 62000 },
    { id = "sol-above-152", symbol = "SOLUSDT", condition = "above", threshold = 152 },
]
"#;

/// Path of a built guest component, e.g. `wasm("sma_crossover")`.
pub fn wasm(name: &str) -> PathBuf {
    let p = root()
        .join("target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: run `just build-components` (or `just test`)",
        p.display()
    );
    p
}

/// The sample market data.
pub fn sample_trades() -> PathBuf {
    root().join("examples/data/trades.ndjson")
}

/// A fresh temporary directory.
pub fn tempdir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "weir-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes manifest text (with `{sma}`, `{alert}`, `{hostile}` standing for
/// the component paths) and loads it without environment overrides.
pub fn manifest(text: &str) -> Manifest {
    let text = text
        .replace("{sma}", &wasm("sma_crossover").display().to_string())
        .replace("{alert}", &wasm("price_alert").display().to_string())
        .replace("{hostile}", &wasm("hostile").display().to_string());
    let dir = tempdir("manifest");
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    Manifest::load(&path, &EnvOverrides::none()).unwrap_or_else(|e| panic!("{e}"))
}

/// Collects every message on a filter, in arrival order.
#[derive(Clone, Default)]
pub struct Collector {
    msgs: Arc<Mutex<Vec<BusMessage>>>,
}

impl Collector {
    /// Subscribes and starts collecting.
    pub async fn start(bus: &dyn Bus, filter: &str) -> Collector {
        let mut sub = bus.subscribe(filter, None).await.unwrap();
        let c = Collector::default();
        let msgs = c.msgs.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                msgs.lock().unwrap().push(m);
            }
        });
        c
    }

    /// A copy of what arrived so far.
    pub fn messages(&self) -> Vec<BusMessage> {
        self.msgs.lock().unwrap().clone()
    }

    /// Payloads parsed as JSON.
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.messages()
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect()
    }

    /// Waits until at least `n` messages arrived (or panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<BusMessage> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "waited {timeout:?} for {n} messages, got {}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Publishes each line of an NDJSON file (trades or envelopes), at most `limit`.
pub async fn feed(host: &Host, path: &Path, limit: usize) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    let mut n = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()).take(limit) {
        let msg = weir::feed::parse_line(line).unwrap();
        while host.backlog() > 2048 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        host.bus().publish(msg).await.unwrap();
        n += 1;
    }
    n
}

/// Lines of the sample data, parsed as bus messages.
pub fn sample_messages(limit: usize) -> Vec<BusMessage> {
    std::fs::read_to_string(sample_trades())
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(limit)
        .map(|l| weir::feed::parse_line(l).unwrap())
        .collect()
}

/// The trades among the first `limit` sample messages (envelopes for
/// other subjects left out).
pub fn sample_trade_messages(limit: usize) -> Vec<BusMessage> {
    sample_messages(limit)
        .into_iter()
        .filter(|m| m.subject.starts_with("TRADE."))
        .collect()
}

/// Polls `GET /readyz` on a host's HTTP address until it answers `code` or
/// `timeout` passes, running `each` before every poll (to make traffic);
/// returns the last answer.
pub async fn readyz_until<F, Fut>(
    addr: &str,
    code: u16,
    timeout: Duration,
    mut each: F,
) -> (u16, String)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let until = tokio::time::Instant::now() + timeout;
    loop {
        each().await;
        let got = weir::observe::http_get(addr, "/readyz").await.unwrap();
        if got.0 == code || tokio::time::Instant::now() > until {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Manifest text for a well-behaved component (`hostile` with behaviour
/// `ok`: counts its messages in the cache) subscribed to `subject`.
pub fn ok_component(name: &str, subject: &str) -> String {
    format!(
        r#"
[components.{name}]
wasm = "{{hostile}}"
subscribe = [{{ subject = "{subject}" }}]
grants = {{ subscribe = ["{subject}"], cache = "{name}" }}
config = {{ behaviour = "ok" }}
"#
    )
}

/// A durable consumer's `(num_pending, num_ack_pending)`: `(0, 0)` once
/// every message was delivered and acknowledged.
pub async fn consumer_backlog(
    js: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
) -> (u64, usize) {
    try_consumer_backlog(js, stream, consumer).await.unwrap()
}

/// [`consumer_backlog`], or why JetStream did not say.
pub async fn try_consumer_backlog(
    js: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
) -> Result<(u64, usize), String> {
    let mut c = js
        .get_stream(stream)
        .await
        .map_err(|e| e.to_string())?
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(consumer)
        .await
        .map_err(|e| e.to_string())?;
    let info = c.info().await.map_err(|e| e.to_string())?;
    Ok((info.num_pending, info.num_ack_pending))
}

/// Waits until a durable consumer has delivered and had acknowledged
/// everything (fails after `timeout`, with what it still holds).
pub async fn wait_for_drained(
    js: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
    timeout: Duration,
) {
    let until = tokio::time::Instant::now() + timeout;
    loop {
        // JetStream may answer "temporarily unavailable" for a moment after
        // a node rejoins: ask again, until the time runs out.
        let backlog = try_consumer_backlog(js, stream, consumer).await;
        if backlog == Ok((0, 0)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{stream}/{consumer} still holds {backlog:?} (pending, unacknowledged)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a stream holds at least `n` messages (fails after `timeout`).
pub async fn wait_for_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
    n: u64,
    timeout: Duration,
) {
    let have = stream_reaches(js, name, n, timeout).await;
    assert!(
        have >= n,
        "stream {name}: {have} of {n} messages after {timeout:?}"
    );
}

/// Waits until a stream holds at least `n` messages or `timeout` has
/// passed, and says how many it holds (for a test that has more to show
/// than the count when it falls short).
pub async fn stream_reaches(
    js: &async_nats::jetstream::Context,
    name: &str,
    n: u64,
    timeout: Duration,
) -> u64 {
    let until = tokio::time::Instant::now() + timeout;
    loop {
        let have = stream_messages(js, name).await;
        if have >= n || tokio::time::Instant::now() >= until {
            return have;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many messages a stream holds.
pub async fn stream_messages(js: &async_nats::jetstream::Context, name: &str) -> u64 {
    js.get_stream(name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

/// Creates a stream of `subject` named `name`, with the server's defaults.
pub async fn create_stream(js: &async_nats::jetstream::Context, name: &str, subject: &str) {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("cannot create stream {name}: {e}"));
}

/// Publishes every message to JetStream, 1000 acks in flight at most,
/// and waits until the stream has confirmed each one.
pub async fn publish_acked(
    js: &async_nats::jetstream::Context,
    msgs: impl IntoIterator<Item = (String, bytes::Bytes)>,
) {
    let mut acks = Vec::with_capacity(1000);
    for (subject, payload) in msgs {
        acks.push(js.publish(subject, payload).await.unwrap());
        if acks.len() == 1000 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// What the hostile component's `tag` behaviour put out on `tag.out`:
/// `(version, sequence)` in arrival order.
#[derive(Clone, Default)]
pub struct Tags(pub Arc<Mutex<Vec<(String, u64)>>>);

impl Tags {
    /// Subscribes on a plain client and starts collecting.
    pub async fn collect(client: &async_nats::Client) -> Tags {
        let tags = Tags::default();
        let mut sub = client.subscribe("tag.out").await.unwrap();
        client.flush().await.unwrap();
        let sink = tags.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let text = String::from_utf8(m.payload.to_vec()).unwrap();
                let (v, seq) = text.split_once('|').unwrap();
                sink.0
                    .lock()
                    .unwrap()
                    .push((v.to_owned(), seq.parse().unwrap()));
            }
        });
        tags
    }

    /// Outputs so far.
    #[allow(clippy::len_without_is_empty)] // a count, not a container
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Outputs from `version`.
    pub fn count(&self, version: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(v, _)| v == version)
            .count()
    }

    /// Waits for `n` outputs (60 s at most).
    pub async fn wait_for(&self, n: usize, what: &str) {
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.len() < n {
            assert!(
                tokio::time::Instant::now() < until,
                "{what}: {} of {n} outputs",
                self.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for `n` outputs from `version` (60 s at most).
    pub async fn wait_for_version(&self, version: &str, n: usize) {
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.count(version) < n {
            assert!(
                tokio::time::Instant::now() < until,
                "{} of {n} outputs from {version}",
                self.count(version)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How many times each sequence came out.
    pub fn times(&self) -> std::collections::BTreeMap<u64, usize> {
        let mut times = std::collections::BTreeMap::new();
        for (_, seq) in self.0.lock().unwrap().iter() {
            *times.entry(*seq).or_default() += 1;
        }
        times
    }
}

/// The venv's Python, made by `just test` (`just pytools`); `WEIR_PYTHON` overrides.
pub fn python() -> String {
    std::env::var("WEIR_PYTHON").unwrap_or_else(|_| {
        let p = root().join("target/py/bin/python");
        assert!(
            p.is_file(),
            "{} is missing: run `just pytools` (part of `just test`)",
            p.display()
        );
        p.display().to_string()
    })
}

/// Runs the Prometheus project's OpenMetrics parser over a scrape
/// (`tests/tools/openmetrics_check.py`): its verdict, and the histograms it
/// read with their exemplars.
pub fn openmetrics_check(scrape: &str) -> Result<Vec<serde_json::Value>, String> {
    let mut child = std::process::Command::new(python())
        .arg(root().join("tests/tools/openmetrics_check.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

/// A `Write` a test can read back (a replay's output, say).
#[derive(Clone, Default)]
pub struct Buffer(pub Arc<Mutex<Vec<u8>>>);

impl Buffer {
    /// What was written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

impl std::io::Write for Buffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
