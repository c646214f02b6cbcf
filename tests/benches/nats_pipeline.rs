//! End-to-end load run on a real nats-server (spawned here), each figure
//! against a raw async-nats baseline measured in the same run:
//!
//! 1. events/s through sma-crossover on core NATS vs raw pub→sub;
//! 2. events/s through a JetStream durable consumer with acks vs raw pull+ack;
//! 3. p50/p99 from publishing a trade to receiving its signal at a fixed
//!    10k events/s vs a native relay (sub → publish) over the same two hops;
//! 4. a poison flood: trades in a schema sma-crossover cannot read, on the
//!    same durable consumer, dead-lettered into a `DLQ` stream (each dead
//!    letter stored before its original is terminated), vs well-formed
//!    trades handled on it.
//!
//! Run with `just bench` (or `cargo bench -p weir-tests --bench nats_pipeline`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark code

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use futures::StreamExt;
use weir::Host;
use weir_tests::manifest;
use weir_tests::servers::NatsServer;

/// Events of the core run: at 0.5–1 M/s, about a second for each side, so
/// that start-up (the first batches, the first signals) is a small part of
/// the figure.
const CORE_EVENTS: u64 = 500_000;
/// Events of the JetStream run (stored twice, once for each side).
const STREAM_EVENTS: usize = 100_000;
const LATENCY_RATE: u64 = 10_000;
const LATENCY_SECS: u64 = 5;
/// Published but not yet consumed, before the publisher waits.
const WINDOW: u64 = 20_000;

/// Synthetic trades: four symbols, random walks, increasing trade ids.
fn trades(n: u64) -> Vec<(String, Bytes)> {
    let mut prices = [64_000.0f64, 3_400.0, 150.0, 580.0];
    let names = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"];
    let mut x: u64 = 0x2545F4914F6CDD1D;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = (i % 4) as usize;
            prices[k] *= 1.0 + ((x % 2001) as f64 - 1000.0) * 1e-6;
            let body = format!(
                r#"{{"symbol":"{}","price":{:.2},"qty":0.1,"ts":{},"trade_id":{}}}"#,
                names[k],
                prices[k],
                1_753_862_400_000u64 + i,
                i + 1
            );
            (format!("TRADE.trade.{}", names[k]), Bytes::from(body))
        })
        .collect()
}

fn sma_manifest(url: &str, subscription: &str) -> weir::Manifest {
    manifest(&format!(
        r#"
[nats]
url = "{url}"

[components.sma-crossover]
wasm = "{{sma}}"
subscribe = [{subscription}]
grants = {{ subscribe = ["TRADE.trade.>"], publish = ["signals.*"], streams = ["TRADE"], cache = "sma" }}
limits = {{ instances = 2 }}
config = {{ fast_window = 5, slow_window = 20 }}
"#
    ))
}

/// Publishes `msgs`, keeping at most WINDOW ahead of `consumed`; returns
/// the time until `consumed` reached the count.
async fn pump(
    client: &async_nats::Client,
    msgs: &[(String, Bytes)],
    consumed: impl Fn() -> u64,
) -> Duration {
    let start = Instant::now();
    // Asked only when the window looks full: weir's count costs more than
    // the raw subscriber's atomic, and the publisher must not pay for it.
    let mut seen = 0;
    for (i, (s, b)) in msgs.iter().enumerate() {
        if i as u64 > seen + WINDOW {
            seen = wait_for_count(&consumed, i as u64 - WINDOW, 200).await;
        }
        client.publish(s.clone(), b.clone()).await.unwrap();
    }
    client.flush().await.unwrap();
    wait_for_count(&consumed, msgs.len() as u64, 200).await;
    start.elapsed()
}

