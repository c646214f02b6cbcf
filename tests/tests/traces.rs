//! Traces as an operator's collector sees them: spans exported over
//! OTLP/HTTP to a receiver that decodes them with the OpenTelemetry
//! project's own protobufs (`tests/tools/otlp_receiver.py`), W3C
//! `traceparent` headers as an outside NATS client writes and reads them,
//! exemplars read by the Prometheus parser, log lines as a shipper reads
//! them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::Value;
use weir::Host;
use weir::observe::http_get;
use weir::replay::{Input, Replay, ReplayOptions};
use weir_tests::process::WeirProcess;
use weir_tests::servers::{NatsServer, OtlpReceiver, free_port};
use weir_tests::{
    Buffer, DEMO, feed, manifest, openmetrics_check, sample_trade_messages, sample_trades, tempdir,
    wasm,
};

/// The trace id and parent span id the outside client gives trade `i`.
fn client_ids(i: usize) -> (String, String) {
    (
        format!("{:032x}", 0x7ade_0000_u64 + i as u64),
        format!("{:016x}", 0x51de_0000_u64 + i as u64),
    )
}

/// The `traceparent` of a message the outside client received.
fn traceparent(m: &async_nats::Message) -> Option<(String, String)> {
    let v = m.headers.as_ref()?.get("traceparent")?.as_str().to_owned();
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    Some((parts[1].to_owned(), parts[2].to_owned()))
}

/// Spans by span id.
fn by_id(spans: &[Value]) -> BTreeMap<String, Value> {
    spans
        .iter()
        .map(|s| (s["span_id"].as_str().unwrap().to_owned(), s.clone()))
        .collect()
}

/// The chain of spans from `span_id` up to the first one whose parent is
/// not among them: `(service, kind, name)` each, and that last parent.
fn chain(
    spans: &BTreeMap<String, Value>,
    span_id: &str,
) -> (Vec<(String, String, String)>, String) {
    let mut out = Vec::new();
    let mut at = span_id.to_owned();
    while let Some(s) = spans.get(&at) {
        let text = |k: &str| {
            s[k].as_str()
                .unwrap_or_else(|| panic!("{k} in {s}"))
                .to_owned()
        };
        out.push((text("service"), text("kind"), text("name")));
        at = s["parent_span_id"].as_str().unwrap().to_owned();
    }
    (out, at)
}

