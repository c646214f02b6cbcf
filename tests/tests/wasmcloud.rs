//! Components written for wasmCloud, built against wasmCloud's own WIT
//! (`components/wasmcloud-echo`, `components/wasmcloud-kv`), run unchanged:
//! on the embedded bus, on real NATS/JetStream, and with their key-value
//! bucket in weir's cache on a real Redis shared by two hosts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use weir::Host;
use weir::bus::{Bus, BusMessage};
use weir::runtime::World;
use weir_tests::servers::{NatsServer, RedisServer};
use weir_tests::{Collector, manifest, tempdir, wasm};

fn echo_wasm() -> String {
    wasm("wasmcloud_echo").display().to_string()
}

fn kv_wasm() -> String {
    wasm("wasmcloud_kv").display().to_string()
}

/// The tally component on `subject`, its bucket in namespace `ns`.
fn kv_component(name: &str, subject: &str, ns: &str) -> String {
    format!(
        r#"
[components.{name}]
wasm = "{}"
subscribe = [{{ subject = "{subject}" }}, {{ subject = "TRADE.trade.*" }}]
grants = {{ subscribe = ["{subject}", "TRADE.trade.*"], cache = "{ns}" }}
limits = {{ instances = 2 }}
config = {{ bucket = "tally", region = "eu" }}
"#,
        kv_wasm()
    )
}

/// Sends a command to the tally and returns its answer.
async fn ask(bus: &dyn Bus, subject: &str, command: &str) -> String {
    let reply = bus
        .request(
            BusMessage::new(subject, command.to_owned()),
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|e| panic!("{command}: {e}"));
    String::from_utf8(reply.payload.to_vec()).unwrap()
}