/// Polls `count` every `every_us` until it reaches `at_least`; returns it.
/// Stops the bench with the count, instead of hanging, when it stalls
/// for a minute (core NATS delivers at most once).
async fn wait_for_count(count: &impl Fn() -> u64, at_least: u64, every_us: u64) -> u64 {
    let stuck = Instant::now() + Duration::from_secs(60);
    loop {
        let n = count();
        if n >= at_least {
            return n;
        }
        assert!(
            Instant::now() < stuck,
            "stalled at {n} messages consumed, waiting for {at_least}"
        );
        tokio::time::sleep(Duration::from_micros(every_us)).await;
    }
}

/// How many events went through `handle-batch` calls, and how many per call.
fn batching(part: &str, host: &Host) {
    let s = &host.component_stats()[0].1;
    println!(
        "batching {part:<9} {} of {} events in {} handle-batch calls ({:.1} per call)",
        s.batched,
        s.handled,
        s.batches,
        s.batched as f64 / s.batches.max(1) as f64
    );
}

/// CPU time so far (ns, from the kernel's per-thread `schedstat`) of this
/// process's runtime workers, of its other threads (the publisher runs in
/// `block_on` on the main thread) and of nats-server.
#[derive(Clone, Copy)]
struct Cpu {
    workers: u64,
    others: u64,
    server: u64,
}

impl Cpu {
    fn now(server: &NatsServer) -> Cpu {
        let (workers, others) = threads_cpu("self");
        let server = server
            .pid()
            .map(|p| {
                let (a, b) = threads_cpu(&p.to_string());
                a + b
            })
            .unwrap_or(0);
        Cpu {
            workers,
            others,
            server,
        }
    }

    /// µs of CPU per event since `before`, for each part.
    fn report(part: &str, who: &str, before: Cpu, after: Cpu, events: u64) {
        let per = |a: u64, b: u64| (a - b) as f64 / 1e3 / events as f64;
        println!(
            "cpu per event    {part} {who:<6} runtime workers {:.2} µs, other threads {:.2} µs, nats-server {:.2} µs",
            per(after.workers, before.workers),
            per(after.others, before.others),
            per(after.server, before.server),
        );
    }
}

