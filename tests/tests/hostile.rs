//! Misbehaving components: each failure stays inside its own instance, is
//! reported with the component's name and cause, and the other components
//! keep producing exactly their expected output.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::time::Duration;

use weir::Host;
use weir::bus::BusMessage;
use weir_tests::reference;
use weir_tests::{Collector, feed, manifest, sample_messages, sample_trades};

/// Lines of sample data fed while the hostile component misbehaves.
const TRADES: usize = 600;
/// Pokes sent to the hostile component.
const POKES: usize = 3;

/// The hostile component beside sma-crossover. `batch`: waiting pokes may
/// go to `handle-batch` together; else one per call (`max_batch = 1`), so
/// every count is per event.
fn manifest_with(behaviour: &str, batch: bool) -> String {
    // Wall-clock deadlines on a loaded 2-core machine: only the looping
    // guest should ever reach one.
    let deadline = if behaviour == "loop" { 200 } else { 5000 };
    let max_batch = if batch { 64 } else { 1 };
    format!(
        r#"
[components.sma-crossover]
wasm = "{{sma}}"
subscribe = [{{ subject = "TRADE.trade.*" }}]
grants = {{ subscribe = ["TRADE.trade.*"], publish = ["signals.*"], cache = "sma" }}

[components.hostile]
wasm = "{{hostile}}"
subscribe = [{{ subject = "poke.*" }}]
grants = {{ subscribe = ["poke.*"], cache = "hostile" }}
limits = {{ memory_mb = 16, time_per_event_ms = {deadline}, max_deliver = 2, max_batch = {max_batch} }}
config = {{ behaviour = "{behaviour}" }}
"#
    )
}

/// Runs the hostile component beside sma-crossover; returns its dead letters.
async fn survive(behaviour: &str) -> Vec<serde_json::Value> {
    survive_in(behaviour, false).await
}

/// [`survive`], with the pokes batched or not.
async fn survive_in(behaviour: &str, batch: bool) -> Vec<serde_json::Value> {
    let host = Host::start(&manifest(&manifest_with(behaviour, batch)))
        .await
        .unwrap();
    let signals = Collector::start(&*host.bus(), "signals.>").await;
    let dlq = Collector::start(&*host.bus(), "dlq.>").await;
    for i in 0..POKES {
        host.bus()
            .publish(BusMessage::new(format!("poke.{i}"), "{}"))
            .await
            .unwrap();
    }
    feed(&host, &sample_trades(), TRADES).await;
    assert!(
        host.wait_idle(Duration::from_secs(60)).await,
        "{behaviour}: host did not go idle"
    );
    let letters = dlq.wait_for(POKES, Duration::from_secs(10)).await;

    // The healthy component's output is exactly what it would be alone.
    let msgs = sample_messages(TRADES);
    let trades = msgs
        .iter()
        .filter(|m| m.subject.starts_with("TRADE."))
        .count() as u64;
    let expected = reference::sma_signals(&msgs, 5, 20);
    assert_eq!(
        reference::published_signals(&signals.messages()),
        expected,
        "{behaviour}"
    );
    let stats = host.component_stats();
    let sma = stats.iter().find(|(n, _)| n == "sma-crossover").unwrap().1;
    assert_eq!(
        (sma.handled, sma.traps, sma.dead_lettered),
        (trades, 0, 0),
        "{behaviour}"
    );

    // Every poke was tried twice on fresh instances, then dead-lettered
    // (in batches: after a failed batch, which is not counted as a delivery).
    let hostile = stats.iter().find(|(n, _)| n == "hostile").unwrap().1;
    assert_eq!(hostile.received, POKES as u64);
    if batch {
        // The first poke goes alone (it finds no others waiting); the rest
        // wait behind its retry backoff, so they come in a batch.
        assert!(hostile.batches >= 1, "{behaviour}: {hostile:?}");
        assert_eq!(
            hostile.traps,
            2 * POKES as u64 + hostile.batches,
            "{behaviour}: {hostile:?}"
        );
    } else {
        assert_eq!(hostile.traps, 2 * POKES as u64, "{behaviour}: {hostile:?}");
        assert_eq!(hostile.batches, 0);
    }
    assert_eq!(hostile.dead_lettered, POKES as u64);
    assert_eq!(hostile.handled, 0);
    host.shutdown(Duration::from_secs(5)).await;

    let letters: Vec<serde_json::Value> = letters
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    for l in &letters {
        assert_eq!(l["component"], "hostile");
        assert_eq!(l["attempts"], 2);
        assert!(l["original_subject"].as_str().unwrap().starts_with("poke."));
        assert!(
            l["error"]
                .as_str()
                .unwrap()
                .starts_with("component hostile "),
            "{l}"
        );
    }
    letters
}

