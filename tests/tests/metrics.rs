//! `/metrics` as a Prometheus server sees it: the whole scrape, after real
//! traffic, read by the Prometheus project's own OpenMetrics parser
//! (prometheus_client from PyPI, in the venv `just test` makes), with the
//! quantiles of every histogram checked against the host's own figures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::time::Duration;

use weir::Host;
use weir::observe::http_get;
use weir_tests::{DEMO, feed, manifest, openmetrics_check, sample_trades};

/// Bucket bounds are powers of two: "within one bucket" is a factor of 2.
fn within_one_bucket(a: f64, b: f64) -> bool {
    a > 0.0 && b > 0.0 && (a / b).log2().abs() <= 1.0 + 1e-9
}

#[test]
fn the_checker_refuses_what_the_audit_saw() {
    // The shape of the audit's scrape: buckets summed twice.
    let bad = "# TYPE x_seconds histogram\nx_seconds_sum 1.0\nx_seconds_count 50\n\
               x_seconds_bucket{le=\"1.0\"} 821\nx_seconds_bucket{le=\"+Inf\"} 871\n# EOF\n";
    let err = openmetrics_check(bad).unwrap_err();
    assert!(err.contains("Count does not match +Inf"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_histogram_in_the_scrape_is_valid_openmetrics() {
    let text = format!("[host]\nhttp = \"127.0.0.1:0\"\n{DEMO}");
    let host = Host::start(&manifest(&text)).await.unwrap();
    let addr = host.http_addr().unwrap().to_string();
    let fed = feed(&host, &sample_trades(), 1500).await;
    assert!(host.wait_idle(Duration::from_secs(60)).await);

    let (code, scrape) = http_get(&addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    let histograms = openmetrics_check(&scrape).unwrap_or_else(|e| panic!("{e}\n{scrape}"));
    let (_, dash) = http_get(&addr, "/api/dashboard").await.unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash).unwrap();

    // One series per subscription: sma-crossover 1, price-alert 2.
    let series: Vec<&serde_json::Value> = histograms
        .iter()
        .filter(|h| h["family"] == "nats_message_processing_seconds")
        .collect();
    assert_eq!(series.len(), 3, "{histograms:?}");
    let total: f64 = series.iter().map(|h| h["count"].as_f64().unwrap()).sum();
    let received: u64 = host.component_stats().iter().map(|(_, s)| s.received).sum();
    assert_eq!(total as u64, received, "every delivery counted once");
    assert!(received as usize >= fed, "{received} of {fed}");
    for h in &series {
        let sum = h["sum"].as_f64().unwrap();
        let count = h["count"].as_f64().unwrap();
        assert!(sum > 0.0 && sum < count * 10.0, "{h}");
    }

    // sma-crossover has one subscription: its series is the component's,
    // and the quantiles Prometheus would compute match the host's own.
    let sma = series
        .iter()
        .find(|h| h["labels"]["component"] == "sma-crossover")
        .unwrap();
    let own = dash["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sma-crossover")
        .unwrap();
    for q in ["50", "99"] {
        let prom = sma[format!("p{q}")].as_f64().unwrap();
        let host_s = own[format!("p{q}_ms")].as_f64().unwrap() / 1e3;
        assert!(
            within_one_bucket(prom, host_s),
            "p{q}: buckets say {prom} s, the host says {host_s} s"
        );
    }
    host.shutdown(Duration::from_secs(5)).await;
}
