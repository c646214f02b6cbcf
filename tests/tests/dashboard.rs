//! The dashboard page in headless Chromium: it loads, draws live numbers
//! that change while events flow, changes thresholds, and logs no console
//! errors. The screenshot is kept at `target/artifacts/dashboard.png`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use weir::Host;
use weir_tests::browser::Browser;
use weir_tests::{DEMO, manifest, root, sample_messages};

/// The demo, with HTTP on a free port and a cache report every second.
fn demo() -> String {
    format!("[host]\nhttp = \"127.0.0.1:0\"\n\n[cache]\nstats_interval_secs = 1\n{DEMO}")
}

/// Publishes the sample trades at about `rate` a second until stopped.
fn feed_slowly(host: &Host, rate: u64, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let bus = host.bus();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / rate));
        for msg in sample_messages(usize::MAX) {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            tick.tick().await;
            bus.publish(msg).await.unwrap();
        }
    })
}

fn number(v: &serde_json::Value) -> u64 {
    v.as_str()
        .unwrap()
        .replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_live_numbers_in_chromium_without_console_errors() {
    let host = Host::start(&manifest(&demo())).await.unwrap();
    let addr = host.http_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = feed_slowly(&host, 200, stop.clone());

    let browser = Browser::launch();
    let mut page = browser.page().await;
    page.goto(&format!("http://{addr}/?every=250")).await;
    assert_eq!(page.eval("document.title").await, "weir dashboard");

    // Live: the handled count rises between two readings of the same page.
    let handled = "document.getElementById('kpi-handled-total').textContent";
    page.wait_for(
        &format!("Number({handled}.replace(/,/g, '')) > 0"),
        Duration::from_secs(15),
        "handled count",
    )
    .await;
    let first = number(&page.eval(handled).await);
    let updates = page.eval("Number(document.body.dataset.updates)").await;
    page.wait_for(
        &format!("Number({handled}.replace(/,/g, '')) > {first}"),
        Duration::from_secs(15),
        "handled count rising",
    )
    .await;
    let later = page.eval("Number(document.body.dataset.updates)").await;
    assert!(later.as_u64() > updates.as_u64(), "{updates} then {later}");

    // Charts: throughput has a line per component once two samples are in.
    page.wait_for(
        "document.querySelectorAll('#chart-throughput polyline').length === 2",
        Duration::from_secs(15),
        "throughput lines",
    )
    .await;
    let rate = page
        .eval("document.getElementById('kpi-rate').textContent")
        .await;
    assert_ne!(rate, "0", "events per second while feeding");
    let rows = page
        .eval(
            "[...document.querySelectorAll('#components tbody tr')].map(r => r.dataset.component)",
        )
        .await;
    assert_eq!(rows, serde_json::json!(["price-alert", "sma-crossover"]));
    // Every panel fits the 1400 px window: nothing cut off or scrolled sideways.
    let overflowing = page
        .eval("[...document.querySelectorAll('.panel')].filter(p => p.scrollWidth > p.clientWidth).map(p => p.querySelector('h2').textContent)")
        .await;
    assert_eq!(
        overflowing,
        serde_json::json!([]),
        "panels wider than the page"
    );
    let hit = page
        .eval("document.getElementById('kpi-hit').textContent")
        .await;
    assert!(hit.as_str().unwrap().ends_with('%'), "{hit}");
    assert_eq!(
        page.eval("getComputedStyle(document.getElementById('banner')).display")
            .await,
        "none",
        "the page never lost the host"
    );

    // The thresholds form changes the host's thresholds.
    page.eval(
        "document.getElementById('t-hit').value = '0.25'; \
         document.getElementById('thresholds').requestSubmit(); true",
    )
    .await;
    page.wait_for(
        "document.getElementById('thresholds-note').textContent === 'applied'",
        Duration::from_secs(5),
        "thresholds applied",
    )
    .await;
    let (_, body) = weir::observe::http_get(&addr.to_string(), "/api/cache/thresholds")
        .await
        .unwrap();
    assert!(body.contains(r#""hit_rate_min":0.25"#), "{body}");

    // A few seconds of history, so the kept screenshot shows lines.
    page.wait_for(
        "state.samples.length >= 5",
        Duration::from_secs(15),
        "five samples",
    )
    .await;
    let png = page.screenshot().await;
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root().join("target"), Into::into)
        .join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard.png"), &png).unwrap();
    println!("screenshot: {}", dir.join("dashboard.png").display());

    let problems = page.problems();
    assert!(problems.is_empty(), "console: {problems:#?}");
    stop.store(true, Ordering::Relaxed);
    feeder.await.unwrap();
    host.shutdown(Duration::from_secs(5)).await;
}
