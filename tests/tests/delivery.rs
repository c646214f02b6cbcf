//! One delivery policy for every transport: a retried message is retried
//! before the next one of its subject, so per-subject order holds through
//! retries on the embedded bus and on a JetStream consumer alike, and each
//! message is applied once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use weir::Host;
use weir::bus::BusMessage;
use weir_tests::manifest;
use weir_tests::servers::NatsServer;

const MESSAGES: usize = 30;

/// Payloads `0..MESSAGES`, every fifth failing its first delivery.
fn payloads() -> Vec<String> {
    (0..MESSAGES)
        .map(|i| {
            if i % 5 == 2 {
                format!("{i}-fail-once")
            } else {
                i.to_string()
            }
        })
        .collect()
}

fn order_component(nats: Option<&str>) -> String {
    let (head, sub, streams) = match nats {
        None => (String::new(), r#"{ subject = "seq.one" }"#.to_owned(), ""),
        Some(url) => (
            format!("[nats]\nurl = \"{url}\"\n"),
            r#"{ subject = "seq.>", stream = "SEQ", consumer = "order" }"#.to_owned(),
            r#", streams = ["SEQ"]"#,
        ),
    };
    format!(
        r#"{head}
[components.order]
wasm = "{{hostile}}"
subscribe = [{sub}]
grants = {{ subscribe = ["seq.>"], cache = "o"{streams} }}
limits = {{ instances = 2, max_deliver = 3 }}
config = {{ behaviour = "order" }}
"#
    )
}

async fn applied(host: &Host) -> String {
    applied_n(host, MESSAGES).await
}

fn expected() -> String {
    payloads().iter().map(|p| format!("{p},")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_through_retries_on_the_embedded_bus() {
    let host = Host::start(&manifest(&order_component(None)))
        .await
        .unwrap();
    for p in payloads() {
        host.bus()
            .publish(BusMessage::new("seq.one", p))
            .await
            .unwrap();
    }
    assert_eq!(applied(&host).await, expected());
    let s = host.component_stats()[0].1;
    assert_eq!((s.handled, s.retried, s.dead_lettered), (30, 6, 0));
    host.shutdown(Duration::from_secs(5)).await;
}

/// A nats-server with the `SEQ` stream (`seq.>`).
async fn seq_stream() -> (NatsServer, jetstream::Context) {
    let server = NatsServer::start();
    let js = jetstream::new(server.client().await);
    js.create_stream(stream::Config {
        name: "SEQ".into(),
        subjects: vec!["seq.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    (server, js)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_through_retries_on_a_jetstream_consumer() {
    let (server, js) = seq_stream().await;
    for p in payloads() {
        js.publish("seq.one", p.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let host = Host::start(&manifest(&order_component(Some(&server.url()))))
        .await
        .unwrap();
    assert_eq!(applied(&host).await, expected());
    assert!(host.wait_idle(Duration::from_secs(10)).await);
    let s = host.component_stats()[0].1;
    assert_eq!((s.handled, s.retried, s.dead_lettered), (30, 6, 0));
    host.shutdown(Duration::from_secs(5)).await;
    // Everything acknowledged, nothing left for redelivery.
    assert_eq!(
        weir_tests::consumer_backlog(&js, "SEQ", "order").await,
        (0, 0)
    );
}

/// Payloads `0..n` in order, every 7th trapping its first delivery and
/// every 11th asking for a retry on it.
fn batch_payloads(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match (i % 7, i % 11) {
            (3, _) => format!("{i}-trap-once"),
            (_, 5) => format!("{i}-fail-once"),
            _ => i.to_string(),
        })
        .collect()
}

/// `order-once` on one subject, batches allowed (the default).
fn batch_component(nats: Option<&str>) -> String {
    order_component(nats)
        .replace("behaviour = \"order\"", "behaviour = \"order-once\"")
        .replace("max_deliver = 3", "max_deliver = 3, max_batch = 64")
}

/// Waits until `o:order` holds `n` payloads; returns it.
async fn applied_n(host: &Host, n: usize) -> String {
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = host.cache().unwrap().get("o:order").await.unwrap();
        let text = got.map(|b| String::from_utf8(b.to_vec()).unwrap());
        if let Some(t) = &text
            && t.matches(',').count() >= n
        {
            return t.clone();
        }
        assert!(
            tokio::time::Instant::now() < until,
            "applied so far: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a batched run must show: every payload applied once, in order,
/// though some trapped inside a batch and some asked for a retry there.
fn check_batched(host: &Host, text: &str, payloads: &[String]) {
    let want: String = payloads.iter().map(|p| format!("{p},")).collect();
    assert_eq!(text, want);
    let s = host.component_stats()[0].1;
    let traps = payloads.iter().filter(|p| p.contains("trap-once")).count() as u64;
    let fails = payloads.iter().filter(|p| p.contains("fail-once")).count() as u64;
    assert!(s.batches > 0 && s.batched >= 2 * s.batches, "{s:?}");
    assert_eq!(
        (s.handled, s.dead_lettered),
        (payloads.len() as u64, 0),
        "{s:?}"
    );
    // A trap-once payload traps alone on its first delivery (once more if
    // it was in a batch, which is not counted as a delivery); each such
    // retry and each fail-once is retried once.
    assert!(s.traps >= traps, "{s:?}");
    assert_eq!(s.retried, traps + fails, "{s:?}");
}

/// A host running `batch_component` on the embedded bus, with `payloads`
/// published on `seq.one` at once.
async fn batched_host_fed(payloads: &[String]) -> Host {
    let host = Host::start(&manifest(&batch_component(None)))
        .await
        .unwrap();
    for p in payloads {
        host.bus()
            .publish(BusMessage::new("seq.one", p.clone()))
            .await
            .unwrap();
    }
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_keep_order_through_traps_and_retries_on_the_embedded_bus() {
    let payloads = batch_payloads(300);
    let host = batched_host_fed(&payloads).await;
    let text = applied_n(&host, payloads.len()).await;
    assert!(host.wait_idle(Duration::from_secs(10)).await);
    check_batched(&host, &text, &payloads);
    host.shutdown(Duration::from_secs(5)).await;
}

/// A burst of three queues' worth on one subject, published at once: the
/// router waits for room in the worker's queue (the embedded bus holds the
/// rest), nothing is lost or reordered through traps and retries, and the
/// host never holds more than the bound (1,024 queued, 1,024 taken by the
/// worker, and one run of 64).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_queue_waits_for_room_and_loses_nothing() {
    let payloads = batch_payloads(3000);
    let host = batched_host_fed(&payloads).await;
    let mut most = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    while host.component_stats()[0].1.handled < payloads.len() as u64 {
        most = most.max(host.component_stats()[0].1.in_flight);
        assert!(
            tokio::time::Instant::now() < until,
            "{:?}",
            host.component_stats()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Beyond one queue (the worker took its share and the queue filled
    // again), never beyond the bound.
    assert!(most > 1024, "the burst never filled the queue: {most}");
    assert!(most <= 2 * 1024 + 64, "{most} deliveries in flight at once");
    let text = applied_n(&host, payloads.len()).await;
    assert!(host.wait_idle(Duration::from_secs(10)).await);
    check_batched(&host, &text, &payloads);
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_keep_order_through_traps_and_retries_on_a_jetstream_consumer() {
    let (server, js) = seq_stream().await;
    let payloads = batch_payloads(300);
    weir_tests::publish_acked(
        &js,
        payloads
            .iter()
            .map(|p| ("seq.one".to_owned(), bytes::Bytes::from(p.clone()))),
    )
    .await;
    let host = Host::start(&manifest(&batch_component(Some(&server.url()))))
        .await
        .unwrap();
    let text = applied_n(&host, payloads.len()).await;
    assert!(host.wait_idle(Duration::from_secs(10)).await);
    check_batched(&host, &text, &payloads);
    host.shutdown(Duration::from_secs(5)).await;
    // Everything acknowledged, nothing left for redelivery.
    assert_eq!(
        weir_tests::consumer_backlog(&js, "SEQ", "order").await,
        (0, 0)
    );
}

/// A batch carries every part of every message: subject, headers, stream,
/// sequence and attempt come out of the packed frames as they went into
/// the stream, message by message, whatever batches they were cut into.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_carries_every_part_of_every_message() {
    let (server, js) = seq_stream().await;
    let n = 200u64;
    let mut want = String::new();
    for i in 1..=n {
        let subject = format!("seq.s{}", i % 3);
        let payload = format!("p{i}{}", "x".repeat((i % 5) as usize));
        let mut headers = async_nats::HeaderMap::new();
        // Some with none, some with one, some with a repeated name.
        for k in 0..(i % 3) {
            headers.append("k", format!("v{i}-{k}").as_str());
        }
        let seen: Vec<(String, String)> = (0..(i % 3))
            .map(|k| ("k".to_owned(), format!("v{i}-{k}")))
            .collect();
        js.publish_with_headers(subject.clone(), headers, payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
        want.push_str(&format!(
            "{subject}|{seen:?}|{:?}|{:?}|1|{payload}\n",
            Some("SEQ"),
            Some(i)
        ));
    }
    let toml = order_component(Some(&server.url()))
        .replace("behaviour = \"order\"", "behaviour = \"describe\"")
        .replace("instances = 2", "instances = 1");
    let host = Host::start(&manifest(&toml)).await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    let got = loop {
        let got = host.cache().unwrap().get("o:described").await.unwrap();
        let text = got.map(|b| String::from_utf8(b.to_vec()).unwrap());
        if let Some(t) = text.filter(|t| t.lines().count() as u64 >= n) {
            break t;
        }
        assert!(tokio::time::Instant::now() < until, "not all described");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(host.wait_idle(Duration::from_secs(10)).await);
    assert_eq!(got, want);
    let s = host.component_stats()[0].1;
    // They came in batches (a stored stream is read in pulls of many).
    assert!(s.batches > 0 && s.batched >= n / 2, "{s:?}");
    host.shutdown(Duration::from_secs(5)).await;
}
