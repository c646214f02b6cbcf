//! `weir replay`: recorded events through the deployed components on a
//! virtual clock. Same input, same bytes, whatever the run or the instance
//! counts; time, random and TTLs inside components follow event time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use weir::bus::{BusMessage, NatsBus};
use weir::digest::sha256_hex;
use weir::manifest::NatsSettings;
use weir::replay::{Input, RecordedLine, Replay, ReplayOptions, ReplayReport};
use weir::{Manifest, replay};
use weir_tests::servers::NatsServer;
use weir_tests::{Buffer, manifest, reference, root, sample_messages, sample_trades, tempdir};

async fn replay_to_bytes(
    m: &Manifest,
    input: Input,
    options: ReplayOptions,
) -> (Vec<u8>, ReplayReport) {
    let out = Buffer::default();
    let report = Replay::new(m, Box::new(out.clone()), options)
        .unwrap()
        .run(input)
        .await
        .unwrap();
    let bytes = out.0.lock().unwrap().clone();
    (bytes, report)
}

/// The signals a replay's output says sma-crossover published.
fn signals(records: &[serde_json::Value]) -> Vec<BusMessage> {
    records
        .iter()
        .filter(|r| {
            r["kind"] == "publish" && r["subject"].as_str().unwrap().starts_with("signals.")
        })
        .map(|r| {
            BusMessage::new(
                r["subject"].as_str().unwrap(),
                r["payload"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    std::str::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The demo with given instance counts and a component that rejects.
fn demo(sma_instances: usize, alert_instances: usize) -> Manifest {
    manifest(&format!(
        r#"
[components.sma-crossover]
wasm = "{{sma}}"
subscribe = [{{ subject = "TRADE.trade.*" }}]
grants = {{ subscribe = ["TRADE.trade.*"], publish = ["signals.*"], cache = "sma" }}
limits = {{ instances = {sma_instances} }}
config = {{ fast_window = 5, slow_window = 20 }}

[components.price-alert]
wasm = "{{alert}}"
subscribe = [{{ subject = "TRADE.trade.*" }}, {{ subject = "alerts.created" }}]
grants = {{ subscribe = ["TRADE.trade.*", "alerts.created"], publish = ["alerts.triggered"], cache = "alerts" }}
limits = {{ instances = {alert_instances} }}

[components.price-alert.config]
alerts = [
    {{ id = "btc-below-62k", symbol = "BTCUSDT", condition = "below", threshold = 62000 }},
    {{ id = "sol-above-152", symbol = "SOLUSDT", condition = "above", threshold = 152 }},
]
"#
    ))
}

/// The sample data with a malformed trade and an unknown symbol mixed in.
fn input_file() -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(sample_trades()).unwrap();
    text.push_str("{\"symbol\":\"BTCUSDT\",\"price\":\"not a number\",\"ts\":1753866000000}\n");
    text.push_str("not json at all\n");
    let path = tempdir("replay-in").join("in.ndjson");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_input_gives_the_same_bytes_across_runs_and_instance_counts() {
    let file = input_file();
    let mut digests = Vec::new();
    let mut first = None;
    for (sma, alert) in [(2, 1), (2, 1), (1, 3), (4, 2)] {
        let input = Input::file(&file).await.unwrap();
        let (bytes, report) =
            replay_to_bytes(&demo(sma, alert), input, ReplayOptions::default()).await;
        assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
        digests.push((sma, alert, sha256_hex(&bytes)));
        first.get_or_insert((bytes, report));
    }
    assert!(
        digests.iter().all(|d| d.2 == digests[0].2),
        "replays differ: {digests:?}"
    );

    // And the output is the demo's real behaviour, in order.
    let (bytes, report) = first.unwrap();
    let records = lines(&bytes);
    assert_eq!(report.records as usize, records.len());
    let signals = signals(&records);
    let trades: Vec<BusMessage> = sample_messages(usize::MAX);
    assert_eq!(
        reference::published_signals(&signals),
        reference::sma_signals(&trades, 5, 20)
    );
    // The malformed trade is dead-lettered by both components, with the
    // event's own time (not the wall clock's).
    let letters: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["kind"] == "dead_letter")
        .collect();
    assert_eq!(letters.len(), 2, "{letters:?}");
    for l in &letters {
        let envelope: serde_json::Value =
            serde_json::from_str(l["payload"].as_str().unwrap()).unwrap();
        assert_eq!(envelope["time"], "2025-07-30T09:00:00.000Z", "{envelope}");
    }
    assert!(records.iter().any(|r| r["kind"] == "cache_set"));
    // Numbered in order, times never go back.
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["n"], i as u64 + 1);
    }
    let times: Vec<&str> = records
        .iter()
        .map(|r| r["time"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
}

fn probe() -> Manifest {
    manifest(
        r#"
[components.probe]
wasm = "{hostile}"
subscribe = [{ subject = "probe.in" }]
grants = { subscribe = ["probe.in"], publish = ["probe.out"], cache = "p" }
config = { behaviour = "probe" }
"#,
    )
}

/// Recorded events at given ms after 2025-07-30T08:00:00Z.
fn recorded(events: &[(u64, &str)]) -> std::path::PathBuf {
    let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_753_862_400);
    let text: String = events
        .iter()
        .map(|(ms, payload)| {
            let line = RecordedLine::new(
                &BusMessage::new("probe.in", payload.to_string()),
                t0 + Duration::from_millis(*ms),
            );
            format!("{}\n", serde_json::to_string(&line).unwrap())
        })
        .collect();
    let path = tempdir("replay-rec").join("rec.ndjson");
    std::fs::write(&path, text).unwrap();
    path
}

async fn probes(path: &Path, seed: u64) -> Vec<serde_json::Value> {
    let options = ReplayOptions {
        seed,
        ..ReplayOptions::default()
    };
    let (bytes, _) = replay_to_bytes(&probe(), Input::file(path).await.unwrap(), options).await;
    lines(&bytes)
        .into_iter()
        .filter(|r| r["kind"] == "publish")
        .map(|r| serde_json::from_str(r["payload"].as_str().unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_random_and_ttls_inside_components_follow_the_recording() {
    let path = recorded(&[(0, "set"), (500, "get"), (999, "get"), (2000, "get")]);
    let seen = probes(&path, 7).await;
    let now: Vec<u64> = seen.iter().map(|p| p["now_ms"].as_u64().unwrap()).collect();
    let t0 = 1_753_862_400_000;
    assert_eq!(
        now,
        [t0, t0 + 500, t0 + 999, t0 + 2000],
        "WASI wall clock is event time"
    );
    let cached: Vec<bool> = seen
        .iter()
        .map(|p| p["cached"].as_bool().unwrap())
        .collect();
    assert_eq!(
        cached,
        [true, true, true, false],
        "a 1 s TTL expires on event time"
    );
    // Random is seeded: the same seed repeats, another differs.
    let random = |s: &[serde_json::Value]| -> Vec<String> {
        s.iter()
            .map(|p| p["random"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(random(&probes(&path, 7).await), random(&seen));
    assert_ne!(random(&probes(&path, 8).await), random(&seen));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_run_on_the_virtual_clock() {
    let m = manifest(
        r#"
[components.order]
wasm = "{hostile}"
subscribe = [{ subject = "probe.in" }]
grants = { subscribe = ["probe.in"], cache = "o" }
limits = { max_deliver = 3 }
config = { behaviour = "order" }
"#,
    );
    let path = recorded(&[(0, "1"), (5, "2-fail-once"), (6, "3")]);
    let (bytes, _) = replay_to_bytes(
        &m,
        Input::file(&path).await.unwrap(),
        ReplayOptions::default(),
    )
    .await;
    let records = lines(&bytes);
    let timeline: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            let what = r["outcome"].as_str().or(r["payload"].as_str()).unwrap();
            (
                r["time"].as_str().unwrap(),
                r["kind"].as_str().unwrap(),
                what,
            )
        })
        .collect();
    // The retry waited its 10 ms backoff in virtual time, and the next
    // event (recorded 1 ms later) did not go back in time.
    assert_eq!(
        timeline,
        [
            ("2025-07-30T08:00:00.000000000Z", "cache_set", "1,"),
            ("2025-07-30T08:00:00.005000000Z", "settle", "retry"),
            (
                "2025-07-30T08:00:00.015000000Z",
                "cache_set",
                "1,2-fail-once,"
            ),
            (
                "2025-07-30T08:00:00.015000000Z",
                "cache_set",
                "1,2-fail-once,3,"
            ),
        ]
    );
    let last = records
        .iter()
        .rev()
        .find(|r| r["kind"] == "cache_set")
        .unwrap();
    assert_eq!(last["payload"], "1,2-fail-once,3,");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_replays_in_order_without_a_durable_consumer() {
    let server = NatsServer::start();
    let js = jetstream::new(server.client().await);
    js.create_stream(stream::Config {
        name: "TRADE".into(),
        subjects: vec!["TRADE.trade.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let trades = weir_tests::sample_trade_messages(1000);
    for t in &trades {
        js.publish(t.subject.clone(), t.payload.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // From sequence 101 to 900.
    let input = Input::stream(&js, "TRADE", Some(replay::Bound::Seq(101)))
        .await
        .unwrap();
    let options = ReplayOptions {
        start: Some(replay::Bound::Seq(101)),
        end: Some(replay::Bound::Seq(900)),
        ..ReplayOptions::default()
    };
    let (bytes, report) = replay_to_bytes(&demo(2, 1), input, options).await;
    assert_eq!(report.events, 800);
    let records = lines(&bytes);
    let events: Vec<u64> = records
        .iter()
        .map(|r| r["event"].as_u64().unwrap())
        .collect();
    assert_eq!((events[0], *events.last().unwrap()), (101, 900));
    assert!(events.windows(2).all(|w| w[0] <= w[1]), "in sequence order");
    let signals = signals(&records);
    assert_eq!(
        reference::published_signals(&signals),
        reference::sma_signals(&trades[100..900], 5, 20)
    );
    // No durable consumer was left (or made) on the stream.
    let s = js.get_stream("TRADE").await.unwrap();
    let mut consumers = s.consumers();
    use futures::StreamExt as _;
    while let Some(c) = consumers.next().await {
        let c = c.unwrap();
        assert!(
            c.config.durable_name.is_none(),
            "durable consumer {:?}",
            c.config
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_live_traffic_replays() {
    let server = NatsServer::start();
    let bus = NatsBus::connect(&NatsSettings::with_url(server.url()), &root(), "rec")
        .await
        .unwrap();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let path = tempdir("record").join("day.ndjson");
    let trades = weir_tests::sample_trade_messages(300);
    let n = trades.len() as u64;
    let task = {
        let (bus, path) = (bus.clone(), path.clone());
        tokio::spawn(async move {
            let mut f = std::fs::File::create(&path).unwrap();
            let subjects = ["TRADE.trade.*".to_owned()];
            replay::record(
                &bus,
                &subjects,
                &mut f,
                Some(n),
                std::future::pending(),
                || {
                    ready_tx.send(()).unwrap();
                },
            )
            .await
            .unwrap()
        })
    };
    ready_rx.await.unwrap();
    bus.client().flush().await.unwrap();
    let publisher = server.client().await;
    for t in &trades {
        publisher
            .publish(t.subject.clone(), t.payload.clone())
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap(),
        n
    );

    let (bytes, report) = replay_to_bytes(
        &demo(2, 1),
        Input::file(&path).await.unwrap(),
        ReplayOptions::default(),
    )
    .await;
    assert_eq!((report.events, report.skipped.len()), (n, 0));
    let signals = signals(&lines(&bytes));
    assert_eq!(
        reference::published_signals(&signals),
        reference::sma_signals(&trades, 5, 20)
    );
}
