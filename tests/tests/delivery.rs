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
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = host.cache().unwrap().get("o:order").await.unwrap();
        let text = got.map(|b| String::from_utf8(b.to_vec()).unwrap());
        if let Some(t) = &text
            && t.matches(',').count() >= MESSAGES
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_through_retries_on_a_jetstream_consumer() {
    let server = NatsServer::start();
    let js = jetstream::new(server.client().await);
    js.create_stream(stream::Config {
        name: "SEQ".into(),
        subjects: vec!["seq.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
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
