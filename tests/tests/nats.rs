//! weir on a real nats-server (spawned per test on a free port): JetStream
//! pipeline, server restart mid-stream, dead letters, de-duplication,
//! queue groups, missing streams, stream grants, streams as files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use weir::Host;
use weir::bus::{Bus, BusMessage, NatsBus};
use weir::manifest::NatsSettings;
use weir::streams::{self, Definition};
use weir_tests::readyz_until;
use weir_tests::reference::{self, Signal};
use weir_tests::servers::NatsServer;
use weir_tests::wait_for_stream;
use weir_tests::{Collector, manifest, root, sample_trade_messages};

/// File-backed streams for the tests (so they survive a server restart).
async fn make_streams(server: &NatsServer, names: &[(&str, &str)]) -> jetstream::Context {
    let js = jetstream::new(server.client().await);
    let defs: Vec<(PathBuf, Definition)> = names
        .iter()
        .map(|(name, subject)| {
            let config = stream::Config {
                name: (*name).into(),
                subjects: vec![(*subject).into()],
                storage: stream::StorageType::File,
                num_replicas: 1,
                ..Default::default()
            };
            (PathBuf::from(name), Definition::Stream(Box::new(config)))
        })
        .collect();
    streams::apply(&js, &defs).await.unwrap();
    js
}