/// (tokio worker threads, other threads) CPU ns of process `pid`.
fn threads_cpu(pid: &str) -> (u64, u64) {
    let (mut workers, mut others) = (0, 0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    for task in tasks.flatten() {
        let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
        let ns: u64 = read("schedstat")
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if read("comm").starts_with("tokio-rt-worker") {
            workers += ns;
        } else {
            others += ns;
        }
    }
    (workers, others)
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

async fn core_throughput(server: &NatsServer, msgs: &[(String, Bytes)]) -> (f64, f64) {
    // Raw: a subscriber on its own connection counts.
    let sub_client = server.client().await;
    let mut sub = sub_client.subscribe("TRADE.trade.>").await.unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let counter = tokio::spawn(async move {
        while sub.next().await.is_some() {
            g.fetch_add(1, Ordering::Relaxed);
        }
    });
    sub_client.flush().await.unwrap();
    let publisher = server.client().await;
    let before = Cpu::now(server);
    let raw = pump(&publisher, msgs, || got.load(Ordering::Relaxed)).await;
    Cpu::report("core", "raw", before, Cpu::now(server), msgs.len() as u64);
    counter.abort();

    let host = Host::start(&sma_manifest(
        &server.url(),
        r#"{ subject = "TRADE.trade.*" }"#,
    ))
    .await
    .unwrap();
    host.nats().unwrap().client().flush().await.unwrap();
    let before = Cpu::now(server);
    let weir = pump(&publisher, msgs, || host.component_stats()[0].1.handled).await;
    Cpu::report("core", "weir", before, Cpu::now(server), msgs.len() as u64);
    batching("core", &host);
    host.shutdown(Duration::from_secs(5)).await;
    (rate(msgs.len() as u64, raw), rate(msgs.len() as u64, weir))
}

async fn load_stream(js: &jetstream::Context, msgs: &[(String, Bytes)]) {
    let _ = js.delete_stream("TRADE").await;
    js.create_stream(stream::Config {
        name: "TRADE".into(),
        subjects: vec!["TRADE.trade.>".into()],
        storage: stream::StorageType::Memory,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    weir_tests::publish_acked(js, msgs.iter().cloned()).await;
}

async fn jetstream_throughput(server: &NatsServer, msgs: &[(String, Bytes)]) -> (f64, f64) {
    let js = jetstream::new(server.client().await);
    let n = msgs.len() as u64;

    load_stream(&js, msgs).await;
    let consumer = js
        .get_stream("TRADE")
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    // Both clocks run from the first message handled to the last, so that
    // neither side's start-up (weir compiles its component) is counted.
    let mut stream = consumer.messages().await.unwrap();
    let mut first = None;
    let mut seen = 0;
    while seen < n {
        // A missed idle heartbeat (the machine was busy) is a warning: the
        // stream goes on, as weir's own pulls do.
        let m = match stream.next().await.unwrap() {
            Ok(m) => m,
            Err(e) if e.kind() == pull::MessagesErrorKind::MissingHeartbeat => continue,
            Err(e) => panic!("raw pull: {e}"),
        };
        m.ack().await.unwrap();
        first.get_or_insert_with(Instant::now);
        seen += 1;
    }
    let raw = first.unwrap().elapsed();
    drop(stream);

    load_stream(&js, msgs).await;
    let sub = r#"{ subject = "TRADE.trade.>", stream = "TRADE", consumer = "sma" }"#;
    let host = Host::start(&sma_manifest(&server.url(), sub))
        .await
        .unwrap();
    let handled = || host.component_stats()[0].1.handled;
    let counted = wait_for_count(&handled, 1, 100).await;
    let start = Instant::now();
    wait_for_count(&handled, n, 500).await;
    let weir = start.elapsed();
    batching("jetstream", &host);
    host.shutdown(Duration::from_secs(5)).await;
    (rate(n - 1, raw), rate(n - counted, weir))
}

/// The trades in a schema an upstream change might bring: other field
/// names, the price as a string. sma-crossover rejects every one.
fn poisoned(msgs: &[(String, Bytes)]) -> Vec<(String, Bytes)> {
    msgs.iter()
        .enumerate()
        .map(|(i, (subject, _))| {
            let symbol = subject.rsplit('.').next().unwrap_or("X");
            let body = format!(r#"{{"sym":"{symbol}","px":"64000.5","quantity":0.1,"time":{i}}}"#);
            (subject.clone(), Bytes::from(body))
        })
        .collect()
}

/// Events/s of sma-crossover on the durable consumer from its first
/// settled message to the last (`settled` counts them), with every one
/// settled and nothing left on the consumer.
async fn on_the_consumer(
    server: &NatsServer,
    js: &jetstream::Context,
    settled: impl Fn(&weir::stats::ComponentSnapshot) -> u64,
    who: &str,
) -> f64 {
    let sub = r#"{ subject = "TRADE.trade.>", stream = "TRADE", consumer = "sma" }"#;
    let host = Host::start(&sma_manifest(&server.url(), sub))
        .await
        .unwrap();
    let count = || settled(&host.component_stats()[0].1);
    let n = weir_tests::stream_messages(js, "TRADE").await;
    let counted = wait_for_count(&count, 1, 100).await;
    let start = Instant::now();
    let before = Cpu::now(server);
    wait_for_count(&count, n, 500).await;
    weir_tests::wait_for_drained(js, "TRADE", "sma", Duration::from_secs(60)).await;
    let took = start.elapsed();
    Cpu::report("poison", who, before, Cpu::now(server), n - counted);
    host.shutdown(Duration::from_secs(5)).await;
    rate(n - counted, took)
}

/// Well-formed trades handled vs the same number of poisoned ones
/// dead-lettered, on the same stream, consumer and host settings.
async fn poison_flood(server: &NatsServer, msgs: &[(String, Bytes)]) -> (f64, f64) {
    let js = jetstream::new(server.client().await);
    let _ = js.delete_stream("DLQ").await;
    js.create_stream(stream::Config {
        name: "DLQ".into(),
        subjects: vec!["dlq.>".into()],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap();
    load_stream(&js, msgs).await;
    let handled = on_the_consumer(server, &js, |s| s.handled, "handled").await;
    load_stream(&js, &poisoned(msgs)).await;
    let dead = on_the_consumer(server, &js, |s| s.dead_lettered, "dead").await;
    let stored = weir_tests::stream_messages(&js, "DLQ").await;
    assert_eq!(
        stored,
        msgs.len() as u64,
        "every poisoned trade is in the DLQ stream"
    );
    (handled, dead)
}

/// Publishes at LATENCY_RATE; returns the latencies (µs) of the trades
/// whose signal (or relayed copy) arrived on `signals.>`, sorted, each with
/// when its trade was published (seconds into the run).
async fn latencies(
    server: &NatsServer,
    msgs: &[(String, Bytes)],
    signalled: &std::collections::HashSet<u64>,
) -> Vec<(f64, f64)> {
    let rx_client = server.client().await;
    let mut sub = rx_client.subscribe("signals.>").await.unwrap();
    rx_client.flush().await.unwrap();
    let sent: Arc<std::sync::Mutex<HashMap<u64, Instant>>> = Arc::default();
    let s2 = sent.clone();
    let start = Instant::now();
    let expect = signalled.len();
    let receiver = tokio::spawn(async move {
        let mut out = Vec::with_capacity(expect);
        while out.len() < expect {
            let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await else {
                break;
            };
            let now = Instant::now();
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let id = v["trade_id"].as_u64().unwrap();
            if let Some(t) = s2.lock().unwrap().get(&id) {
                out.push((
                    now.duration_since(*t).as_secs_f64() * 1e6,
                    t.duration_since(start).as_secs_f64(),
                ));
            }
        }
        out
    });
    let publisher = server.client().await;
    for (i, (s, b)) in msgs.iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / LATENCY_RATE as f64);
        tokio::time::sleep_until(due.into()).await;
        let id = i as u64 + 1;
        if signalled.contains(&id) {
            sent.lock().unwrap().insert(id, Instant::now());
        }
        publisher.publish(s.clone(), b.clone()).await.unwrap();
    }
    publisher.flush().await.unwrap();
    let mut out = receiver.await.unwrap();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

fn pct(v: &[(f64, f64)], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize].0
}

/// The tail of a latency run: p90, p95, p99, max and when the slowest
/// trades were published, to tell a start-up transient from steady stalls.
fn tail(who: &str, v: &[(f64, f64)]) {
    let slowest: Vec<String> = v
        .iter()
        .rev()
        .take(8)
        .map(|(l, at)| format!("{:.1}ms@{at:.2}s", l / 1e3))
        .collect();
    println!(
        "latency tail     {who:<6} n {} p90 {:.0} µs p95 {:.0} µs p99 {:.0} µs max {:.0} µs; slowest: {}",
        v.len(),
        pct(v, 0.90),
        pct(v, 0.95),
        pct(v, 0.99),
        pct(v, 1.0),
        slowest.join(" ")
    );
}

async fn latency(server: &NatsServer, msgs: &[(String, Bytes)]) -> ((f64, f64), (f64, f64)) {
    // Which trades produce a signal: run the reference over them.
    let bus_msgs: Vec<weir::bus::BusMessage> = msgs
        .iter()
        .map(|(s, b)| weir::bus::BusMessage::new(s.clone(), b.clone()))
        .collect();
    let signalled: std::collections::HashSet<u64> =
        weir_tests::reference::sma_signals(&bus_msgs, 5, 20)
            .values()
            .flatten()
            .map(|s| s.trade_id)
            .collect();

    // Raw: a native relay republishes the signalling trades as signals.
    let relay_client = server.client().await;
    let mut relay_sub = relay_client.subscribe("TRADE.trade.>").await.unwrap();
    let relay_ids = signalled.clone();
    let relay = tokio::spawn(async move {
        while let Some(m) = relay_sub.next().await {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            if relay_ids.contains(&v["trade_id"].as_u64().unwrap()) {
                relay_client
                    .publish("signals.RAW", m.payload)
                    .await
                    .unwrap();
            }
        }
    });
    let raw = latencies(server, msgs, &signalled).await;
    relay.abort();

    let host = Host::start(&sma_manifest(
        &server.url(),
        r#"{ subject = "TRADE.trade.*" }"#,
    ))
    .await
    .unwrap();
    host.nats().unwrap().client().flush().await.unwrap();
    let weir = latencies(server, msgs, &signalled).await;
    batching("latency", &host);
    host.shutdown(Duration::from_secs(5)).await;
    assert!(
        weir.len() * 10 >= signalled.len() * 9,
        "lost signals: {} of {}",
        weir.len(),
        signalled.len()
    );
    tail("relay", &raw);
    tail("weir", &weir);
    (
        (pct(&raw, 0.5), pct(&raw, 0.99)),
        (pct(&weir, 0.5), pct(&weir, 0.99)),
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // `nats_pipeline core|jetstream|latency` runs only those parts
    // (cargo passes `--bench`, which is ignored).
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    rt.block_on(async {
        let server = NatsServer::start();
        let msgs = trades(CORE_EVENTS);
        if run("core") {
            let (raw, weir) = core_throughput(&server, &msgs).await;
            println!("core NATS        raw pub→sub {raw:>10.0} ev/s   weir sma-crossover {weir:>10.0} ev/s   ratio {:.2}x (target ≥ 0.5)", weir / raw);
            println!("TABLE|nats_pipeline: events/s on core NATS|{weir:.0} ev/s|raw pub→sub {raw:.0} ev/s|{:.2}x|≥ 0.5x", weir / raw);
        }
        if run("jetstream") {
            let (raw, weir) = jetstream_throughput(&server, &msgs[..STREAM_EVENTS]).await;
            println!("JetStream        raw pull+ack {raw:>9.0} ev/s   weir durable consumer {weir:>7.0} ev/s   ratio {:.2}x (target ≥ 0.8)", weir / raw);
            println!("TABLE|nats_pipeline: events/s, JetStream durable consumer|{weir:.0} ev/s|raw pull+ack {raw:.0} ev/s|{:.2}x|≥ 0.8x", weir / raw);
        }
        if run("poison") {
            let (handled, dead) = poison_flood(&server, &msgs[..STREAM_EVENTS]).await;
            println!("poison flood     handled {handled:>9.0} ev/s   dead-lettered {dead:>9.0} ev/s   ratio {:.2}x (target ≥ 0.5)", dead / handled);
            println!("TABLE|nats_pipeline: poison flood dead-lettered, JetStream|{dead:.0} ev/s|well-formed handled {handled:.0} ev/s|{:.2}x|≥ 0.5x", dead / handled);
        }
        if run("latency") {
            let lat_msgs = trades(LATENCY_RATE * LATENCY_SECS);
            let ((rp50, rp99), (wp50, wp99)) = latency(&server, &lat_msgs).await;
            println!(
                "latency @10k/s   raw relay p50 {rp50:.0} µs p99 {rp99:.0} µs   weir p50 {wp50:.0} µs p99 {wp99:.0} µs   p99 ratio {:.2}x (target ≤ 1.5)",
                wp99 / rp99
            );
            println!(
                "TABLE|nats_pipeline: trade → signal p99 at 10k ev/s|{wp99:.0} µs|native relay {rp99:.0} µs|{:.2}x|≤ 1.5x",
                wp99 / rp99
            );
        }
    });
}
