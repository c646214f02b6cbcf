//! Scale-out load run: events/s through 1, 2 and 3 `weir run` processes
//! sharing one durable consumer on an R3 stream of a 3-node nats-server
//! cluster, each against as many raw async-nats pull consumers (pull +
//! ack) on the same stream in the same run.
//!
//! Both sides are timed the same way, from outside: the durable consumer
//! is created paused on a stream loaded beforehand, every consumer (task
//! or `weir run` process) binds to it, then it is resumed, and the clock
//! runs from its first delivery until its ack floor reaches the last
//! message. So no host's start-up is counted, and all of them share the
//! whole run. The machine's 2 cores are shared by the three nats-servers,
//! the hosts and this process, so more hosts cannot mean more cores here:
//! read the ratios, not the absolute figures.
//!
//! Run with `just bench` (or `cargo build --release -p weir` and
//! `WEIR_BIN=target/release/weir cargo bench -p weir-tests --bench cluster`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark code

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use weir_tests::process::WeirProcess;
use weir_tests::servers::NatsCluster;
use weir_tests::{tempdir, wasm};

const EVENTS: u64 = 40_000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let cluster = NatsCluster::start(3).await;
    let js = jetstream::new(cluster.client().await);
    let dir = tempdir("bench-cluster");
    for hosts in 1..=3 {
        let raw = raw_run(&js, hosts).await;
        let weir = weir_run(&cluster, &js, &dir, hosts).await;
        println!("cluster: {hosts} host(s): weir {weir:.0} ev/s, raw {raw:.0} ev/s");
        println!(
            "TABLE|cluster: events/s, {hosts} host(s) on one durable consumer (R3, 2 shared cores)|{weir:.0} ev/s|{hosts} raw pull+ack {raw:.0} ev/s|{:.2}x|",
            weir / raw
        );
    }
}

/// A fresh R3 stream `BENCH` holding `EVENTS` small messages.
async fn load(js: &jetstream::Context) {
    let _ = js.delete_stream("BENCH").await;
    js.create_stream(stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        storage: stream::StorageType::File,
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let msgs = (0..EVENTS).map(|seq| (format!("bench.s{}", seq % 8), seq.to_string().into()));
    weir_tests::publish_acked(js, msgs).await;
}

/// Events per second from the consumer's first delivery until its ack
/// floor reaches the stream's last message (every one acknowledged).
async fn drain_rate(js: &jetstream::Context, consumer: &str) -> f64 {
    let until = Instant::now() + Duration::from_secs(300);
    let mut first = None;
    loop {
        assert!(Instant::now() < until, "{consumer} did not drain");
        let (delivered, acked) = progress(js, consumer).await.unwrap_or((0, 0));
        if delivered > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if acked >= EVENTS {
            let took = first.map_or(Duration::ZERO, |f: Instant| f.elapsed());
            return EVENTS as f64 / took.as_secs_f64().max(1e-3);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A consumer's last delivered and ack-floor stream sequences, once it exists.
async fn progress(js: &jetstream::Context, consumer: &str) -> Option<(u64, u64)> {
    let stream = js.get_stream("BENCH").await.ok()?;
    let mut c = stream.get_consumer::<pull::Config>(consumer).await.ok()?;
    let info = c.info().await.ok()?;
    Some((
        info.delivered.stream_sequence,
        info.ack_floor.stream_sequence,
    ))
}

/// Creates the durable consumer `name` on all of BENCH, paused: nothing
/// is delivered until [`resume`].
async fn paused_consumer(js: &jetstream::Context, name: &str) -> jetstream::consumer::PullConsumer {
    js.get_stream("BENCH")
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some(name.into()),
            filter_subject: "bench.>".into(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1000,
            pause_until: Some(time::OffsetDateTime::now_utc() + Duration::from_secs(3600)),
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Resumes a paused consumer and measures its drain rate.
async fn resume(js: &jetstream::Context, name: &str) -> f64 {
    js.get_stream("BENCH")
        .await
        .unwrap()
        .resume_consumer(name)
        .await
        .unwrap();
    drain_rate(js, name).await
}

/// `hosts` raw pull consumers (continuous pull, ack each) in this process.
async fn raw_run(js: &jetstream::Context, hosts: usize) -> f64 {
    load(js).await;
    let consumer = paused_consumer(js, "raw").await;
    let tasks: Vec<_> = (0..hosts)
        .map(|_| {
            let consumer = consumer.clone();
            tokio::spawn(async move {
                let mut msgs = consumer.messages().await.unwrap();
                while let Some(Ok(m)) = msgs.next().await {
                    m.ack().await.unwrap();
                }
            })
        })
        .collect();
    let rate = resume(js, "raw").await;
    for t in tasks {
        t.abort();
    }
    rate
}

/// `hosts` `weir run` processes sharing the durable consumer `weir`.
async fn weir_run(
    cluster: &NatsCluster,
    js: &jetstream::Context,
    dir: &std::path::Path,
    hosts: usize,
) -> f64 {
    load(js).await;
    paused_consumer(js, "weir").await;
    let processes: Vec<WeirProcess> = (0..hosts)
        .map(|i| {
            let path = dir.join(format!("h{hosts}-{i}.toml"));
            let text = format!(
                r#"[host]
id = "bench-{i}"
[nats]
url = "{urls}"
[components.ok]
wasm = "{wasm}"
subscribe = [{{ subject = "bench.>", stream = "BENCH", consumer = "weir" }}]
grants = {{ subscribe = ["bench.>"], streams = ["BENCH"], cache = "ok" }}
limits = {{ instances = 2 }}
config = {{ behaviour = "ok" }}
"#,
                urls = cluster.urls(),
                wasm = wasm("hostile").display(),
            );
            std::fs::write(&path, text).unwrap();
            WeirProcess::spawn(&path)
        })
        .collect();
    for p in &processes {
        p.wait_for_log("weir host started", Duration::from_secs(60));
    }
    let rate = resume(js, "weir").await;
    for mut p in processes {
        let clean = p.stop();
        assert!(clean, "a bench host did not stop cleanly:\n{}", p.output());
    }
    rate
}