/// Publishes each message to JetStream with a msg id, retrying until stored.
async fn publish_durably(js: &jetstream::Context, msg: &BusMessage, id: &str) {
    loop {
        let pm = jetstream::message::PublishMessage::build()
            .payload(msg.payload.clone())
            .message_id(id);
        match js.send_publish(msg.subject.clone(), pm).await {
            Ok(ack) => match ack.await {
                Ok(_) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            },
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Every message stored in a stream, in sequence order.
async fn stream_contents(js: &jetstream::Context, name: &str) -> Vec<BusMessage> {
    let mut s = js.get_stream(name).await.unwrap();
    let last = s.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(BusMessage::new(m.subject.to_string(), m.payload));
        }
    }
    out
}

fn strategy_manifest(url: &str, streams_granted: &str) -> String {
    format!(
        r#"
[host]
http = "127.0.0.1:0"

[nats]
url = "{url}"
reconnect_wait_ms = 100

[components.sma-crossover]
wasm = "{{sma}}"
subscribe = [{{ subject = "TRADE.trade.>", stream = "TRADE", consumer = "sma", ack_wait_ms = 2000 }}]
grants = {{ subscribe = ["TRADE.trade.>"], publish = ["signals.*"], streams = [{streams_granted}], cache = "sma" }}
limits = {{ instances = 2, max_deliver = 10 }}
config = {{ fast_window = 5, slow_window = 20, publish = "jetstream" }}
"#
    )
}

fn as_signals(msgs: &[BusMessage]) -> BTreeMap<String, Vec<Signal>> {
    reference::published_signals(msgs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_pipeline_survives_a_server_restart_with_exact_signals() {
    let mut server = NatsServer::start();
    let js = make_streams(
        &server,
        &[
            ("TRADE", "TRADE.trade.>"),
            ("SIGNALS", "signals.>"),
            ("DLQ", "dlq.>"),
        ],
    )
    .await;
    let m = manifest(&strategy_manifest(&server.url(), r#""TRADE", "SIGNALS""#));
    let host = Host::start(&m).await.unwrap();

    let trades = sample_trade_messages(3000);
    let expected = reference::sma_signals(&trades, 5, 20);
    let expected_count: usize = expected.values().map(Vec::len).sum();
    let publisher = server.client().await;
    let pjs = jetstream::new(publisher);
    for (i, t) in trades.iter().enumerate() {
        if i == trades.len() / 3 {
            // Kill the server mid-stream, keep it down a moment, bring it back.
            server.kill();
            tokio::time::sleep(Duration::from_millis(700)).await;
            server.restart();
        }
        publish_durably(&pjs, t, &format!("trade-{i}")).await;
    }
    wait_for_stream(
        &js,
        "SIGNALS",
        expected_count as u64,
        Duration::from_secs(90),
    )
    .await;
    // Give redeliveries a moment to (not) add anything.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Every trade was stored once and every signal is there exactly once:
    // redelivered trades are skipped by trade id, and a re-published
    // signal is dropped by its Nats-Msg-Id.
    assert_eq!(
        weir_tests::stream_messages(&js, "TRADE").await,
        trades.len() as u64
    );
    let stored = stream_contents(&js, "SIGNALS").await;
    assert_eq!(stored.len(), expected_count, "duplicate or missing signals");
    assert_eq!(as_signals(&stored), expected);
    let sma = host.component_stats()[0].1;
    assert_eq!(sma.dead_lettered, 0);
    assert!(sma.handled >= trades.len() as u64, "{sma:?}");
    // The consumer's lag is exported, and it has caught up.
    let addr = host.http_addr().unwrap().to_string();
    let (_, metrics) = weir::observe::http_get(&addr, "/metrics").await.unwrap();
    let labels = r#"component="sma-crossover",subject="TRADE.trade.>""#;
    for line in [
        format!(r#"nats_consumer_pending{{{labels},stream="TRADE"}} 0"#),
        format!("weir_messages_handled_total{{{labels}}} {}", sma.handled),
        format!("nats_message_processing_seconds_count{{{labels}}} "),
    ] {
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    host.shutdown(Duration::from_secs(5)).await;

    // All acknowledged: nothing left pending on the durable consumer.
    assert_eq!(
        weir_tests::consumer_backlog(&js, "TRADE", "sma").await,
        (0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_with_reason_and_attempts() {
    let server = NatsServer::start();
    let js = make_streams(
        &server,
        &[
            ("TRADE", "TRADE.trade.>"),
            ("POKES", "poke.>"),
            ("DLQ", "dlq.>"),
        ],
    )
    .await;
    let m = manifest(&format!(
        r#"
[nats]
url = "{}"

[components.sma-crossover]
wasm = "{{sma}}"
subscribe = [{{ subject = "TRADE.trade.>", stream = "TRADE", consumer = "sma" }}]
grants = {{ subscribe = ["TRADE.trade.>"], publish = ["signals.*"], streams = ["TRADE"], cache = "sma" }}

[components.hostile]
wasm = "{{hostile}}"
subscribe = [{{ subject = "poke.>", stream = "POKES", consumer = "hostile" }}]
grants = {{ subscribe = ["poke.>"], streams = ["POKES"], cache = "hostile" }}
limits = {{ max_deliver = 3 }}
config = {{ behaviour = "trap" }}
"#,
        server.url()
    ));
    let host = Host::start(&m).await.unwrap();
    let client = server.client().await;
    let pjs = jetstream::new(client);
    publish_durably(
        &pjs,
        &BusMessage::new("TRADE.trade.BTCUSDT", "{oops"),
        "bad-1",
    )
    .await;
    publish_durably(&pjs, &BusMessage::new("poke.1", "{}"), "poke-1").await;
    wait_for_stream(&js, "DLQ", 2, Duration::from_secs(30)).await;

    let letters: Vec<weir::dlq::DeadLetter> = stream_contents(&js, "DLQ")
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    let bad = letters
        .iter()
        .find(|l| l.component == "sma-crossover")
        .unwrap();
    assert_eq!(
        (bad.attempts, bad.stream.as_deref(), bad.sequence),
        (1, Some("TRADE"), Some(1))
    );
    assert!(bad.error.contains("malformed trade JSON"), "{}", bad.error);
    assert_eq!(bad.original_payload(), b"{oops");
    let poison = letters.iter().find(|l| l.component == "hostile").unwrap();
    assert_eq!(
        (
            poison.attempts,
            poison.stream.as_deref(),
            poison.original_subject.as_str()
        ),
        (3, Some("POKES"), "poke.1")
    );
    assert!(
        poison.error.contains("component hostile trapped"),
        "{}",
        poison.error
    );
    let hostile = host
        .component_stats()
        .into_iter()
        .find(|(n, _)| n == "hostile")
        .unwrap()
        .1;
    assert_eq!(
        (hostile.traps, hostile.retried, hostile.dead_lettered),
        (3, 2, 1)
    );
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msg_id_deduplicates_and_stream_grants_are_enforced() {
    let server = NatsServer::start();
    let js = make_streams(
        &server,
        &[
            ("TRADE", "TRADE.trade.>"),
            ("SIGNALS", "signals.>"),
            ("DLQ", "dlq.>"),
        ],
    )
    .await;
    let bus = NatsBus::connect(&NatsSettings::with_url(server.url()), &root(), "test")
        .await
        .unwrap();
    let first = bus
        .jetstream_publish(BusMessage::new("signals.X", "1"), Some("id-1".into()))
        .await
        .unwrap();
    let again = bus
        .jetstream_publish(BusMessage::new("signals.X", "1"), Some("id-1".into()))
        .await
        .unwrap();
    assert_eq!(
        (first.stream.as_str(), first.duplicate, again.duplicate),
        ("SIGNALS", false, true)
    );
    assert_eq!(first.sequence, again.sequence);

    // sma-crossover may publish signals.* but is not granted the SIGNALS stream.
    let m = manifest(&strategy_manifest(&server.url(), r#""TRADE""#));
    let host = Host::start(&m).await.unwrap();
    let pjs = jetstream::new(server.client().await);
    for (i, t) in sample_trade_messages(400).iter().enumerate() {
        publish_durably(&pjs, t, &format!("t-{i}")).await;
    }
    wait_for_stream(&js, "DLQ", 1, Duration::from_secs(30)).await;
    let letter: weir::dlq::DeadLetter =
        serde_json::from_slice(&stream_contents(&js, "DLQ").await[0].payload).unwrap();
    assert!(
        letter.error.contains("may not publish into stream SIGNALS"),
        "{}",
        letter.error
    );
    assert_eq!(
        weir_tests::stream_messages(&js, "SIGNALS").await,
        1,
        "only the test's own message"
    );
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_group_shares_the_load_between_hosts() {
    let server = NatsServer::start();
    let text = format!(
        r#"
[nats]
url = "{}"

[components.hostile]
wasm = "{{hostile}}"
subscribe = [{{ subject = "work.*", queue_group = "workers" }}]
grants = {{ subscribe = ["work.*"], cache = "hostile" }}
config = {{ behaviour = "ok" }}
"#,
        server.url()
    );
    let a = Host::start(&manifest(&text)).await.unwrap();
    let b = Host::start(&manifest(&text)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = server.client().await;
    for i in 0..200 {
        client
            .publish(format!("work.{}", i % 10), "{}".into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let (ha, hb) = loop {
        let (ha, hb) = (
            a.component_stats()[0].1.handled,
            b.component_stats()[0].1.handled,
        );
        if ha + hb >= 200 || tokio::time::Instant::now() > until {
            break (ha, hb);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        ha + hb,
        200,
        "each message handled exactly once across the group"
    );
    assert!(ha > 0 && hb > 0, "both hosts took a share: {ha} / {hb}");
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_stream_and_unreachable_server_are_clear_errors() {
    let server = NatsServer::start();
    let m = manifest(&strategy_manifest(&server.url(), r#""TRADE""#));
    let e = format!("{:#}", Host::start(&m).await.err().unwrap());
    assert!(
        e.contains("stream TRADE (needed by component sma-crossover) does not exist"),
        "{e}"
    );

    let closed = weir_tests::servers::free_port();
    let m = manifest(&strategy_manifest(
        &format!("nats://127.0.0.1:{closed}"),
        r#""TRADE""#,
    ));
    let e = format!("{:#}", Host::start(&m).await.err().unwrap());
    assert!(
        e.contains(&format!(
            "cannot connect to NATS at nats://127.0.0.1:{closed}"
        )),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_stream_files_apply_idempotently_and_record_sources_trade() {
    let server = NatsServer::start();
    let js = jetstream::new(server.client().await);
    let defs = streams::load_dir(&root().join("examples/streams")).unwrap();
    let first = streams::apply(&js, &defs).await.unwrap();
    assert!(first.iter().all(|l| l.ends_with(": created")), "{first:?}");
    let again = streams::apply(&js, &defs).await.unwrap();
    assert!(
        again.iter().all(|l| l.ends_with(": unchanged")),
        "{again:?}"
    );

    // RECORD keeps what TRADE receives, under record.trade.<SYMBOL>.
    let client = server.client().await;
    client
        .publish("TRADE.trade.BTCUSDT", "{}".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    wait_for_stream(&js, "RECORD", 1, Duration::from_secs(10)).await;
    assert_eq!(
        stream_contents(&js, "RECORD").await[0].subject,
        "record.trade.BTCUSDT"
    );

    // A changed file updates the stream and says what changed.
    let mut changed = defs.clone();
    for (_, d) in &mut changed {
        if let Definition::Stream(c) = d
            && c.name == "ALERTS"
        {
            c.max_messages = 5000;
        }
    }
    let report = streams::apply(&js, &changed).await.unwrap();
    assert!(
        report.contains(&"stream ALERTS: updated max_msgs".to_owned()),
        "{report:?}"
    );

    // Core messaging through the bus: request/reply and no responders.
    let bus = NatsBus::connect(&NatsSettings::with_url(server.url()), &root(), "test")
        .await
        .unwrap();
    let e = bus
        .request(
            BusMessage::new("nobody.home", "?"),
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
    assert_eq!(e, weir::bus::BusError::NoResponders("nobody.home".into()));
    let _c = Collector::start(&bus, "svc.echo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_mid_stream_loses_nothing() {
    let server = NatsServer::start();
    let js = make_streams(
        &server,
        &[
            ("TRADE", "TRADE.trade.>"),
            ("SIGNALS", "signals.>"),
            ("DLQ", "dlq.>"),
        ],
    )
    .await;
    let trades = sample_trade_messages(2000);
    let expected = reference::sma_signals(&trades, 5, 20);
    let expected_count: usize = expected.values().map(Vec::len).sum();
    let pjs = jetstream::new(server.client().await);
    for (i, t) in trades.iter().enumerate() {
        publish_durably(&pjs, t, &format!("trade-{i}")).await;
    }
    // Redis keeps the strategy's state across the two host lifetimes.
    let redis = weir_tests::servers::RedisServer::start();
    let text = format!(
        "{}\n[redis]\nurl = \"{}\"\n",
        strategy_manifest(&server.url(), r#""TRADE", "SIGNALS""#),
        redis.url()
    );
    let first = Host::start(&manifest(&text)).await.unwrap();
    while first.component_stats()[0].1.handled < 300 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    first.shutdown(Duration::from_secs(10)).await;
    let second = Host::start(&manifest(&text)).await.unwrap();
    wait_for_stream(
        &js,
        "SIGNALS",
        expected_count as u64,
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = stream_contents(&js, "SIGNALS").await;
    assert_eq!(stored.len(), expected_count, "duplicate or missing signals");
    assert_eq!(as_signals(&stored), expected);
    second.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_component_on_a_stream_is_retried_then_dead_lettered() {
    let server = NatsServer::start();
    let js = make_streams(&server, &[("POKES", "poke.>"), ("DLQ", "dlq.>")]).await;
    let m = manifest(&format!(
        r#"
[nats]
url = "{}"

[components.hostile]
wasm = "{{hostile}}"
subscribe = [{{ subject = "poke.>", stream = "POKES", consumer = "hostile" }}]
grants = {{ subscribe = ["poke.>"], streams = ["POKES"], cache = "hostile" }}
limits = {{ max_deliver = 2, time_per_event_ms = 200 }}
config = {{ behaviour = "loop" }}
"#,
        server.url()
    ));
    let host = Host::start(&m).await.unwrap();
    let pjs = jetstream::new(server.client().await);
    publish_durably(&pjs, &BusMessage::new("poke.1", "{}"), "loop-1").await;
    wait_for_stream(&js, "DLQ", 1, Duration::from_secs(30)).await;
    let letter: weir::dlq::DeadLetter =
        serde_json::from_slice(&stream_contents(&js, "DLQ").await[0].payload).unwrap();
    assert_eq!(
        (letter.attempts, letter.sequence, letter.component.as_str()),
        (2, Some(1), "hostile")
    );
    assert!(
        letter.error.contains("missed its deadline") && letter.error.contains("200 ms"),
        "{}",
        letter.error
    );
    let s = host.component_stats()[0].1;
    assert_eq!((s.deadline_hits, s.retried, s.dead_lettered), (2, 1, 1));
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_why_while_nats_is_down_and_recovers() {
    use weir::observe::http_get;
    let mut server = NatsServer::start();
    let text = format!(
        r#"
[host]
http = "127.0.0.1:0"

[nats]
url = "{}"
reconnect_wait_ms = 100
{}"#,
        server.url(),
        weir_tests::ok_component("hostile", "work.*")
    );
    let host = Host::start(&manifest(&text)).await.unwrap();
    let addr = host.http_addr().unwrap().to_string();
    assert_eq!(
        http_get(&addr, "/readyz").await.unwrap(),
        (200, "ready\n".to_owned())
    );
    server.kill();
    let (code, body) = readyz_until(&addr, 503, Duration::from_secs(10), || async {}).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("not ready: NATS is "), "{body}");
    let (_, metrics) = http_get(&addr, "/metrics").await.unwrap();
    assert!(metrics.contains("nats_connection_status 0"), "{metrics}");
    let (_, d) = http_get(&addr, "/api/dashboard").await.unwrap();
    let d: serde_json::Value = serde_json::from_str(&d).unwrap();
    assert_ne!(d["connections"]["nats"], "connected", "{d}");
    assert!(!d["ready"].as_array().unwrap().is_empty(), "{d}");
    // Alive all along: liveness is not readiness.
    assert_eq!(http_get(&addr, "/healthz").await.unwrap().0, 200);

    server.restart();
    let (code, body) = readyz_until(&addr, 200, Duration::from_secs(30), || async {}).await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    let (_, metrics) = http_get(&addr, "/metrics").await.unwrap();
    assert!(metrics.contains("nats_connection_status 1"), "{metrics}");
    assert!(!metrics.contains("nats_reconnects_total 0"), "{metrics}");
    host.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_a_consumer_that_cannot_pull_and_heals_on_a_quiet_stream() {
    use weir::observe::http_get;
    let server = NatsServer::start();
    let js = make_streams(
        &server,
        &[("TRADE", "TRADE.trade.>"), ("SIGNALS", "signals.>")],
    )
    .await;
    let m = manifest(&strategy_manifest(&server.url(), r#""TRADE", "SIGNALS""#));
    let host = Host::start(&m).await.unwrap();
    let addr = host.http_addr().unwrap().to_string();
    assert_eq!(http_get(&addr, "/readyz").await.unwrap().0, 200);

    // Someone deletes the stream under the running consumer.
    js.delete_stream("TRADE").await.unwrap();
    let (code, body) = readyz_until(&addr, 503, Duration::from_secs(15), || async {}).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("component sma-crossover cannot pull from stream TRADE (TRADE.trade.>)"),
        "{body}"
    );
    let (_, d) = http_get(&addr, "/api/dashboard").await.unwrap();
    let d: serde_json::Value = serde_json::from_str(&d).unwrap();
    let sma = &d["components"][0];
    assert_eq!(sma["state"], "stalled", "{sma}");
    assert_eq!(sma["subscriptions"][0]["stream"], "TRADE", "{sma}");
    assert!(sma["subscriptions"][0]["pull_error"].is_string(), "{sma}");
    assert_eq!(http_get(&addr, "/healthz").await.unwrap().0, 200);

    // The operator puts stream and consumer back; the market stays quiet.
    // A pull that the consumer serves and lets expire is proof enough:
    // readiness must not wait for a message that may not come for hours.
    make_streams(&server, &[("TRADE", "TRADE.trade.>")]).await;
    js.get_stream("TRADE")
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("sma".into()),
            filter_subject: "TRADE.trade.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (code, body) = readyz_until(&addr, 200, Duration::from_secs(10), || async {}).await;
    assert_eq!(
        (code, body.as_str()),
        (200, "ready\n"),
        "healed with no message"
    );
    let s = host.component_stats()[0].1;
    assert_eq!(s.handled, 0, "no message was needed");
    host.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_nats_gone_finishes_within_its_grace() {
    let mut server = NatsServer::start();
    let text = format!(
        "[nats]\nurl = \"{}\"\nreconnect_wait_ms = 100\n{}",
        server.url(),
        weir_tests::ok_component("hostile", "work.*")
    );
    let host = Host::start(&manifest(&text)).await.unwrap();
    let client = server.client().await;
    for i in 0..50 {
        client
            .publish(format!("work.{i}"), "{}".into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    server.kill();
    // A flush to a dead server waits for a reconnect; shutdown must not.
    let took = std::time::Instant::now();
    tokio::time::timeout(
        Duration::from_secs(20),
        host.shutdown(Duration::from_secs(2)),
    )
    .await
    .expect("shutdown hung with NATS gone");
    assert!(
        took.elapsed() < Duration::from_secs(5),
        "{:?}",
        took.elapsed()
    );
}

/// A backlog of trades in a schema sma-crossover cannot read (an upstream
/// change) on a JetStream stream, handled by `weir run` as an operator
/// runs it: every one is in the DLQ stream, by its sequence, before the
/// consumer is drained, and the log holds a few of them in full and a
/// summary with the count of the rest, not a line or two per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_flood_is_dead_lettered_in_full_with_a_few_log_lines() {
    const POISON: u64 = 3000;
    let server = NatsServer::start();
    let js = make_streams(&server, &[("TRADE", "TRADE.trade.>"), ("DLQ", "dlq.>")]).await;
    let dir = weir_tests::tempdir("poison");
    let path = dir.join("weir.toml");
    let text = strategy_manifest(&server.url(), r#""TRADE""#).replace(
        "{sma}",
        &weir_tests::wasm("sma_crossover").display().to_string(),
    );
    std::fs::write(&path, text).unwrap();
    weir_tests::publish_acked(
        &js,
        (0..POISON).map(|i| {
            let body = format!(r#"{{"sym":"BTCUSDT","px":"64000.5","quantity":0.1,"time":{i}}}"#);
            ("TRADE.trade.BTCUSDT".to_owned(), body.into())
        }),
    )
    .await;
    let weir = weir_tests::process::WeirProcess::start(&path);
    wait_for_stream(&js, "DLQ", POISON, Duration::from_secs(120)).await;
    weir_tests::wait_for_drained(&js, "TRADE", "sma", Duration::from_secs(30)).await;
    let letters = stream_contents(&js, "DLQ").await;
    let mut sequences: Vec<u64> = letters
        .iter()
        .map(|m| {
            let l: weir::dlq::DeadLetter = serde_json::from_slice(&m.payload).unwrap();
            assert!(l.error.starts_with("rejected: "), "{}", l.error);
            l.sequence.unwrap()
        })
        .collect();
    sequences.sort_unstable();
    assert_eq!(sequences, (1..=POISON).collect::<Vec<_>>(), "each once");

    // The rest are summed up when their interval ends, flood over or not.
    weir.wait_for_log("more dead-lettered in the last", Duration::from_secs(25));
    let log = weir.output();
    let in_full = log
        .lines()
        .filter(|l| l.contains("dead-lettered") && !l.contains("more dead-lettered"))
        .count() as u64;
    let summed: u64 = log
        .lines()
        .filter(|l| l.contains("more dead-lettered in the last"))
        .map(|l| {
            let count = l.split("count=").nth(1).unwrap();
            count
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    let lines = log.lines().count();
    eprintln!(
        "{in_full} dead letters logged in full, {summed} summed up, {lines} log lines in all"
    );
    assert_eq!(
        in_full + summed,
        POISON,
        "every one in the log, one way or the other"
    );
    assert!(
        in_full <= 3 * weir::failure_log::IN_FULL as u64,
        "{in_full} in full"
    );
    assert!(lines < 100, "{lines} log lines:\n{log}");
}

/// Unreadable trades among good ones on a stream: a reject does not end
/// sma-crossover's batches (it goes on past each), every unreadable trade
/// is dead-lettered with its sequence, and the signals are exactly the
/// reference's over the good ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_trades_inside_batches_are_dead_lettered_and_the_batch_goes_on() {
    let server = NatsServer::start();
    let js = make_streams(
        &server,
        &[
            ("TRADE", "TRADE.trade.>"),
            ("SIGNALS", "signals.>"),
            ("DLQ", "dlq.>"),
        ],
    )
    .await;
    let good = sample_trade_messages(900);
    let mut stored = Vec::new();
    let mut poison = 0u64;
    for (i, m) in good.iter().enumerate() {
        stored.push((m.subject.clone(), m.payload.clone()));
        if i % 2 == 0 {
            let body = format!(r#"{{"sym":"X","px":"1.5","n":{i}}}"#);
            stored.push((m.subject.clone(), body.into()));
            poison += 1;
        }
    }
    weir_tests::publish_acked(&js, stored).await;
    let m = manifest(&strategy_manifest(&server.url(), r#""TRADE", "SIGNALS""#));
    let host = Host::start(&m).await.unwrap();
    wait_for_stream(&js, "DLQ", poison, Duration::from_secs(60)).await;
    weir_tests::wait_for_drained(&js, "TRADE", "sma", Duration::from_secs(60)).await;
    let s = host.component_stats()[0].1;
    eprintln!("{poison} unreadable among {} trades: {s:?}", good.len());
    assert_eq!((s.dead_lettered, s.retried), (poison, 0));
    assert!(
        s.batches * 4 < poison,
        "{} batches for {poison} rejects: batches still end at a reject",
        s.batches
    );
    let signals = reference::published_signals(&stream_contents(&js, "SIGNALS").await);
    assert_eq!(signals, reference::sma_signals(&good, 5, 20));
    host.shutdown(Duration::from_secs(5)).await;
}

/// A JetStream publish keeps every value of a header name given twice, as
/// a core publish does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_publish_keeps_repeated_headers() {
    let server = NatsServer::start();
    let js = make_streams(&server, &[("KEEP", "keep.>")]).await;
    let bus = NatsBus::connect(&NatsSettings::with_url(server.url()), &root(), "headers")
        .await
        .unwrap();
    let mut msg = BusMessage::new("keep.one", "x");
    msg.headers = vec![("Tag".into(), "a".into()), ("Tag".into(), "b".into())];
    bus.jetstream_publish(msg, None).await.unwrap();
    // Read back through a consumer (as a weir host reads a stream).
    let consumer = js
        .get_stream("KEEP")
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
    let stored = futures::StreamExt::next(&mut batch).await.unwrap().unwrap();
    let values: Vec<String> = stored
        .headers
        .as_ref()
        .unwrap()
        .get_all("Tag")
        .map(|v| v.as_str().to_owned())
        .collect();
    assert_eq!(values, ["a", "b"]);
}