/// The histograms of a scrape, as the Prometheus project's parser reads them.
fn openmetrics(scrape: &str) -> Vec<Value> {
    openmetrics_check(scrape).unwrap_or_else(|e| panic!("{e}\n{scrape}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_trade_through_two_hosts_to_the_alert() {
    let nats = NatsServer::start();
    let receiver = OtlpReceiver::start();
    let common = format!(
        "[nats]\nurl = \"{}\"\n[telemetry]\nendpoint = \"{}\"\n",
        nats.url(),
        receiver.endpoint()
    );
    // Host A: the strategy, trades in, signals out.
    let a = Host::start(&manifest(&format!(
        r#"[host]
id = "host-a"
http = "127.0.0.1:0"
{common}
[components.sma-crossover]
wasm = "{{sma}}"
subscribe = [{{ subject = "TRADE.trade.*" }}]
grants = {{ subscribe = ["TRADE.trade.*"], publish = ["signals.*"], cache = "sma" }}
config = {{ fast_window = 5, slow_window = 20 }}
"#
    )))
    .await
    .unwrap();
    // Host B: signals in, an alert out for each.
    let b = Host::start(&manifest(&format!(
        r#"[host]
id = "host-b"
{common}
[components.alerter]
wasm = "{{hostile}}"
subscribe = [{{ subject = "signals.*" }}]
grants = {{ subscribe = ["signals.*"], publish = ["tag.out"] }}
config = {{ behaviour = "tag", version = "alert" }}
"#
    )))
    .await
    .unwrap();

    let client = nats.client().await;
    let mut alerts = client.subscribe("tag.out").await.unwrap();
    client.flush().await.unwrap();
    let trades = sample_trade_messages(600);
    let mut parents = BTreeMap::new();
    for (i, t) in trades.iter().enumerate() {
        let (trace, span) = client_ids(i);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("traceparent", format!("00-{trace}-{span}-01").as_str());
        client
            .publish_with_headers(t.subject.clone(), headers, t.payload.clone())
            .await
            .unwrap();
        parents.insert(trace, span);
    }
    client.flush().await.unwrap();
    assert!(a.wait_idle(Duration::from_secs(60)).await);
    assert!(b.wait_idle(Duration::from_secs(60)).await);
    let mut received = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), alerts.next()).await {
        received.push(m);
    }
    assert!(!received.is_empty(), "no alert came out of host B");

    // The processing-time histogram points at traces: exemplars the
    // Prometheus parser reads.
    let addr = a.http_addr().unwrap().to_string();
    let (_, scrape) = http_get(&addr, "/metrics").await.unwrap();
    let exemplar_traces: BTreeSet<String> = openmetrics(&scrape)
        .iter()
        .filter(|h| h["family"] == "nats_message_processing_seconds")
        .flat_map(|h| h["exemplars"].as_array().cloned().unwrap_or_default())
        .map(|e| e["labels"]["trace_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!exemplar_traces.is_empty(), "no exemplar in\n{scrape}");

    // Stopping sends what is queued.
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
    let wanted: Vec<(String, String)> = received
        .iter()
        .map(|m| traceparent(m).expect("an alert without traceparent"))
        .collect();
    let spans = receiver.wait_until(Duration::from_secs(20), |s| {
        let ids = by_id(s);
        wanted.iter().all(|(_, span)| {
            let (links, top) = chain(&ids, span);
            links.len() >= 6 && !ids.contains_key(&top)
        })
    });
    let ids = by_id(&spans);
    let expected = [
        ("host-b", "producer", "publish tag.out"),
        ("host-b", "internal", "handle alerter"),
        ("host-b", "consumer", "process signals."),
        ("host-a", "producer", "publish signals."),
        ("host-a", "internal", "handle sma-crossover"),
        ("host-a", "consumer", "process TRADE.trade."),
    ];
    for (trace, span) in &wanted {
        let (links, top) = chain(&ids, span);
        assert_eq!(links.len(), expected.len(), "trace {trace}: {links:?}");
        for (got, want) in links.iter().zip(expected) {
            assert_eq!(
                (got.0.as_str(), got.1.as_str()),
                (want.0, want.1),
                "trace {trace}: {links:?}"
            );
            assert!(got.2.starts_with(want.2), "trace {trace}: {links:?}");
        }
        // The trade's delivery continues the outside client's context.
        assert_eq!(
            parents.get(trace),
            Some(&top),
            "trace {trace} does not start at the client's span"
        );
        for s in spans.iter().filter(|s| s["trace_id"] == trace.as_str()) {
            assert!(
                ids.contains_key(s["parent_span_id"].as_str().unwrap())
                    || s["parent_span_id"] == top.as_str()
            );
        }
    }
    // The delivery spans carry the messaging conventions' attributes.
    let delivery = spans
        .iter()
        .find(|s| s["service"] == "host-a" && s["kind"] == "consumer")
        .unwrap();
    let attrs = &delivery["attributes"];
    assert_eq!(attrs["messaging.system"], "nats", "{delivery}");
    assert_eq!(attrs["messaging.operation.type"], "process", "{delivery}");
    assert!(
        attrs["messaging.destination.name"]
            .as_str()
            .unwrap()
            .starts_with("TRADE.trade.")
    );
    assert_eq!(attrs["weir.component"], "sma-crossover");
    assert_eq!(attrs["weir.outcome"], "handled");
    assert!(attrs["weir.queue.wait_ms"].as_f64().unwrap() >= 0.0);
    // Every exemplar points at a trace the collector holds.
    let traces: BTreeSet<&str> = spans
        .iter()
        .map(|s| s["trace_id"].as_str().unwrap())
        .collect();
    for t in &exemplar_traces {
        assert!(
            traces.contains(t.as_str()),
            "exemplar trace {t} was never exported"
        );
    }
}

/// Every message of the first `fed` sample lines was handled: the trades
/// by both demo components, the alert definitions by price-alert.
fn all_handled(host: &Host, fed: usize) {
    let trades = sample_trade_messages(fed).len() as u64;
    for (name, s) in host.component_stats() {
        let expected = if name == "price-alert" {
            fed as u64
        } else {
            trades
        };
        assert_eq!(s.handled, expected, "{name}: {s:?}");
        assert_eq!(s.received, expected, "{name}: {s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_collector_neither_holds_up_handling_nor_loses_a_message() {
    let stalled = OtlpReceiver::stalled();
    let text = format!(
        "[host]\nhttp = \"127.0.0.1:0\"\n[telemetry]\nendpoint = \"{}\"\n{DEMO}",
        stalled.endpoint()
    );
    let host = Host::start(&manifest(&text)).await.unwrap();
    let fed = feed(&host, &sample_trades(), 3000).await;
    assert!(host.wait_idle(Duration::from_secs(60)).await);
    all_handled(&host, fed);
    let addr = host.http_addr().unwrap().to_string();
    let (_, scrape) = http_get(&addr, "/metrics").await.unwrap();
    let value = |line_start: &str| -> u64 {
        scrape
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{scrape}"))
    };
    // Everything was handled while the collector had answered nothing;
    // what did not fit in the queue was dropped and counted.
    assert_eq!(value("weir_trace_spans_exported_total "), 0);
    assert!(
        value("weir_trace_spans_dropped_total{reason=\"queue_full\"}") > 0,
        "{scrape}"
    );
    openmetrics(&scrape);
    host.shutdown(Duration::from_secs(1)).await;

    // A collector that is down: the exports fail, counted; nothing else.
    let down = format!("http://127.0.0.1:{}", free_port());
    let text = format!("[telemetry]\nendpoint = \"{down}\"\n{DEMO}");
    let host = Host::start(&manifest(&text)).await.unwrap();
    let telemetry = host.observed().telemetry.clone();
    let fed = feed(&host, &sample_trades(), 300).await;
    assert!(host.wait_idle(Duration::from_secs(60)).await);
    all_handled(&host, fed);
    host.shutdown(Duration::from_secs(5)).await;
    let counts = telemetry.counts().unwrap();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(counts.exported.load(Relaxed), 0);
    assert!(counts.dropped_export_failed.load(Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_exports_nothing_and_stays_byte_identical() {
    let receiver = OtlpReceiver::start();
    let traced = manifest(&format!(
        "[telemetry]\nendpoint = \"{}\"\n{DEMO}",
        receiver.endpoint()
    ));
    let plain = manifest(DEMO);
    let mut outputs = Vec::new();
    for m in [&plain, &traced, &traced] {
        let out = Buffer::default();
        Replay::new(m, Box::new(out.clone()), ReplayOptions::default())
            .unwrap()
            .run(Input::file(&sample_trades()).await.unwrap())
            .await
            .unwrap();
        outputs.push(out.bytes());
    }
    assert!(!outputs[0].is_empty());
    assert!(outputs.iter().all(|o| *o == outputs[0]), "replays differ");
    // Longer than the exporter's batch delay.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(receiver.spans().is_empty(), "{:?}", receiver.spans());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_the_trace_and_the_correlation_id() {
    let nats = NatsServer::start();
    let receiver = OtlpReceiver::start();
    let dir = tempdir("trace-logs");
    let path = dir.join("weir.toml");
    std::fs::write(
        &path,
        format!(
            r#"[host]
id = "logger"
log_format = "json"
[nats]
url = "{}"
[telemetry]
endpoint = "{}"
[components.echo]
wasm = "{}"
subscribe = [{{ subject = "echo.in" }}]
grants = {{ subscribe = ["echo.in"] }}
"#,
            nats.url(),
            receiver.endpoint(),
            wasm("wasmcloud_echo").display()
        ),
    )
    .unwrap();
    let mut weir = WeirProcess::start(&path);
    let client = nats.client().await;
    let (trace, parent) = client_ids(1);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", format!("00-{trace}-{parent}-01").as_str());
    headers.insert("correlation-id", "req-12345");
    // No reply-to: the echo component logs a warning while handling it.
    client
        .publish_with_headers("echo.in", headers, "hello".into())
        .await
        .unwrap();
    // A request answered by the component: the reply continues the trace
    // (wasmCloud's messaging has no headers; the host adds them).
    let mut headers = async_nats::HeaderMap::new();
    let (trace2, parent2) = client_ids(2);
    headers.insert("traceparent", format!("00-{trace2}-{parent2}-01").as_str());
    let reply = client
        .request_with_headers("echo.in", headers, "ping".into())
        .await
        .unwrap();
    let (reply_trace, _) = traceparent(&reply).expect("a reply without traceparent");
    assert_eq!(reply_trace, trace2);
    weir.wait_for_log("nothing to answer", Duration::from_secs(20));
    assert!(weir.stop());

    let line: Value = weir
        .output()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("nothing to answer"))
        })
        .unwrap_or_else(|| panic!("no JSON line for the warning in\n{}", weir.output()));
    assert_eq!(line["trace_id"], trace.as_str(), "{line}");
    assert_eq!(line["correlation_id"], "req-12345", "{line}");
    // The span id is the delivery's span, which the collector holds.
    let span_id = line["span_id"].as_str().unwrap().to_owned();
    let spans = receiver.wait_until(Duration::from_secs(10), |s| {
        s.iter().any(|s| s["span_id"] == span_id.as_str())
    });
    let delivery = spans
        .iter()
        .find(|s| s["span_id"] == span_id.as_str())
        .expect("the log's span was not exported");
    assert_eq!(delivery["kind"], "consumer");
    assert_eq!(delivery["parent_span_id"], parent.as_str());
    assert_eq!(
        delivery["attributes"]["messaging.message.conversation_id"],
        "req-12345"
    );
}

/// The full `traceparent` of a message the outside client received.
fn traceparent_header(m: &async_nats::Message) -> String {
    m.headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_else(|| panic!("no traceparent on {m:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_deliveries_keep_their_trace_through_retries_dead_letters_and_sampling() {
    let nats = NatsServer::start();
    let receiver = OtlpReceiver::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    for (name, subject) in [("JOBS", "jobs.*"), ("DLQ", "dlq.>")] {
        weir_tests::create_stream(&js, name, subject).await;
    }
    let host = Host::start(&manifest(&format!(
        r#"[host]
id = "jobs-host"
[nats]
url = "{}"
[telemetry]
endpoint = "{}"
[components.tagger]
wasm = "{{hostile}}"
subscribe = [{{ subject = "jobs.ok", stream = "JOBS", consumer = "tagger" }}]
grants = {{ subscribe = ["jobs.ok"], publish = ["tag.out"], streams = ["JOBS"] }}
config = {{ behaviour = "tag", version = "v1" }}
[components.trapper]
wasm = "{{hostile}}"
subscribe = [{{ subject = "jobs.bad", stream = "JOBS", consumer = "trapper" }}]
grants = {{ subscribe = ["jobs.bad"], streams = ["JOBS"] }}
limits = {{ max_deliver = 2 }}
config = {{ behaviour = "trap" }}
"#,
        nats.url(),
        receiver.endpoint()
    )))
    .await
    .unwrap();
    let mut tags = client.subscribe("tag.out").await.unwrap();
    client.flush().await.unwrap();

    // A sampled job, one whose sender did not sample it, and a sampled job
    // that traps every time. One at a time: jobs waiting together are one
    // batch call, whose publishes continue the first sampled job's trace.
    let (ok, ok_parent) = client_ids(100);
    let (unsampled, unsampled_parent) = client_ids(101);
    let (bad, bad_parent) = client_ids(102);
    let mut out = BTreeMap::new();
    for (subject, trace, parent, flags) in [
        ("jobs.ok", &ok, &ok_parent, "01"),
        ("jobs.ok", &unsampled, &unsampled_parent, "00"),
        ("jobs.bad", &bad, &bad_parent, "01"),
    ] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "traceparent",
            format!("00-{trace}-{parent}-{flags}").as_str(),
        );
        js.publish_with_headers(subject, headers, "job".into())
            .await
            .unwrap()
            .await
            .unwrap();
        if subject == "jobs.ok" {
            let m = tokio::time::timeout(Duration::from_secs(20), tags.next())
                .await
                .expect("the tagger published nothing")
                .unwrap();
            out.insert(trace.clone(), traceparent_header(&m));
        }
    }
    // The dead letter is stored before the job is given up on.
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while weir_tests::stream_messages(&js, "DLQ").await < 1 {
        assert!(std::time::Instant::now() < until, "no dead letter stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(host.wait_idle(Duration::from_secs(20)).await);
    host.shutdown(Duration::from_secs(5)).await;
    let spans = receiver.wait_until(Duration::from_secs(10), |s| {
        s.iter()
            .any(|s| s["trace_id"] == bad.as_str() && s["kind"] == "consumer")
            && s.iter().any(|s| s["name"] == "publish tag.out")
    });
    let ids = by_id(&spans);

    // The sampled job: its publish carries the publish span's context,
    // and the chain leads back to the sender's span through the
    // JetStream delivery.
    let header = &out[&ok];
    assert!(header.starts_with(&format!("00-{ok}-")), "{header}");
    assert!(header.ends_with("-01"), "{header}");
    let publish_id = header.split('-').nth(2).unwrap();
    let (chain, top) = chain(&ids, publish_id);
    let names: Vec<&str> = chain.iter().map(|(_, _, n)| n.as_str()).collect();
    assert_eq!(
        names,
        ["publish tag.out", "handle tagger", "process jobs.ok"]
    );
    assert_eq!(top, ok_parent);
    let process = spans
        .iter()
        .find(|s| s["trace_id"] == ok.as_str() && s["kind"] == "consumer")
        .unwrap();
    let attrs = &process["attributes"];
    assert_eq!(attrs["weir.jetstream.stream"], "JOBS", "{process}");
    assert_eq!(attrs["weir.jetstream.sequence"], 1, "{process}");
    assert_eq!(attrs["weir.outcome"], "handled", "{process}");
    assert_eq!(attrs["messaging.destination.name"], "jobs.ok", "{process}");

    // The unsampled job: its context goes on, still not sampled, and
    // nothing of its trace is recorded.
    let header = &out[&unsampled];
    assert!(header.starts_with(&format!("00-{unsampled}-")), "{header}");
    assert!(header.ends_with("-00"), "{header}");
    assert_ne!(header.split('-').nth(2).unwrap(), unsampled_parent);
    assert!(
        !spans.iter().any(|s| s["trace_id"] == unsampled.as_str()),
        "an unsampled trace was recorded"
    );

    // The trapping job: one delivery span with the retry and the dead
    // letter, an error status; each attempt's call span has the trap.
    let bad_spans: Vec<&Value> = spans
        .iter()
        .filter(|s| s["trace_id"] == bad.as_str())
        .collect();
    let process = bad_spans.iter().find(|s| s["kind"] == "consumer").unwrap();
    let events: Vec<&str> = process["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["retry", "dead-lettered"], "{process}");
    assert_eq!(process["attributes"]["weir.outcome"], "dead-lettered");
    assert_eq!(process["status"]["code"], 2, "{process}"); // STATUS_CODE_ERROR
    assert_eq!(process["parent_span_id"], bad_parent.as_str());
    let calls: Vec<&&Value> = bad_spans
        .iter()
        .filter(|s| s["name"] == "handle trapper")
        .collect();
    assert_eq!(calls.len(), 2, "{bad_spans:?}");
    for call in calls {
        assert_eq!(call["parent_span_id"], process["span_id"]);
        assert_eq!(call["events"][0]["name"], "exception", "{call}");
        assert_eq!(call["status"]["code"], 2, "{call}");
    }
}
