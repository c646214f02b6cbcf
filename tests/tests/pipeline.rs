//! The demo pipeline on the embedded bus: exact signals and alerts for the
//! sample data, compared with a native reference implementation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::time::Duration;

use weir::Host;
use weir::observe::{http_get, http_request};
use weir_tests::reference::{self, AlertSpec};
use weir_tests::{Collector, DEMO, feed, manifest, sample_messages, sample_trades};

fn spec(id: &str, symbol: &str, above: bool, threshold: f64) -> AlertSpec {
    AlertSpec {
        id: id.into(),
        symbol: symbol.into(),
        above,
        threshold,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_data_gives_exactly_the_reference_signals_and_alerts() {
    let host = Host::start(&manifest(DEMO)).await.unwrap();
    let signals = Collector::start(&*host.bus(), "signals.>").await;
    let alerts = Collector::start(&*host.bus(), "alerts.triggered").await;
    let dlq = Collector::start(&*host.bus(), "dlq.>").await;

    let n = feed(&host, &sample_trades(), usize::MAX).await;
    assert!(
        host.wait_idle(Duration::from_secs(60)).await,
        "host did not go idle"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;

    let msgs = sample_messages(usize::MAX);
    assert_eq!(n, msgs.len());
    let expected = reference::sma_signals(&msgs, 5, 20);
    let got = reference::published_signals(&signals.messages());
    let total: usize = expected.values().map(Vec::len).sum();
    assert!(
        total > 100,
        "the sample data should cross often, got {total}"
    );
    assert_eq!(got, expected);

    let created = [spec("alert-eth-dip", "ETHUSDT", false, 3380.0)];
    let config = [
        spec("btc-below-62k", "BTCUSDT", false, 62000.0),
        spec("sol-above-152", "SOLUSDT", true, 152.0),
    ];
    let mut want = reference::triggered_alerts(&msgs, &config, &created);
    let mut have: Vec<(String, u64)> = alerts
        .json()
        .iter()
        .map(|a| {
            (
                a["alert_id"].as_str().unwrap().to_owned(),
                a["trade_id"].as_u64().unwrap(),
            )
        })
        .collect();
    want.sort();
    have.sort();
    assert!(
        want.iter().any(|(id, _)| id == "alert-eth-dip"),
        "the alerts.created alert must fire in the sample"
    );
    assert_eq!(have, want);

    // The cached signal has the seed's format.
    let stats = host.component_stats();
    let sma = &stats.iter().find(|(n, _)| n == "sma-crossover").unwrap().1;
    assert_eq!(
        (sma.received, sma.handled, sma.dead_lettered, sma.traps),
        (6000, 6000, 0, 0)
    );
    assert_eq!(sma.published as usize, total);
    assert!(dlq.messages().is_empty());
    // sma keeps each symbol's state in the cache: one read and one write
    // per call (a `handle-batch` call reads a symbol's state once and
    // writes it once), plus the cached signal. Only the first read of
    // each of the 4 symbols misses.
    let calls = sma.batches + (sma.handled - sma.batched);
    let l1 = host.cache_stats()[0];
    assert!(l1.sets >= calls + total as u64, "{l1:?}, {calls} calls");
    assert!(l1.hits + 4 >= calls, "{l1:?}, {calls} calls");
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_trade_is_dead_lettered_with_its_reason_and_others_go_on() {
    let host = Host::start(&manifest(DEMO)).await.unwrap();
    let dlq = Collector::start(&*host.bus(), "dlq.>").await;
    let signals = Collector::start(&*host.bus(), "signals.>").await;
    let bus = host.bus();
    bus.publish(weir::bus::BusMessage::new(
        "TRADE.trade.BTCUSDT",
        "{not json",
    ))
    .await
    .unwrap();
    bus.publish(weir::bus::BusMessage::new(
        "TRADE.trade.BTCUSDT",
        r#"{"symbol":"BTCUSDT","price":-5,"ts":1}"#,
    ))
    .await
    .unwrap();
    feed(&host, &sample_trades(), 400).await;
    assert!(host.wait_idle(Duration::from_secs(30)).await);

    // Both components reject both bad messages: four dead letters, one attempt each.
    let letters = dlq.wait_for(4, Duration::from_secs(5)).await;
    assert_eq!(letters.len(), 4);
    for l in &letters {
        let v: serde_json::Value = serde_json::from_slice(&l.payload).unwrap();
        assert_eq!(l.subject, "dlq.TRADE.trade.BTCUSDT");
        assert_eq!(v["attempts"], 1);
        let err = v["error"].as_str().unwrap();
        assert!(
            err.contains("malformed trade JSON") || err.contains("not a positive number"),
            "{err}"
        );
        assert!(["sma-crossover", "price-alert"].contains(&v["component"].as_str().unwrap()));
    }
    let expected = reference::sma_signals(&sample_messages(400), 5, 20);
    assert_eq!(reference::published_signals(&signals.messages()), expected);
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_outside_grants_is_denied_and_dead_lettered() {
    let m = manifest(
        r#"
[components.sma-crossover]
wasm = "{sma}"
subscribe = [{ subject = "TRADE.trade.*" }]
grants = { subscribe = ["TRADE.trade.*"], publish = ["orders.*"], cache = "sma" }
config = { fast_window = 2, slow_window = 3 }
"#,
    );
    let host = Host::start(&m).await.unwrap();
    let dlq = Collector::start(&*host.bus(), "dlq.>").await;
    let leaked = Collector::start(&*host.bus(), "signals.>").await;
    feed(&host, &sample_trades(), 300).await;
    assert!(host.wait_idle(Duration::from_secs(30)).await);
    let letters = dlq.json();
    assert!(!letters.is_empty());
    for v in &letters {
        let err = v["error"].as_str().unwrap();
        assert!(
            err.contains("may not publish on signals.") && err.contains("orders.*"),
            "{err}"
        );
    }
    assert!(leaked.messages().is_empty(), "nothing may reach signals.*");
    let s = host.component_stats()[0].1;
    assert_eq!(s.denied as usize, letters.len());
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_status_over_http() {
    let text = format!("[host]\nhttp = \"127.0.0.1:0\"\n{DEMO}");
    let host = Host::start(&manifest(&text)).await.unwrap();
    feed(&host, &sample_trades(), 400).await;
    assert!(host.wait_idle(Duration::from_secs(30)).await);
    let addr = host.http_addr().unwrap().to_string();
    let (code, body) = http_get(&addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    let stats = |name: &str| {
        host.component_stats()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
    };
    let handled = stats("sma-crossover").handled;
    assert!(
        body.contains(&format!(
            "weir_messages_handled_total{{component=\"sma-crossover\",subject=\"TRADE.trade.*\"}} {handled}"
        )),
        "{body}"
    );
    // Per subscription: price-alert's two subscriptions add up to its total.
    let received: u64 = body
        .lines()
        .filter(|l| l.starts_with("nats_messages_received_total{component=\"price-alert\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(received, stats("price-alert").received, "{body}");
    for subject in ["TRADE.trade.*", "alerts.created"] {
        let line = format!(
            "nats_message_processing_seconds_count{{component=\"price-alert\",subject=\"{subject}\"}}"
        );
        assert!(body.contains(&line), "{line} in {body}");
    }
    assert!(
        body.contains("weir_cache_hits_total{layer=\"l1\"}"),
        "{body}"
    );
    assert_eq!(http_get(&addr, "/healthz").await.unwrap().0, 200);
    assert_eq!(
        http_get(&addr, "/readyz").await.unwrap(),
        (200, "ready\n".to_owned())
    );
    let (code, body) = http_get(&addr, "/api/status").await.unwrap();
    assert_eq!(code, 200);
    let status: weir::observe::Status = serde_json::from_str(&body).unwrap();
    assert_eq!(status.components.len(), 2);
    assert!(status.ready.is_empty() && status.nats.is_none());
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_low_hit_rate_publishes_a_cache_alert_and_thresholds_change_at_run_time() {
    let m = manifest(
        r#"
[host]
http = "127.0.0.1:0"

[cache]
stats_interval_secs = 1

[components.reader]
wasm = "{hostile}"
subscribe = [{ subject = "poke.*" }]
grants = { subscribe = ["poke.*"], cache = "reader" }
config = { behaviour = "cache-get", loops = 50 }
"#,
    );
    let host = Host::start(&m).await.unwrap();
    let alerts = Collector::start(&*host.bus(), "cache.alert").await;
    let bus = host.bus();
    // Every read misses: the key was never written.
    for i in 0..10 {
        bus.publish(weir::bus::BusMessage::new(format!("poke.{i}"), "{}"))
            .await
            .unwrap();
    }
    let got = alerts.wait_for(1, Duration::from_secs(10)).await;
    let a: serde_json::Value = serde_json::from_slice(&got[0].payload).unwrap();
    assert_eq!(
        (a["type"].as_str(), a["threshold"].as_f64()),
        (Some("hit_rate"), Some(0.7)),
        "{a}"
    );
    assert_eq!(a["value"].as_f64(), Some(0.0), "{a}");

    // The dashboard document has the seed's structure and holds the alert.
    let addr = host.http_addr().unwrap().to_string();
    let (code, body) = http_get(&addr, "/api/dashboard").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(d["recent_alerts"][0]["type"], "hit_rate", "{d}");
    assert_eq!(d["current_metrics"]["current_hit_rate"], 0.0, "{d}");
    assert_eq!(d["average_metrics"]["avg_hit_rate"], 0.0, "{d}");
    assert!(
        d["current_metrics"]["current_memory_usage"].is_number(),
        "{d}"
    );
    assert_eq!(d["system_metrics"]["source"], "process", "no Redis: {d}");
    assert!(
        d["system_metrics"]["used_memory"].as_u64().unwrap() > 0,
        "{d}"
    );
    assert!(!d["performance_history"].as_array().unwrap().is_empty());
    assert_eq!(d["components"][0]["counters"]["handled"], 10, "{d}");

    // Thresholds change over HTTP too; bad values are refused with a reason.
    let put =
        |body: &'static str| http_request(&addr, "PUT", "/api/cache/thresholds", body.as_bytes());
    let (code, body) = put(r#"{"error_rate_max": 0.5}"#).await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""error_rate_max":0.5"#), "{body}");
    let (code, body) = put(r#"{"memory_usage_max": -1}"#).await.unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("fractions"), "{body}");
    let (_, body) = http_get(&addr, "/api/cache/thresholds").await.unwrap();
    assert!(
        body.contains(r#""error_rate_max":0.5"#) && body.contains(r#""memory_usage_max":0.8"#),
        "{body}"
    );

    let req = weir::bus::BusMessage::new("cache.monitor.thresholds", r#"{"hit_rate_min": 0.0}"#);
    let reply = bus.request(req, Duration::from_secs(2)).await.unwrap();
    let r: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(
        (r["ok"].as_bool(), r["thresholds"]["hit_rate_min"].as_f64()),
        (Some(true), Some(0.0)),
        "{r}"
    );
    let bad = bus
        .request(
            weir::bus::BusMessage::new("cache.monitor.thresholds", r#"{"hit_rate_min": 7}"#),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&bad.payload).unwrap();
    assert_eq!(r["ok"].as_bool(), Some(false), "{r}");
    host.shutdown(Duration::from_secs(5)).await;
}