fn error_of(letters: &[serde_json::Value]) -> String {
    letters[0]["error"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trapping_component() {
    let e = error_of(&survive("trap").await);
    assert!(e.contains("trapped") && e.contains("unreachable"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_component() {
    let e = error_of(&survive("panic").await);
    assert!(e.contains("trapped"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looping_component_is_stopped_by_its_deadline() {
    let e = error_of(&survive("loop").await);
    assert!(
        e.contains("missed its deadline") && e.contains("200 ms"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocating_component_is_stopped_by_its_memory_limit() {
    let e = error_of(&survive("alloc").await);
    assert!(
        e.contains("hit a resource limit") && e.contains("memory limit of 16777216 bytes"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursing_component_overflows_its_stack() {
    let e = error_of(&survive("recurse").await);
    assert!(e.contains("overflowed its stack"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trapping_and_looping_components_are_contained_inside_batches() {
    // A failed batch is thrown away whole and its messages are delivered
    // again one by one: the same dead letters, errors and counts per event.
    let e = error_of(&survive_in("trap", true).await);
    assert!(e.contains("trapped") && e.contains("unreachable"), "{e}");
    // A loop inside a batch of n runs into n × the per-event deadline.
    let e = error_of(&survive_in("loop", true).await);
    assert!(
        e.contains("missed its deadline") && e.contains("200 ms"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_instance_takes_over_after_a_trap() {
    let m = manifest(
        r#"
[components.hostile]
wasm = "{hostile}"
subscribe = [{ subject = "poke.*" }]
grants = { subscribe = ["poke.*"], cache = "hostile" }
limits = { max_deliver = 3, max_batch = 1 }
config = { behaviour = "trap-first" }
"#,
    );
    let host = Host::start(&m).await.unwrap();
    let dlq = Collector::start(&*host.bus(), "dlq.>").await;
    for i in 0..5 {
        host.bus()
            .publish(BusMessage::new(format!("poke.{i}"), "{}"))
            .await
            .unwrap();
    }
    assert!(host.wait_idle(Duration::from_secs(10)).await);
    let s = host.component_stats()[0].1;
    assert_eq!(
        (
            s.received,
            s.handled,
            s.traps,
            s.restarts,
            s.retried,
            s.dead_lettered
        ),
        (5, 5, 5, 5, 5, 0)
    );
    assert!(dlq.messages().is_empty());
    host.shutdown(Duration::from_secs(5)).await;
}

/// Runs a hostile component that rejects (or handles) every poke beside
/// sma-crossover; checks sma's output is exact; returns the dead letters.
async fn contained(behaviour: &str, limits: &str, handled: bool) -> Vec<serde_json::Value> {
    contained_with_stats(behaviour, limits, handled).await.0
}

/// [`contained`], also returning the hostile component's counters.
async fn contained_with_stats(
    behaviour: &str,
    limits: &str,
    handled: bool,
) -> (Vec<serde_json::Value>, weir::stats::ComponentSnapshot) {
    // One poke per call: the quotas and deadlines checked are per event.
    let limits = if limits.is_empty() {
        "max_batch = 1".to_owned()
    } else {
        format!("max_batch = 1, {limits}")
    };
    let text = format!(
        r#"
[components.sma-crossover]
wasm = "{{sma}}"
subscribe = [{{ subject = "TRADE.trade.*" }}]
grants = {{ subscribe = ["TRADE.trade.*"], publish = ["signals.*"], cache = "sma" }}

[components.hostile]
wasm = "{{hostile}}"
subscribe = [{{ subject = "poke.*" }}]
grants = {{ subscribe = ["poke.*"], publish = ["flood.*"], cache = "hostile" }}
limits = {{ {limits} }}
config = {{ behaviour = "{behaviour}" }}
"#
    );
    let host = Host::start(&manifest(&text)).await.unwrap();
    let signals = Collector::start(&*host.bus(), "signals.>").await;
    let dlq = Collector::start(&*host.bus(), "dlq.>").await;
    let msgs = sample_messages(TRADES);
    let half = msgs.len() / 2;
    feed(&host, &sample_trades(), half).await;
    for i in 0..POKES {
        host.bus()
            .publish(BusMessage::new(format!("poke.{i}"), "{}"))
            .await
            .unwrap();
    }
    for m in &msgs[half..] {
        host.bus().publish(m.clone()).await.unwrap();
    }
    assert!(
        host.wait_idle(Duration::from_secs(60)).await,
        "{behaviour}: host did not go idle"
    );
    let expected = reference::sma_signals(&msgs, 5, 20);
    assert_eq!(
        reference::published_signals(&signals.messages()),
        expected,
        "{behaviour}"
    );
    let stats = host.component_stats();
    let hostile = stats.iter().find(|(n, _)| n == "hostile").unwrap().1;
    assert_eq!(hostile.traps, 0, "{behaviour}: {hostile:?}");
    let want = if handled {
        (POKES as u64, 0)
    } else {
        (0, POKES as u64)
    };
    assert_eq!(
        (hostile.handled, hostile.dead_lettered),
        want,
        "{behaviour}: {hostile:?}"
    );
    host.shutdown(Duration::from_secs(5)).await;
    let letters = if handled {
        Vec::new()
    } else {
        dlq.wait_for(POKES, Duration::from_secs(5)).await
    };
    let letters = letters
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    (letters, hostile)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_files_no_sockets_no_environment() {
    let e = error_of(&contained("escape", "", false).await);
    assert!(!e.contains("LEAK"), "{e}");
    assert!(
        e.contains("reading /etc/passwd failed") && e.contains("opening a socket failed"),
        "{e}"
    );
    assert!(e.contains("; 0 env vars and args"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_floods_hit_the_per_event_call_quota_and_the_rate_limit() {
    // 10 000 publishes in one event: give it time, so only the quota stops it.
    let e = error_of(&contained("flood", "time_per_event_ms = 10000", false).await);
    assert!(
        e.contains("publish 10000 refused: Error::Limited(")
            && e.contains("10000 host calls allowed per event"),
        "{e}"
    );
    let e = error_of(
        &contained(
            "flood",
            "publish_per_sec = 50, time_per_event_ms = 10000",
            false,
        )
        .await,
    );
    assert!(e.contains("exceeded its publish rate of 50/s"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payloads_are_refused() {
    let e = error_of(&contained("huge-payload", "", false).await);
    assert!(
        e.contains("Invalid")
            && e.contains("payload of 2097152 bytes exceeds the limit of 1048576"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_floods_are_absorbed() {
    // 100 000 lines through WASI stdout, rate-limited into the log: a burst
    // of 400, then 200 a second.
    let start = std::time::Instant::now();
    let (_, s) = contained_with_stats("print-flood", "time_per_event_ms = 10000", true).await;
    let allowed = 400 + (start.elapsed().as_secs_f64() * 200.0).ceil() as u64;
    assert_eq!(s.log_lines + s.log_dropped, 3 * 100_000, "{s:?}");
    assert!(
        s.log_lines <= allowed,
        "{} lines let through, at most {allowed} allowed",
        s.log_lines
    );
}

/// The host's resident memory, from `/proc/self/status`.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_tiny_writes_to_stdout_and_stderr_leave_host_memory_bounded() {
    // Millions of empty and one-byte writes a second on both streams
    // (GHSA-5m8g-xhq4-4h93: a queued empty write was never taken off the
    // queue). Host memory is sampled all through the run.
    let base = rss_bytes();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_bytes());
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let text = r#"
[components.hostile]
wasm = "{hostile}"
subscribe = [{ subject = "poke.*" }]
grants = { subscribe = ["poke.*"] }
limits = { time_per_event_ms = 1000, max_deliver = 2, max_batch = 1, instances = 2 }
config = { behaviour = "empty-writes" }
"#;
    let host = Host::start(&manifest(text)).await.unwrap();
    let dlq = Collector::start(&*host.bus(), "dlq.>").await;
    // Both instances busy at once: no thread is left to drain a queue.
    let pokes = 8;
    for i in 0..pokes {
        host.bus()
            .publish(BusMessage::new(format!("poke.{i}"), "{}"))
            .await
            .unwrap();
    }
    let letters = dlq.wait_for(pokes, Duration::from_secs(60)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let grown = sampler.join().unwrap().saturating_sub(base);
    let letters: Vec<serde_json::Value> = letters
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    let e = error_of(&letters);
    assert!(
        e.contains("missed its deadline") && e.contains("1000 ms"),
        "{e}"
    );
    let s = host.component_stats()[0].1;
    assert_eq!(
        (s.deadline_hits, s.dead_lettered),
        (2 * pokes as u64, pokes as u64),
        "{s:?}"
    );
    assert!(
        s.log_lines + s.log_dropped > 0,
        "the writes reached the log: {s:?}"
    );
    println!("host RSS grew by {} KiB at most", grown / 1024);
    assert!(
        grown < 128 << 20,
        "host memory grew by {} MiB under empty writes",
        grown >> 20
    );
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_components_namespace_is_out_of_reach() {
    let letters = contained("cache-escape", "", false).await;
    for l in &letters {
        let e = l["error"].as_str().unwrap();
        assert!(
            e.contains("found 0 foreign values") && e.contains("and 0 other keys"),
            "{e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_digest_that_does_not_match_is_refused_before_compiling() {
    let good = weir::digest::sha256_hex(&std::fs::read(weir_tests::wasm("hostile")).unwrap());
    let text = |sha: &str| {
        format!(
            "[components.hostile]\nwasm = \"{{hostile}}\"\nsha256 = \"{sha}\"\nconfig = {{ behaviour = \"ok\" }}\n"
        )
    };
    let host = Host::start(&manifest(&text(&good))).await.unwrap();
    host.shutdown(Duration::from_secs(1)).await;
    let bad = "0".repeat(64);
    let e = Host::start(&manifest(&text(&bad)))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("component hostile") && e.contains("refusing to compile") && e.contains(&good),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_data_directory_is_read_only_and_nothing_else_is_visible() {
    let dir = weir_tests::tempdir("data");
    std::fs::write(dir.join("hello.txt"), "hi from the host\n").unwrap();
    let text = format!(
        "[components.hostile]\nwasm = \"{{hostile}}\"\nsubscribe = [{{ subject = \"poke.*\" }}]\ngrants = {{ subscribe = [\"poke.*\"], data_dir = \"{}\" }}\nlimits = {{ max_deliver = 1 }}\nconfig = {{ behaviour = \"read-data\" }}\n",
        dir.display()
    );
    let host = Host::start(&manifest(&text)).await.unwrap();
    let dlq = Collector::start(&*host.bus(), "dlq.>").await;
    host.bus()
        .publish(BusMessage::new("poke.1", "{}"))
        .await
        .unwrap();
    let letters = dlq.wait_for(1, Duration::from_secs(10)).await;
    let v: serde_json::Value = serde_json::from_slice(&letters[0].payload).unwrap();
    let e = v["error"].as_str().unwrap();
    assert!(!e.contains("LEAK"), "{e}");
    assert!(e.contains("read /data/hello.txt: hi from the host"), "{e}");
    assert!(
        e.contains("writing /data failed") && e.contains("reading /etc/passwd failed"),
        "{e}"
    );
    assert!(!dir.join("new.txt").exists());
    host.shutdown(Duration::from_secs(2)).await;
}

/// One hostile component alone; pokes it once with `payload`; returns its
/// dead letter and counters.
async fn poke_once(
    behaviour: &str,
    limits: &str,
    payload: Vec<u8>,
) -> (serde_json::Value, weir::stats::ComponentSnapshot) {
    let text = format!(
        "[components.hostile]\nwasm = \"{{hostile}}\"\nsubscribe = [{{ subject = \"poke.*\" }}]\ngrants = {{ subscribe = [\"poke.*\"], cache = \"hostile\" }}\nlimits = {{ {limits} }}\nconfig = {{ behaviour = \"{behaviour}\" }}\n"
    );
    let host = Host::start(&manifest(&text)).await.unwrap();
    let dlq = Collector::start(&*host.bus(), "dlq.>").await;
    host.bus()
        .publish(BusMessage::new("poke.1", payload))
        .await
        .unwrap();
    let letters = dlq.wait_for(1, Duration::from_secs(20)).await;
    let stats = host.component_stats()[0].1;
    host.shutdown(Duration::from_secs(2)).await;
    (serde_json::from_slice(&letters[0].payload).unwrap(), stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_incoming_message_is_refused_at_the_door() {
    let (letter, s) = poke_once("ok", "max_payload_bytes = 1000", vec![b'x'; 2000]).await;
    let e = letter["error"].as_str().unwrap();
    assert!(
        e.contains("payload of 2000 bytes exceeds the component's limit of 1000 bytes"),
        "{e}"
    );
    assert_eq!(
        (
            s.handled,
            s.traps,
            s.dead_lettered,
            letter["attempts"].as_u64().unwrap()
        ),
        (0, 0, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_reject_reason_is_cut() {
    let (letter, _) = poke_once("huge-reason", "", b"{}".to_vec()).await;
    let e = letter["error"].as_str().unwrap();
    assert!(
        e.len() < 5000 && e.ends_with("… (cut)"),
        "{} bytes",
        e.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_stops_a_loop_deterministically() {
    let (letter, s) = poke_once(
        "loop",
        "fuel_per_event = 5000000, time_per_event_ms = 20000, max_deliver = 2",
        b"{}".to_vec(),
    )
    .await;
    let e = letter["error"].as_str().unwrap();
    assert!(e.contains("ran out of fuel"), "{e}");
    assert_eq!((s.traps, s.deadline_hits), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_parked_in_a_slow_host_call_is_stopped_by_its_deadline() {
    // The epoch deadline stops guest code; a guest waiting in a host call
    // (a request nobody answers, with a 60 s timeout) is stopped by the
    // timer weir arms once the call parks.
    let text = r#"
[components.hostile]
wasm = "{hostile}"
subscribe = [{ subject = "poke.*" }]
grants = { subscribe = ["poke.*"], request = ["stall.*"] }
limits = { time_per_event_ms = 300, max_deliver = 2 }
config = { behaviour = "stall" }
"#;
    let host = Host::start(&manifest(text)).await.unwrap();
    // A responder that never answers, so the request waits.
    let _silent = host.bus().subscribe("stall.wait", None).await.unwrap();
    let dlq = Collector::start(&*host.bus(), "dlq.>").await;
    let start = std::time::Instant::now();
    host.bus()
        .publish(BusMessage::new("poke.0", "{}"))
        .await
        .unwrap();
    let letters = dlq.wait_for(1, Duration::from_secs(20)).await;
    let took = start.elapsed();
    assert_eq!(letters.len(), 1);
    let letter: serde_json::Value = serde_json::from_slice(&letters[0].payload).unwrap();
    let error = letter["error"].as_str().unwrap();
    assert!(
        error.contains("missed its deadline") && error.contains("waiting in a host call"),
        "{error}"
    );
    // Two attempts of 300 ms each (plus 50 ms grace and a backoff), not
    // the request's 60 s.
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(15),
        "{took:?}"
    );
    let stats = host.component_stats();
    let s = stats.iter().find(|(n, _)| n == "hostile").unwrap().1;
    assert_eq!((s.traps, s.deadline_hits, s.dead_lettered), (2, 2, 1));
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answered_with_nothing_is_delivered_one_by_one() {
    // A `handle-batch` that answers for no event breaks the contract; weir
    // must not offer the same batch forever.
    let (host, _server, js) = on_stored_pokes(
        "hostile",
        "{hostile}",
        r#", cache = "hostile""#,
        r#"config = { behaviour = "batch-empty" }"#,
    )
    .await;
    let s = host.component_stats()[0].1;
    assert!(s.batches >= 1, "{s:?}");
    assert_eq!((s.handled, s.dead_lettered, s.traps), (40, 0, 0), "{s:?}");
    // Each handled once, by `handle`, after every batch came back empty.
    let cache = host.cache().unwrap();
    let seen = cache.get("hostile:seen").await.unwrap();
    assert_eq!(seen.as_deref(), Some(&b"40"[..]));
    let empty = cache.get("hostile:empty-answers").await.unwrap();
    assert_eq!(
        empty,
        Some(s.batches.to_string().into_bytes().into()),
        "{s:?}"
    );
    host.shutdown(Duration::from_secs(5)).await;
    // Each acknowledged once handled: nothing left for redelivery.
    assert_eq!(
        weir_tests::consumer_backlog(&js, "POKE", "hostile").await,
        (0, 0)
    );
}

/// A component built against the earlier `batch-handler` shape (a list of
/// messages) still runs: weir sees that the shape is not its own and sends
/// each message to `handle` alone. Its `handle-batch` traps, so a batch
/// that reached it would show (stored messages would otherwise make them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_with_the_earlier_batch_shape_runs_one_message_per_call() {
    let wasm = weir_tests::wasm("legacy_batch").display().to_string();
    let (host, _server, js) = on_stored_pokes("legacy", &wasm, "", "").await;
    let s = host.component_stats()[0].1;
    assert_eq!(
        (s.handled, s.batches, s.traps, s.dead_lettered, s.retried),
        (40, 0, 0, 0, 0),
        "{s:?}"
    );
    host.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        weir_tests::consumer_backlog(&js, "POKE", "legacy").await,
        (0, 0)
    );
}

/// Messages [`on_stored_pokes`] stores.
const STORED_POKES: u64 = 40;

/// A host running component `name` (`wasm`) on a durable consumer of the
/// stream POKE, whose [`STORED_POKES`] messages (`poke.0` … `poke.3`) were stored
/// before weir started: its first pull holds many, so batches form
/// whatever the machine's load (on a live subject they form only when the
/// publisher outruns the handler). `more_grants` goes inside its grants
/// table, `more` after it. Returns once all are handled and the host is
/// idle.
async fn on_stored_pokes(
    name: &str,
    wasm: &str,
    more_grants: &str,
    more: &str,
) -> (
    Host,
    weir_tests::servers::NatsServer,
    async_nats::jetstream::Context,
) {
    let server = weir_tests::servers::NatsServer::start();
    let js = async_nats::jetstream::new(server.client().await);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "POKE".into(),
        subjects: vec!["poke.*".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    weir_tests::publish_acked(
        &js,
        (0..STORED_POKES).map(|i| (format!("poke.{}", i % 4), bytes::Bytes::from("{}"))),
    )
    .await;
    let m = manifest(&format!(
        r#"
[nats]
url = "{}"

[components.{name}]
wasm = "{wasm}"
subscribe = [{{ subject = "poke.*", stream = "POKE", consumer = "{name}" }}]
grants = {{ subscribe = ["poke.*"], streams = ["POKE"]{more_grants} }}
{more}
"#,
        server.url()
    ));
    let host = Host::start(&m).await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while host.component_stats()[0].1.handled < STORED_POKES {
        assert!(
            tokio::time::Instant::now() < until,
            "{:?}",
            host.component_stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(host.wait_idle(Duration::from_secs(20)).await);
    (host, server, js)
}
