//! The seeds' prediction pipeline as shipped in `examples/`: predictor
//! (OHLCV in, predictions out) and explainer (request-reply with a
//! correlation id), on the embedded bus with `examples/pipeline.toml` and on
//! a real nats-server with `examples/streams` applied and
//! `examples/pipeline-nats.toml`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use serde_json::{Value, json};
use weir::bus::BusMessage;
use weir::{EnvOverrides, Host, Manifest, streams};
use weir_tests::servers::NatsServer;
use weir_tests::{Collector, root};

fn candles() -> Vec<BusMessage> {
    std::fs::read_to_string(root().join("examples/data/ohlcv.ndjson"))
        .unwrap()
        .lines()
        .map(|l| weir::feed::parse_line(l).unwrap())
        .collect()
}

fn example(name: &str, nats_url: Option<&str>) -> Manifest {
    let path = root().join("examples").join(name);
    let Some(url) = nats_url else {
        return Manifest::load(&path, &EnvOverrides::none()).unwrap();
    };
    // The example as shipped, pointed at this test's server.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("nats://127.0.0.1:4222", url);
    let copy = root()
        .join("examples")
        .join(format!(".test-{}-{name}", std::process::id()));
    std::fs::write(&copy, text).unwrap();
    let m = Manifest::load(&copy, &EnvOverrides::none()).unwrap();
    std::fs::remove_file(&copy).unwrap();
    m
}

/// The newest prediction per ticker among published messages.
fn newest(msgs: &[BusMessage]) -> BTreeMap<String, (String, Value)> {
    let mut out = BTreeMap::new();
    for m in msgs {
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        out.insert(
            v["ticker"].as_str().unwrap().to_owned(),
            (m.subject.clone(), v),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_bus_each_candle_gives_a_prediction_and_requests_get_explanations() {
    let host = Host::start(&example("pipeline.toml", None)).await.unwrap();
    let bus = host.bus();
    let predictions = Collector::start(&*bus, "predictions.>").await;
    let audit = Collector::start(&*bus, "explanations.response").await;
    let n = weir_tests::feed(
        &host,
        &root().join("examples/data/ohlcv.ndjson"),
        usize::MAX,
    )
    .await;
    assert_eq!(n, 360);
    let got = predictions.wait_for(360, Duration::from_secs(20)).await;
    let last = newest(&got);
    assert_eq!(last.len(), 3);
    // GOOGL is listed under config earnings; the others are normal days.
    assert_eq!(last["GOOGL"].0, "predictions.earnings.GOOGL");
    assert_eq!(last["AAPL"].0, "predictions.normal.AAPL");
    for (_, v) in last.values() {
        assert_eq!(v["type"], "prediction");
        let c = v["data"]["confidence"].as_f64().unwrap();
        assert!((0.5..=0.95).contains(&c), "{v}");
        assert_eq!(v["metadata"]["timestamp"], "2025-07-30T10:59:00.000Z");
    }

    let ask = |body: Value| {
        let bus = bus.clone();
        async move {
            let r = bus
                .request(
                    BusMessage::new("explanations.request", body.to_string()),
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&r.payload).unwrap()
        }
    };
    let a = ask(json!({"ticker": "AAPL", "correlation_id": "req-12345"})).await;
    assert_eq!(a["correlation_id"], "req-12345");
    assert_eq!(
        a["prediction"], last["AAPL"].1,
        "explains the newest prediction"
    );
    assert!(
        a["explanation"]
            .as_str()
            .unwrap()
            .starts_with("AAPL: the model expects"),
        "{a}"
    );
    let none = ask(json!({"ticker": "TSLA", "correlation_id": "req-2"})).await;
    assert_eq!(
        (none["correlation_id"].as_str(), none["error"].as_str()),
        (Some("req-2"), Some("no prediction for TSLA yet"))
    );
    // A request that is not JSON is rejected (dead letter), not answered.
    let dlq = Collector::start(&*bus, "dlq.>").await;
    bus.publish(BusMessage::new("explanations.request", "AAPL prediction"))
        .await
        .unwrap();
    dlq.wait_for(1, Duration::from_secs(5)).await;
    assert!(host.wait_idle(Duration::from_secs(5)).await);
    assert_eq!(
        audit.messages().len(),
        2,
        "each answer is kept on explanations.response"
    );
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_predictions_are_stored_once_each_and_explanations_answer_plain_clients() {
    let server = NatsServer::start();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let defs = streams::load_dir(&root().join("examples/streams")).unwrap();
    streams::apply(&js, &defs).await.unwrap();
    let host = Host::start(&example("pipeline-nats.toml", Some(&server.url())))
        .await
        .unwrap();

    let all = candles();
    for c in &all {
        js.publish(c.subject.clone(), c.payload.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    weir_tests::wait_for_stream(&js, "PREDICTIONS", 360, Duration::from_secs(30)).await;

    // The last candles again, as after a crash between storing a
    // prediction and acking its candle: with the predictor's memory gone
    // it predicts again, and the message id keeps the stream at one each.
    host.cache()
        .unwrap()
        .invalidate_pattern("pipeline:history:*")
        .await
        .unwrap();
    for c in &all[all.len() - 3..] {
        js.publish(c.subject.clone(), c.payload.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while weir_tests::consumer_backlog(&js, "MARKET_DATA", "predictor").await != (0, 0) {
        assert!(tokio::time::Instant::now() < until, "candles left unacked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(host.wait_idle(Duration::from_secs(5)).await);
    let s = host
        .component_stats()
        .into_iter()
        .find(|(n, _)| n == "predictor")
        .unwrap()
        .1;
    assert_eq!(
        (s.handled, s.published),
        (363, 363),
        "the three were predicted again"
    );
    assert_eq!(
        weir_tests::stream_messages(&js, "PREDICTIONS").await,
        360,
        "and de-duplicated by Nats-Msg-Id"
    );

    // A plain NATS client asks; the EXPLANATIONS stream records the request
    // (no_ack: it does not answer in the explainer's place) and the answer.
    let r = client
        .request(
            "explanations.request",
            json!({"ticker": "MSFT", "correlation_id": "req-9"})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    let a: Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(
        (a["correlation_id"].as_str(), a["ticker"].as_str()),
        (Some("req-9"), Some("MSFT")),
        "{a}"
    );
    // The request and the answer are kept for audit.
    weir_tests::wait_for_stream(&js, "EXPLANATIONS", 2, Duration::from_secs(5)).await;
    host.shutdown(Duration::from_secs(5)).await;
}
