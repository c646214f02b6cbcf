//! The demo components' own tests, written the way an author would with
//! `weir::testing::Harness`: the deployed `.wasm`, no servers, a virtual
//! clock, and JetStream's redeliveries made on purpose.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::time::Duration;

use weir::testing::{Harness, Settled};
use weir_tests::{reference, sample_messages, sample_trade_messages, wasm};

/// sma-crossover on a JetStream consumer, as in examples/nats.toml.
fn sma() -> Harness {
    Harness::new(&format!(
        r#"
[components.sma-crossover]
wasm = "{}"
subscribe = [{{ subject = "TRADE.trade.>", stream = "TRADE", consumer = "sma", ack_wait_ms = 30000 }}]
grants = {{ subscribe = ["TRADE.trade.>"], publish = ["signals.*"], streams = ["TRADE"], cache = "sma" }}
limits = {{ max_deliver = 4 }}
config = {{ fast_window = 5, slow_window = 20 }}
"#,
        wasm("sma_crossover").display()
    ))
    .unwrap()
}

fn signals(h: &Harness) -> std::collections::BTreeMap<String, Vec<reference::Signal>> {
    let msgs: Vec<weir::bus::BusMessage> = h
        .published("signals.>")
        .into_iter()
        .map(|p| weir::bus::BusMessage::new(p.subject, p.payload))
        .collect();
    reference::published_signals(&msgs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sma_signals_match_the_reference_and_each_trade_is_acked_once() {
    let mut h = sma();
    let trades = sample_trade_messages(1500);
    let mut seqs = Vec::new();
    for t in &trades {
        seqs.push(h.push(&t.subject, t.payload.clone()).await);
    }
    assert_eq!(signals(&h), reference::sma_signals(&trades, 5, 20));
    for s in seqs {
        assert_eq!(h.settled(s), [Settled::Acked { attempt: 1 }]);
    }
    // Its state is in the cache, in its namespace.
    assert!(h.cache("sma:sma:BTCUSDT").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_late_redeliveries_change_nothing() {
    let mut h = sma();
    let trades = sample_trade_messages(1500);
    let expected = reference::sma_signals(&trades, 5, 20);
    let mut seqs = Vec::new();
    for (i, t) in trades.iter().enumerate() {
        if i == 300 {
            // This ack never reaches the server: the trade comes back after
            // ack_wait, behind the 1,199 newer ones.
            h.lose_next_ack();
        }
        seqs.push(h.push(&t.subject, t.payload.clone()).await);
    }
    // A duplicate right away, too.
    h.redeliver(seqs[700]).await;
    h.advance(Duration::from_secs(31)).await;

    assert_eq!(
        h.settled(seqs[300]),
        [
            Settled::AckLost { attempt: 1 },
            Settled::Acked { attempt: 2 }
        ]
    );
    assert_eq!(
        h.settled(seqs[700]),
        [Settled::Acked { attempt: 1 }, Settled::Acked { attempt: 2 }]
    );
    // Applied once each: exactly the reference's signals, no extra ones.
    assert_eq!(signals(&h), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_trade_is_dead_lettered_and_terminated_at_once() {
    let mut h = sma();
    let seq = h
        .push("TRADE.trade.BTCUSDT", r#"{"symbol":"BTCUSDT","price":"x"}"#)
        .await;
    assert_eq!(h.settled(seq), [Settled::Termed { attempt: 1 }]);
    let letters = h.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (
            letters[0].original_subject.as_str(),
            letters[0].attempts,
            letters[0].stream.as_deref(),
            letters[0].sequence
        ),
        ("TRADE.trade.BTCUSDT", 1, Some("TRADE"), Some(seq))
    );
    assert!(
        letters[0].error.starts_with("rejected:"),
        "{}",
        letters[0].error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_component_is_retried_on_the_virtual_clock_then_dead_lettered() {
    let mut h = Harness::new(&format!(
        r#"
[components.flaky]
wasm = "{}"
subscribe = [{{ subject = "jobs.>", stream = "JOBS", consumer = "flaky" }}]
grants = {{ subscribe = ["jobs.>"], streams = ["JOBS"] }}
limits = {{ max_deliver = 3 }}
config = {{ behaviour = "trap" }}
"#,
        wasm("hostile").display()
    ))
    .unwrap();
    let before = h.now();
    let seq = h.push("jobs.one", "{}").await;
    // Kept in progress through two in-place retries, then terminated after
    // its dead letter: delivered once by the server, attempted 3 times.
    assert_eq!(
        h.settled(seq),
        [
            Settled::InProgress { attempt: 1 },
            Settled::InProgress { attempt: 1 },
            Settled::Termed { attempt: 1 }
        ]
    );
    let letters = h.dead_letters();
    assert_eq!(letters[0].attempts, 3);
    assert!(letters[0].error.contains("trap"), "{}", letters[0].error);
    // The backoffs (10 ms, 20 ms) passed on the virtual clock.
    assert_eq!(
        h.now().duration_since(before).unwrap(),
        Duration::from_millis(30)
    );
    // Nothing is left for the server to redeliver.
    h.advance(Duration::from_secs(3600)).await;
    assert_eq!(h.settled(seq).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_alerts_fire_once_per_crossing_including_alerts_created() {
    let mut h = Harness::new(&format!(
        r#"
[components.price-alert]
wasm = "{}"
subscribe = [{{ subject = "TRADE.trade.*" }}, {{ subject = "alerts.created" }}]
grants = {{ subscribe = ["TRADE.trade.*", "alerts.created"], publish = ["alerts.triggered"], cache = "alerts" }}

[components.price-alert.config]
alerts = [
    {{ id = "btc-below-62k", symbol = "BTCUSDT", condition = "below", threshold = 62000 }},
    {{ id = "sol-above-152", symbol = "SOLUSDT", condition = "above", threshold = 152 }},
]
"#,
        wasm("price_alert").display()
    ))
    .unwrap();
    let msgs = sample_messages(usize::MAX);
    for m in &msgs {
        h.push_message(m.clone()).await;
    }
    let spec = |id: &str, symbol: &str, above, threshold| reference::AlertSpec {
        id: id.into(),
        symbol: symbol.into(),
        above,
        threshold,
    };
    let want = reference::triggered_alerts(
        &msgs,
        &[
            spec("btc-below-62k", "BTCUSDT", false, 62000.0),
            spec("sol-above-152", "SOLUSDT", true, 152.0),
        ],
        &[spec("alert-eth-dip", "ETHUSDT", false, 3380.0)],
    );
    let have: Vec<(String, u64)> = h
        .published("alerts.triggered")
        .iter()
        .map(|p| {
            let a = p.json();
            (
                a["alert_id"].as_str().unwrap().to_owned(),
                a["trade_id"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(want.iter().any(|(id, _)| id == "alert-eth-dip"));
    assert_eq!(have, want, "in trade order");
}

/// A trade the host cannot decode is dead-lettered at once with the
/// decoder's reason, and the component is never called for it: here it
/// cannot run at all (one unit of fuel per event), so a call would fail
/// and be retried, as the good trade after it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trade_the_host_cannot_decode_is_dead_lettered_without_calling_the_component() {
    let mut h = Harness::new(&format!(
        r#"
[components.sma-crossover]
wasm = "{}"
subscribe = [{{ subject = "TRADE.trade.>", stream = "TRADE", consumer = "sma" }}]
grants = {{ subscribe = ["TRADE.trade.>"], publish = ["signals.*"], streams = ["TRADE"], cache = "sma" }}
limits = {{ max_deliver = 2, fuel_per_event = 1 }}
"#,
        wasm("sma_crossover").display()
    ))
    .unwrap();
    let bad = h
        .push(
            "TRADE.trade.BTCUSDT",
            r#"{"symbol":"BTCUSDT","price":"x","ts":1}"#,
        )
        .await;
    assert_eq!(h.settled(bad), [Settled::Termed { attempt: 1 }]);
    let good = h
        .push(
            "TRADE.trade.BTCUSDT",
            r#"{"symbol":"BTCUSDT","price":64000.5,"qty":1,"ts":1,"trade_id":1}"#,
        )
        .await;
    h.advance(Duration::from_secs(60)).await;
    let letters = h.dead_letters();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!((letters[0].sequence, letters[0].attempts), (Some(bad), 1));
    assert!(
        letters[0]
            .error
            .starts_with("rejected: weir could not decode it: malformed trade JSON:"),
        "{}",
        letters[0].error
    );
    // The good trade reached the component, which could not run it.
    assert_eq!((letters[1].sequence, letters[1].attempts), (Some(good), 2));
    assert!(letters[1].error.contains("fuel"), "{}", letters[1].error);
}

/// Books and candles reach a `Strategy` decoded, one per call: price-alert
/// alerts on a book's mid price and a candle's close, in arrival order,
/// and a book it cannot decode is dead-lettered without reaching it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn books_and_candles_reach_a_strategy_decoded_in_order() {
    let mut h = Harness::new(&format!(
        r#"
[components.price-alert]
wasm = "{}"
subscribe = [{{ subject = "TRADE.depth.*" }}, {{ subject = "market.data.ohlcv.*" }}]
grants = {{ subscribe = ["TRADE.depth.*", "market.data.ohlcv.*"], publish = ["alerts.triggered"], cache = "alerts" }}

[components.price-alert.config]
alerts = [
    {{ id = "btc-mid-above-64k", symbol = "BTCUSDT", condition = "above", threshold = 64000 }},
    {{ id = "aapl-close-below-150", symbol = "AAPL", condition = "below", threshold = 150 }},
]
"#,
        wasm("price_alert").display()
    ))
    .unwrap();
    let book = |bid: &str, ask: &str, ts: u64| {
        format!(r#"{{"s":"BTCUSDT","b":[["{bid}","1"]],"a":[["{ask}","2"]],"E":{ts}}}"#)
    };
    let candle = |close: f64, ts: u64| {
        format!(
            r#"{{"ticker":"AAPL","open":151,"high":152,"low":149,"close":{close},"volume":10,"timestamp":{ts}}}"#
        )
    };
    h.push("TRADE.depth.BTCUSDT", book("63990", "64000", 1))
        .await; // mid 63995
    h.push("market.data.ohlcv.AAPL", candle(151.0, 2)).await;
    h.push("TRADE.depth.BTCUSDT", book("64000", "64010", 3))
        .await; // mid 64005: fires
    h.push("TRADE.depth.BTCUSDT", r#"{"s":"BTCUSDT","b":"nope"}"#)
        .await;
    h.push("market.data.ohlcv.AAPL", candle(149.5, 4)).await; // fires
    h.push("TRADE.depth.BTCUSDT", book("64001", "64011", 5))
        .await; // still above
    let have: Vec<(String, f64, String)> = h
        .published("alerts.triggered")
        .iter()
        .map(|p| {
            let a = p.json();
            assert!(a.get("trade_id").is_none(), "{a}");
            (
                a["alert_id"].as_str().unwrap().to_owned(),
                a["value"].as_f64().unwrap(),
                a["time"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        have,
        [
            (
                "btc-mid-above-64k".to_owned(),
                64005.0,
                "1970-01-01T00:00:00.003Z".to_owned()
            ),
            (
                "aapl-close-below-150".to_owned(),
                149.5,
                "1970-01-01T00:00:00.004Z".to_owned()
            ),
        ]
    );
    let letters = h.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0]
            .error
            .contains("weir could not decode it: malformed depth JSON on TRADE.depth.BTCUSDT"),
        "{}",
        letters[0].error
    );
}
