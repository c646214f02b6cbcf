//! Soak run (not part of CI or `just bench`: `just soak`, 30 minutes by
//! default, `SOAK_SECS` to change it): trades at 20,000 events/s into an
//! R3 stream of a 3-node nats-server cluster, handled by sma-crossover in
//! three `weir run` processes sharing one durable consumer, with a shared
//! Redis for L2. Every 10 s it prints each host's resident memory and open
//! files and the consumer's backlog; at the end it checks that memory and
//! open files stayed flat after the warm-up and that the consumer kept up.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark code

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use weir_tests::process::WeirProcess;
use weir_tests::servers::{NatsCluster, RedisServer};
use weir_tests::{tempdir, wasm};

/// Events per second published.
const RATE: u64 = 20_000;
/// Samples before this are the warm-up (instances, caches, buffers).
const WARM_UP: Duration = Duration::from_secs(120);

fn main() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(Duration::from_secs(secs)));
}

/// Resident memory (KiB) and open files of a process.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

async fn run(length: Duration) {
    let cluster = NatsCluster::start(3).await;
    let redis = RedisServer::start();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "TRADE".into(),
        subjects: vec!["TRADE.trade.>".into()],
        storage: stream::StorageType::File,
        num_replicas: 3,
        // Bounded: the soak is about weir, not about the servers' disks.
        max_age: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempdir("soak");
    let hosts: Vec<WeirProcess> = (0..3)
        .map(|i| {
            let path = dir.join(format!("h{i}.toml"));
            let text = format!(
                r#"[host]
id = "soak-{i}"
[nats]
url = "{urls}"
[redis]
url = "{redis}"
[components.sma-crossover]
wasm = "{wasm}"
subscribe = [{{ subject = "TRADE.trade.>", stream = "TRADE", consumer = "sma" }}]
grants = {{ subscribe = ["TRADE.trade.>"], publish = ["signals.*"], streams = ["TRADE"], cache = "sma" }}
limits = {{ instances = 2 }}
config = {{ fast_window = 5, slow_window = 20 }}
"#,
                urls = cluster.urls(),
                redis = redis.url(),
                wasm = wasm("sma_crossover").display(),
            );
            std::fs::write(&path, text).unwrap();
            WeirProcess::spawn(&path)
        })
        .collect();
    for h in &hosts {
        h.wait_for_log("weir host started", Duration::from_secs(60));
    }

    let publisher = tokio::spawn(publish(js.clone(), length));
    let start = Instant::now();
    let mut warm: Option<Vec<(u64, usize)>> = None;
    let mut last = Vec::new();
    let mut most_behind = 0;
    while !publisher.is_finished() {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let now: Vec<(u64, usize)> = hosts.iter().map(|h| usage(h.pid())).collect();
        let info = js
            .get_stream("TRADE")
            .await
            .unwrap()
            .consumer_info("sma")
            .await
            .ok();
        let backlog = info
            .as_ref()
            .map_or(0, |i| i.num_pending + i.num_ack_pending as u64);
        println!(
            "{:>5.0} s  rss KiB / fds {:?}  backlog {backlog}",
            start.elapsed().as_secs_f64(),
            now
        );
        if start.elapsed() >= WARM_UP {
            warm.get_or_insert_with(|| now.clone());
            most_behind = most_behind.max(backlog);
        }
        last = now;
    }
    let published = publisher.await.unwrap();
    println!("published {published} trades in {length:?}");
    for (i, h) in hosts.iter().enumerate() {
        assert!(
            h.output().contains("weir host started"),
            "host {i} did not run"
        );
    }
    let Some(warm) = warm else {
        println!("too short to judge (warm-up {WARM_UP:?})");
        return;
    };
    for (i, ((rss0, fds0), (rss1, fds1))) in warm.iter().zip(&last).enumerate() {
        println!("host {i}: rss {rss0} → {rss1} KiB, open files {fds0} → {fds1}");
        assert!(
            *rss1 <= rss0 + rss0 / 4 + 32 * 1024,
            "host {i}: memory grew from {rss0} to {rss1} KiB"
        );
        assert!(
            *fds1 <= fds0 + 16,
            "host {i}: open files grew from {fds0} to {fds1}"
        );
    }
    println!(
        "largest backlog after the warm-up: {most_behind} messages ({:.1} s of trades)",
        most_behind as f64 / RATE as f64
    );
}

/// Publishes trades at RATE for `length` (acks awaited in windows of
/// 1,000); returns how many.
async fn publish(js: jetstream::Context, length: Duration) -> u64 {
    let names = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"];
    let start = Instant::now();
    let mut acks = Vec::with_capacity(1000);
    let mut n: u64 = 0;
    while start.elapsed() < length {
        // Where the schedule says we should be.
        let due = (start.elapsed().as_secs_f64() * RATE as f64) as u64;
        while n < due {
            let k = (n % 4) as usize;
            let price = 100.0 + ((n / 4) % 200) as f64 * 0.5;
            let body = format!(
                r#"{{"symbol":"{}","price":{price:.2},"qty":0.1,"ts":{},"trade_id":{}}}"#,
                names[k],
                1_753_862_400_000u64 + n,
                n + 1
            );
            let subject = format!("TRADE.trade.{}", names[k]);
            acks.push(js.publish(subject, Bytes::from(body)).await.unwrap());
            if acks.len() == 1000 {
                for a in acks.drain(..) {
                    a.await.unwrap();
                }
            }
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for a in acks {
        a.await.unwrap();
    }
    n
}