fn stats(host: &Host, name: &str) -> weir::stats::ComponentSnapshot {
    host.component_stats()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_component_answers_and_its_errors_are_retried_then_dead_lettered() {
    let m = manifest(&format!(
        r#"
[components.echo]
wasm = "{}"
subscribe = [{{ subject = "svc.echo" }}]
grants = {{ subscribe = ["svc.echo"] }}
limits = {{ max_deliver = 3 }}
"#,
        echo_wasm()
    ));
    let host = Host::start(&m).await.unwrap();
    assert_eq!(host.worlds(), [("echo".to_owned(), World::WasmCloud)]);
    let bus = host.bus();
    let dlq = Collector::start(&*bus, "dlq.>").await;

    assert_eq!(ask(&*bus, "svc.echo", "hello, weir").await, "hello, weir");

    // Err(string) from handle-message: retried, then dead-lettered with
    // the component's words, like a weir handler's retry.
    bus.publish(BusMessage::new("svc.echo", "fail"))
        .await
        .unwrap();
    let letters = dlq.wait_for(1, Duration::from_secs(10)).await;
    let letter: serde_json::Value = serde_json::from_slice(&letters[0].payload).unwrap();
    assert_eq!(letters[0].subject, "dlq.svc.echo");
    assert_eq!(letter["component"], "echo");
    assert_eq!(letter["attempts"], 3);
    assert!(
        letter["error"]
            .as_str()
            .unwrap()
            .contains("asked to fail on svc.echo"),
        "{letter}"
    );
    assert!(host.wait_idle(Duration::from_secs(5)).await);
    let s = stats(&host, "echo");
    assert_eq!((s.handled, s.retried, s.dead_lettered), (1, 2, 1));
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tally_uses_store_atomics_batch_config_and_logging_in_its_cache_namespace() {
    let m = manifest(&kv_component("tally", "kv.cmd", "wc"));
    let host = Host::start(&m).await.unwrap();
    let bus = host.bus();
    let q = |c: &'static str| {
        let bus = bus.clone();
        async move { ask(&*bus, "kv.cmd", c).await }
    };

    assert_eq!(q("get missing").await, "none");
    assert_eq!(q("exists missing").await, "false");
    assert_eq!(q("set greeting hello world").await, "ok");
    assert_eq!(q("get greeting").await, "hello world");
    assert_eq!(q("exists greeting").await, "true");
    assert_eq!(q("incr hits 5").await, "5");
    assert_eq!(q("incr hits 2").await, "7");
    assert_eq!(q("get hits").await, "7");
    // A value that is not a counter is not incremented.
    assert!(q("incr greeting 1").await.contains("not a decimal counter"));
    assert_eq!(q("setmany a=1 b=2 c=3").await, "ok");
    assert_eq!(
        q("getmany a b nope c").await,
        r#"[["a","1"],["b","2"],null,["c","3"]]"#
    );
    assert_eq!(q("delmany a c").await, "ok");
    assert_eq!(q("del greeting").await, "ok");
    assert_eq!(q("exists greeting").await, "false");
    let list: serde_json::Value = serde_json::from_str(&q("list").await).unwrap();
    assert_eq!(list["keys"], serde_json::json!(["b", "hits"]));
    // Both config interfaces read the manifest's table.
    assert_eq!(q("config").await, r#"{"bucket":"tally","region":"eu"}"#);

    // The bucket is `tally` inside the granted namespace `wc`: weir's
    // cache holds it where a weir component granted `wc` reads `tally:b`.
    let cache = host.cache().unwrap();
    assert_eq!(&cache.get("wc:tally:b").await.unwrap().unwrap()[..], b"2");
    assert_eq!(
        &cache.get("wc:tally:hits").await.unwrap().unwrap()[..],
        b"7"
    );

    // Trades count per symbol.
    let trades = weir_tests::sample_trade_messages(300);
    for t in &trades {
        bus.publish(t.clone()).await.unwrap();
    }
    assert!(host.wait_idle(Duration::from_secs(20)).await);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for t in &trades {
        *expected
            .entry(t.subject.trim_start_matches("TRADE.trade.").to_owned())
            .or_default() += 1;
    }
    for (symbol, n) in &expected {
        let key = format!("wc:tally:trades:{symbol}");
        let v = cache.get(&key).await.unwrap().unwrap();
        assert_eq!(std::str::from_utf8(&v).unwrap(), n.to_string(), "{symbol}");
    }
    let s = stats(&host, "tally");
    assert!(s.log_lines > 0, "wasi:logging lines reach the host's log");
    assert_eq!(s.dead_lettered, 0);
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_without_a_cache_grant_is_access_denied_and_counted() {
    let m = manifest(&format!(
        r#"
[components.nogrant]
wasm = "{}"
subscribe = [{{ subject = "kv.cmd" }}]
grants = {{ subscribe = ["kv.cmd"] }}
"#,
        kv_wasm()
    ));
    let host = Host::start(&m).await.unwrap();
    let bus = host.bus();
    let dlq = Collector::start(&*bus, "dlq.>").await;
    // `open` itself is refused: the handler returns the error, so it is
    // retried and dead-lettered like any failure.
    bus.publish(BusMessage::new("kv.cmd", "get x"))
        .await
        .unwrap();
    let letters = dlq.wait_for(1, Duration::from_secs(10)).await;
    let letter: serde_json::Value = serde_json::from_slice(&letters[0].payload).unwrap();
    assert!(
        letter["error"].as_str().unwrap().contains("access denied"),
        "{letter}"
    );
    assert!(stats(&host, "nogrant").denied >= 1);
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_reply_tos_of_wasmcloud_components_are_checked_like_weir_ones() {
    let m = manifest(&format!(
        r#"
[components.echo]
wasm = "{}"
subscribe = [{{ subject = "svc.echo" }}]
grants = {{ subscribe = ["svc.echo"], publish = ["out.>"] }}
limits = {{ max_deliver = 1 }}
{}"#,
        echo_wasm(),
        kv_component("tally", "kv.cmd", "wc").replace(
            r#"grants = { subscribe = ["kv.cmd","#,
            r#"grants = { publish = ["notes.>"], subscribe = ["answers.>", "kv.cmd","#
        )
    ));
    let host = Host::start(&m).await.unwrap();
    let bus = host.bus();
    let out = Collector::start(&*bus, "out.>").await;
    let notes = Collector::start(&*bus, "notes.>").await;
    let dlq = Collector::start(&*bus, "dlq.>").await;

    // The echo answers a reply-to it may publish on, and not one chosen
    // to make it write where it may not.
    for reply_to in ["out.answers", "$KV.secrets.pwned"] {
        let mut m = BusMessage::new("svc.echo", reply_to);
        m.reply_to = Some(reply_to.into());
        bus.publish(m).await.unwrap();
    }
    let got = out.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(&got[0].payload[..], b"out.answers");
    let letters = dlq.wait_for(1, Duration::from_secs(5)).await;
    let letter: serde_json::Value = serde_json::from_slice(&letters[0].payload).unwrap();
    assert!(
        letter["error"].as_str().unwrap().contains("may not reply"),
        "{letter}"
    );

    // A reply-to the tally sets on what it publishes must be one it listens on.
    assert_eq!(
        ask(&*bus, "kv.cmd", "notify notes.a answers.tally hi").await,
        "ok"
    );
    let sent = notes.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(sent[0].reply_to.as_deref(), Some("answers.tally"));
    let refused = ask(&*bus, "kv.cmd", "notify notes.b orders.cancel hi").await;
    assert!(
        refused.contains("denied") && refused.contains("may not ask for replies on orders.cancel"),
        "{refused}"
    );
    assert!(host.wait_idle(Duration::from_secs(5)).await);
    assert_eq!(notes.messages().len(), 1);
    assert_eq!(
        stats(&host, "echo").denied + stats(&host, "tally").denied,
        2
    );
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_importing_what_weir_lacks_or_exporting_no_handler_are_refused_by_name() {
    let dir = tempdir("wc-refused");
    let write = |name: &str, wat_text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, wat::parse_str(wat_text).unwrap()).unwrap();
        path.display().to_string()
    };
    let blob = write(
        "blob.wasm",
        r#"(component
            (import "wasi:blobstore/blobstore@0.2.0-draft" (instance
                (export "container-exists" (func (param "name" string) (result bool)))))
        )"#,
    );
    let none = write("none.wasm", "(component)");
    let start = |wasm: &str| {
        let m = manifest(&format!(
            r#"
[components.odd]
wasm = "{wasm}"
subscribe = [{{ subject = "x" }}]
grants = {{ subscribe = ["x"] }}
"#
        ));
        async move { format!("{:#}", Host::start(&m).await.err().unwrap()) }
    };
    let e = start(&blob).await;
    assert!(
        e.contains("imports wasi:blobstore/blobstore@0.2.0-draft, which weir does not provide"),
        "{e}"
    );
    for provided in [
        "wasi:keyvalue/store@0.2.0-draft",
        "wasmcloud:messaging/consumer@0.2.0",
        "weir:host/cache@0.1.0",
        "WASI 0.2",
    ] {
        assert!(e.contains(provided), "{e} lacks {provided}");
    }
    let e = start(&none).await;
    assert!(
        e.contains("exports neither weir:host/handler@0.1.0")
            && e.contains("nor wasmcloud:messaging/handler@0.2.0")
            && e.contains("its exports: none"),
        "{e}"
    );
}

/// A JetStream stream on a fresh server.
async fn stream(server: &NatsServer, name: &str, subject: &str) -> jetstream::Context {
    let js = jetstream::new(server.client().await);
    weir_tests::create_stream(&js, name, subject).await;
    js
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_real_nats_the_echo_answers_requests_and_jetstream_failures_are_dead_lettered() {
    let server = NatsServer::start();
    let js = stream(&server, "JOBS", "jobs.>").await;
    let m = manifest(&format!(
        r#"
[nats]
url = "{}"

[components.echo]
wasm = "{}"
subscribe = [{{ subject = "svc.echo" }}, {{ subject = "jobs.>", stream = "JOBS", consumer = "echo" }}]
grants = {{ subscribe = ["svc.echo", "jobs.>"], streams = ["JOBS"] }}
limits = {{ max_deliver = 3 }}
"#,
        server.url(),
        echo_wasm()
    ));
    let host = Host::start(&m).await.unwrap();
    let client = server.client().await;
    let mut dlq = client.subscribe("dlq.>").await.unwrap();
    client.flush().await.unwrap();

    let reply = client
        .request("svc.echo", "from a plain NATS client".into())
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], b"from a plain NATS client");

    // Stored jobs: the good one is acked, the failing one is delivered
    // max_deliver times, then dead-lettered and terminated.
    js.publish("jobs.ok", "fine".into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish("jobs.bad", "fail".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let letter = tokio::time::timeout(Duration::from_secs(20), dlq.next())
        .await
        .expect("a dead letter")
        .unwrap();
    assert_eq!(letter.subject.as_str(), "dlq.jobs.bad");
    let v: serde_json::Value = serde_json::from_slice(&letter.payload).unwrap();
    assert_eq!(
        (v["attempts"].as_u64(), v["stream"].as_str()),
        (Some(3), Some("JOBS"))
    );
    assert_eq!(v["sequence"], 2);
    assert!(host.wait_idle(Duration::from_secs(10)).await);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while weir_tests::consumer_backlog(&js, "JOBS", "echo").await != (0, 0) {
        assert!(
            tokio::time::Instant::now() < until,
            "stored jobs left unsettled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = stats(&host, "echo");
    assert_eq!((s.handled, s.dead_lettered), (2, 1));
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_are_atomic_across_two_hosts_sharing_redis() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let host = |id: &str, subject: &str| {
        manifest(&format!(
            "[host]\nid = \"{id}\"\n\n[nats]\nurl = \"{}\"\n\n[redis]\nurl = \"{}\"\n{}",
            nats.url(),
            redis.url(),
            kv_component("tally", subject, "shared")
        ))
    };
    let a = Host::start(&host("host-a", "kv.a")).await.unwrap();
    let b = Host::start(&host("host-b", "kv.b")).await.unwrap();
    let client = nats.client().await;

    // 2 hosts × 2 instances × 150 increments, all at once.
    let per_host = 150;
    let mut calls = Vec::new();
    for subject in ["kv.a", "kv.b"] {
        for _ in 0..per_host {
            let client = client.clone();
            calls.push(tokio::spawn(async move {
                let r = client.request(subject, "incr hits 1".into()).await.unwrap();
                String::from_utf8(r.payload.to_vec()).unwrap()
            }));
        }
    }
    let mut seen: Vec<u64> = Vec::new();
    for c in calls {
        let answer = c.await.unwrap();
        seen.push(answer.parse().unwrap_or_else(|_| panic!("{answer}")));
    }
    seen.sort_unstable();
    // Every increment saw its own value: no two hosts counted the same one.
    let total = 2 * per_host;
    assert_eq!(seen, (1..=total).collect::<Vec<u64>>());

    // Both hosts read the final count (L1 copies dropped over L3).
    for (host, subject) in [(&a, "kv.a"), (&b, "kv.b")] {
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let r = client.request(subject, "get hits".into()).await.unwrap();
            if r.payload[..] == *total.to_string().as_bytes() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{} reads {:?}",
                host.id(),
                r.payload
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Redis holds the counter in a raw codec envelope: header 0, digits.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let raw: Vec<u8> = redis::cmd("GET")
        .arg("shared:tally:hits")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(raw, [&[0u8][..], total.to_string().as_bytes()].concat());
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_keys_pages_over_redis_and_the_keys_only_l1_holds() {
    let mut redis = RedisServer::start();
    let m = manifest(&format!(
        "[redis]\nurl = \"{}\"\n\n[cache]\nl1_max_ttl_secs = 300\n{}",
        redis.url(),
        kv_component("tally", "kv.cmd", "pages")
    ));
    let host = Host::start(&m).await.unwrap();
    let bus = host.bus();
    let mut expected = Vec::new();
    for chunk in 0..12 {
        let pairs: Vec<String> = (0..100)
            .map(|i| {
                let k = format!("k{:04}", chunk * 100 + i);
                expected.push(k.clone());
                format!("{k}=v")
            })
            .collect();
        assert_eq!(
            ask(&*bus, "kv.cmd", &format!("setmany {}", pairs.join(" "))).await,
            "ok"
        );
    }
    expected.sort();
    let list: serde_json::Value =
        serde_json::from_str(&ask(&*bus, "kv.cmd", "list").await).unwrap();
    assert_eq!(list["keys"], serde_json::json!(expected));
    assert!(list["pages"].as_u64().unwrap() >= 3, "{}", list["pages"]);

    // Redis comes back empty: the keys live on in this host's L1 only, and
    // a listing still finds each of them, plus what Redis holds now.
    redis.kill();
    redis.restart();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while ask(&*bus, "kv.cmd", "set fresh 1").await != "ok" || {
        let mut conn = redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let n: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
        n == 0
    } {
        assert!(
            tokio::time::Instant::now() < until,
            "Redis never took a write again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    expected.push("fresh".into());
    expected.sort();
    let list: serde_json::Value =
        serde_json::from_str(&ask(&*bus, "kv.cmd", "list").await).unwrap();
    assert_eq!(list["keys"], serde_json::json!(expected));
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_author_harness_and_replay_run_wasmcloud_components_and_record_their_counters() {
    let mut h = weir::testing::Harness::new(&kv_component("tally", "kv.cmd", "wc")).unwrap();
    let trades = weir_tests::sample_trade_messages(50);
    for t in &trades {
        h.push(&t.subject, t.payload.clone()).await;
    }
    let btc = trades
        .iter()
        .filter(|t| t.subject == "TRADE.trade.BTCUSDT")
        .count();
    assert!(btc > 0);
    let v = h.cache("wc:tally:trades:BTCUSDT").await.unwrap();
    assert_eq!(std::str::from_utf8(&v).unwrap(), btc.to_string());
    // Each increment is on the tape as the value it set.
    let sets: Vec<String> = h
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "cache_set" && r["key"] == "wc:tally:trades:BTCUSDT")
        .map(|r| r["payload"].as_str().unwrap_or_default().to_owned())
        .collect();
    let want: Vec<String> = (1..=btc).map(|n| n.to_string()).collect();
    assert_eq!(sets, want);
}

#[test]
fn inspect_tells_each_world_and_marks_every_import_of_the_demo_components_provided() {
    let runtime = weir::runtime::Runtime::new(&weir::runtime::RuntimeConfig {
        epoch_tick: Duration::from_millis(10),
        max_memory_bytes: 64 << 20,
        max_instances: 1,
        fuel: false,
    })
    .unwrap();
    // The demo strategies are the SDK's `Strategy`s: they also export the
    // batch form of weir's handler and the decoded market events.
    for (file, world, strategy) in [
        ("wasmcloud_kv", World::WasmCloud, false),
        ("wasmcloud_echo", World::WasmCloud, false),
        ("sma_crossover", World::Weir, true),
        ("price_alert", World::Weir, true),
    ] {
        let bytes = std::fs::read(wasm(file)).unwrap();
        let r = runtime.inspect(&bytes).unwrap();
        assert_eq!(
            (r.world, r.refusal.as_deref()),
            (Some(world), None),
            "{file}"
        );
        assert!(
            r.imports.iter().all(|i| i.provided),
            "{file}: {:?}",
            r.imports
        );
        assert_eq!(r.sha256, weir::digest::sha256_hex(&bytes));
        let mut exports = vec![world.handler()];
        if strategy {
            exports.push(weir::runtime::BATCH_HANDLER);
            exports.push(weir::runtime::MARKET_HANDLER);
        }
        exports.sort_unstable();
        let mut have = r.exports.clone();
        have.sort_unstable();
        assert_eq!(have, exports, "{file}");
    }
}
