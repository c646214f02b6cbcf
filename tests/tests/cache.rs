//! The layered cache on real redis-server and nats-server processes:
//! TTLs, codecs and shared dictionaries in Redis, pattern invalidation,
//! two hosts staying coherent, Redis killed and restarted, and an outside
//! client invalidating with the seed's JSON.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::AsyncCommands;
use weir::bus::{Bus, NatsBus};
use weir::cache::codec::{Codec, Codecs, RAW, ZSTD, ZSTD_DICT};
use weir::cache::{
    CacheError, CacheStore, Coherence, LayeredCache, LayeredConfig, MemoryStore, MemoryStoreConfig,
    RedisStore, l3,
};
use weir::manifest::NatsSettings;
use weir_tests::servers::{NatsServer, RedisServer};
use weir_tests::{readyz_until, root};

const MIN: Duration = Duration::from_secs(60);

fn redis_store(server: &RedisServer) -> RedisStore {
    let codecs = Codecs::new(64, Codec::Zstd, 1 << 20).unwrap();
    RedisStore::new(&server.url(), Arc::new(codecs), Duration::from_millis(250)).unwrap()
}

fn layered(
    l2: Option<RedisStore>,
    l3: Option<Coherence>,
    required: bool,
    dicts: &[&str],
) -> LayeredCache {
    let l1 = MemoryStore::new(MemoryStoreConfig::default());
    let config = LayeredConfig {
        l2_required: required,
        l1_max_ttl: Some(Duration::from_secs(30)),
        dictionary_prefixes: dicts.iter().map(|s| s.to_string()).collect(),
    };
    LayeredCache::new(l1, l2, l3, config)
}

async fn raw_redis(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn order_book(i: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"symbol":"BTCUSDT","ts":{},"bids":[[{:.2},0.{:03}],[{:.2},1.{:03}],[{:.2},2.{:03}]],"asks":[[{:.2},0.{:03}],[{:.2},2.{:03}],[{:.2},3.{:03}]]}}"#,
        1_753_862_400_000u64 + i as u64 * 100,
        64000.0 - (i % 50) as f64 * 0.5,
        i % 1000,
        63999.5 - (i % 50) as f64 * 0.5,
        (i * 7) % 1000,
        63999.0 - (i % 50) as f64 * 0.5,
        (i * 5) % 1000,
        64000.5 + (i % 50) as f64 * 0.5,
        (i * 3) % 1000,
        64001.0 + (i % 50) as f64 * 0.5,
        (i * 11) % 1000,
        64001.5 + (i % 50) as f64 * 0.5,
        (i * 13) % 1000,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip_through_redis_with_codec_headers_and_ttls() {
    let server = RedisServer::start();
    let cache = layered(Some(redis_store(&server)), None, true, &[]);
    let big = Bytes::from(order_book(1).repeat(10));
    cache
        .set("ns:small", Bytes::from_static(b"tiny"), MIN)
        .await
        .unwrap();
    cache.set("ns:big", big.clone(), MIN).await.unwrap();
    cache
        .set(
            "ns:short",
            Bytes::from_static(b"soon gone"),
            Duration::from_millis(300),
        )
        .await
        .unwrap();

    let mut r = raw_redis(&server).await;
    let small: Vec<u8> = r.get("ns:small").await.unwrap();
    let stored_big: Vec<u8> = r.get("ns:big").await.unwrap();
    assert_eq!(
        small, b"\x00tiny",
        "below the threshold: raw with a header byte"
    );
    assert_eq!(stored_big[0], ZSTD);
    assert!(
        stored_big.len() * 4 < big.len(),
        "zstd shrinks repeated JSON: {} of {}",
        stored_big.len(),
        big.len()
    );
    let pttl: i64 = r.pttl("ns:big").await.unwrap();
    assert!(pttl > 50_000 && pttl <= 60_000, "SET .. PX: {pttl}");

    // A second host (empty L1) reads through L2 and gets the same bytes.
    let other = layered(Some(redis_store(&server)), None, true, &[]);
    assert_eq!(other.get("ns:big").await.unwrap(), Some(big));
    assert_eq!(
        other.get("ns:small").await.unwrap().as_deref(),
        Some(&b"tiny"[..])
    );
    let many = other
        .get_many(&["ns:small".into(), "ns:nope".into()])
        .await
        .unwrap();
    assert_eq!(many, vec![Some(Bytes::from_static(b"tiny")), None]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        other.get("ns:short").await.unwrap(),
        None,
        "expired in Redis"
    );
    assert_eq!(cache.get("ns:short").await.unwrap(), None, "expired in L1");

    // A value with a bad header is a counted miss, not a crash.
    let _: () = r.set("ns:corrupt", b"\x7fgarbage").await.unwrap();
    assert_eq!(other.get("ns:corrupt").await.unwrap(), None);
    let l2 = other
        .stats()
        .into_iter()
        .find(|l| l.layer == weir::cache::Layer::L2)
        .unwrap();
    assert!(l2.errors >= 1 && l2.hits >= 2, "{l2:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dictionary_trained_on_one_host_decodes_on_another() {
    let server = RedisServer::start();
    let writer = layered(Some(redis_store(&server)), None, true, &["md:ob:"]);
    for i in 0..300 {
        writer
            .set(&format!("md:ob:{i}"), order_book(i), MIN)
            .await
            .unwrap();
    }
    let mut r = raw_redis(&server).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let id: Option<u32> = r.get("weir:dict:prefix:md:ob:").await.unwrap();
        if id.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "no dictionary was trained and shared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let value = order_book(5000);
    writer.set("md:ob:new", value.clone(), MIN).await.unwrap();
    let stored: Vec<u8> = r.get("md:ob:new").await.unwrap();
    assert_eq!(stored[0], ZSTD_DICT);
    assert!(
        stored.len() * 3 <= value.len(),
        "dictionary ratio {:.2}",
        value.len() as f64 / stored.len() as f64
    );

    // A host that never saw the samples fetches the dictionary by its id.
    let reader = layered(Some(redis_store(&server)), None, true, &[]);
    assert_eq!(reader.get("md:ob:new").await.unwrap(), Some(value));
    // And one configured for the prefix adopts it at start.
    let adopter = layered(Some(redis_store(&server)), None, true, &["md:ob:"]);
    adopter.adopt_dictionaries().await;
    adopter
        .set("md:ob:adopted", order_book(7), MIN)
        .await
        .unwrap();
    let stored: Vec<u8> = r.get("md:ob:adopted").await.unwrap();
    assert_eq!(stored[0], ZSTD_DICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_invalidation_scans_and_unlinks_only_matching_keys() {
    let server = RedisServer::start();
    let cache = layered(Some(redis_store(&server)), None, true, &[]);
    for i in 0..1200 {
        cache
            .set(
                &format!("market_data:BTCUSDT:{i}"),
                Bytes::from_static(b"x"),
                MIN,
            )
            .await
            .unwrap();
    }
    cache
        .set("market_data:ETHUSDT:1h", Bytes::from_static(b"y"), MIN)
        .await
        .unwrap();
    let n = cache
        .invalidate_pattern("market_data:BTCUSDT:*")
        .await
        .unwrap();
    assert_eq!(n, 1200);
    let mut r = raw_redis(&server).await;
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(left, vec!["market_data:ETHUSDT:1h".to_owned()]);
    assert_eq!(cache.get("market_data:BTCUSDT:7").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_serves_l1_then_recovers() {
    let mut server = RedisServer::start();
    let cache = layered(Some(redis_store(&server)), None, false, &[]);
    let strict = layered(Some(redis_store(&server)), None, true, &[]);
    cache
        .set("ns:kept", Bytes::from_static(b"v1"), MIN)
        .await
        .unwrap();

    server.kill();
    // Reads come from L1; writes keep L1 current; nothing hangs.
    let start = std::time::Instant::now();
    for _ in 0..50 {
        assert_eq!(
            cache.get("ns:kept").await.unwrap().as_deref(),
            Some(&b"v1"[..])
        );
        assert_eq!(cache.get("ns:missing").await.unwrap(), None);
    }
    cache
        .set("ns:during", Bytes::from_static(b"v2"), MIN)
        .await
        .unwrap();
    assert_eq!(
        cache.get("ns:during").await.unwrap().as_deref(),
        Some(&b"v2"[..])
    );
    let e = strict
        .set("ns:strict", Bytes::from_static(b"x"), MIN)
        .await
        .unwrap_err();
    assert!(
        matches!(e, CacheError::Unavailable(_) | CacheError::Timeout(_)),
        "{e:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "a dead Redis must fail fast: {:?}",
        start.elapsed()
    );
    let l2 = cache.l2().unwrap();
    assert!(l2.layer_stats().errors > 0);
    assert!(l2.is_failing(), "circuit open");

    // Redis comes back empty: writes reach it again once the breaker probes.
    server.restart();
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if strict
            .set("ns:after", Bytes::from_static(b"v3"), MIN)
            .await
            .is_ok()
        {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "Redis never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut r = raw_redis(&server).await;
    let v: Vec<u8> = r.get("ns:after").await.unwrap();
    assert_eq!(v, b"\x00v3");
    // No stale value from before the restart appears through another host.
    let fresh = layered(Some(redis_store(&server)), None, true, &[]);
    assert_eq!(fresh.get("ns:kept").await.unwrap(), None);
    let _ = RAW;
}

async fn coherent_pair(
    redis: &RedisServer,
    urls: [String; 2],
) -> (LayeredCache, LayeredCache, Vec<weir::shutdown::Trigger>) {
    let mut stops = Vec::new();
    let mut caches = Vec::new();
    for (name, url) in ["host-a", "host-b"].into_iter().zip(urls) {
        let bus = NatsBus::connect(&NatsSettings::with_url(url), &root(), name)
            .await
            .unwrap();
        let bus: Arc<dyn Bus> = Arc::new(bus);
        let l3 = Coherence::new(bus.clone(), name.into());
        let cache = layered(Some(redis_store(redis)), Some(l3.clone()), true, &[]);
        let (stop, stop_rx) = weir::shutdown::channel();
        let ups = bus.subscribe(l3::UPDATE, None).await.unwrap();
        let invs = bus.subscribe(l3::INVALIDATE, None).await.unwrap();
        tokio::spawn(l3.run(cache.l1().clone(), ups, invs, None, stop_rx));
        stops.push(stop);
        caches.push(cache);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = caches.pop().unwrap();
    let a = caches.pop().unwrap();
    (a, b, stops)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_stay_coherent_under_concurrent_writes() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let (a, b, _stops) = coherent_pair(&redis, [nats.url(), nats.url()]).await;
    writes_stay_coherent(&a, &b, &redis).await;
}

/// The same across a NATS cluster: each host on its own node, so every
/// invalidation crosses a route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_on_different_cluster_nodes_stay_coherent() {
    let redis = RedisServer::start();
    let cluster = weir_tests::servers::NatsCluster::start(3).await;
    let urls = [cluster.nodes[0].url(), cluster.nodes[1].url()];
    let (a, b, _stops) = coherent_pair(&redis, urls).await;
    writes_stay_coherent(&a, &b, &redis).await;
}

/// A's writes reach B's L1 (an L3 invalidation, then a read through L2),
/// and after concurrent writes to the same keys both read what Redis holds.
async fn writes_stay_coherent(a: &LayeredCache, b: &LayeredCache, redis: &RedisServer) {
    a.set("ns:k", Bytes::from_static(b"v1"), MIN).await.unwrap();
    assert_eq!(
        b.get("ns:k").await.unwrap().as_deref(),
        Some(&b"v1"[..]),
        "read through L2, now in B's L1"
    );
    a.set("ns:k", Bytes::from_static(b"v2"), MIN).await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while b.get("ns:k").await.unwrap().as_deref() != Some(&b"v2"[..]) {
        assert!(
            tokio::time::Instant::now() < until,
            "B kept a stale L1 copy"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Both write the same keys concurrently; when they are done and the
    // messages have landed, both read what Redis holds.
    let keys: Vec<String> = (0..20).map(|i| format!("ns:c{i}")).collect();
    let write = |c: LayeredCache, tag: &'static str, keys: Vec<String>| async move {
        for round in 0..30 {
            for k in &keys {
                c.set(k, Bytes::from(format!("{tag}-{round}")), MIN)
                    .await
                    .unwrap();
                let _ = c.get(k).await.unwrap();
            }
        }
    };
    let (ra, rb) = tokio::join!(
        tokio::spawn(write(a.clone(), "a", keys.clone())),
        tokio::spawn(write(b.clone(), "b", keys.clone()))
    );
    ra.unwrap();
    rb.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut r = raw_redis(redis).await;
    for k in &keys {
        let stored: Vec<u8> = r.get(k).await.unwrap();
        let truth = &stored[1..];
        assert_eq!(a.get(k).await.unwrap().as_deref(), Some(truth), "{k} on A");
        assert_eq!(b.get(k).await.unwrap().as_deref(), Some(truth), "{k} on B");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_client_invalidates_with_the_seed_json() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let (a, _b, _stops) = coherent_pair(&redis, [nats.url(), nats.url()]).await;
    a.set(
        "sma:trading_signal_BTCUSDT",
        Bytes::from_static(b"buy"),
        MIN,
    )
    .await
    .unwrap();
    a.set("md:BTCUSDT:1h", Bytes::from_static(b"c"), MIN)
        .await
        .unwrap();
    a.set("md:ETHUSDT:1h", Bytes::from_static(b"c"), MIN)
        .await
        .unwrap();
    // Change Redis behind weir's back, as another service would.
    let mut r = raw_redis(&redis).await;
    let _: () = r
        .set("sma:trading_signal_BTCUSDT", b"\x00sell")
        .await
        .unwrap();
    let _: () = r.set("md:BTCUSDT:1h", b"\x00c2").await.unwrap();
    let _: () = r.set("md:ETHUSDT:1h", b"\x00c3").await.unwrap();
    assert_eq!(
        a.get("sma:trading_signal_BTCUSDT")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"buy"[..]),
        "L1 copy"
    );

    // Exactly what the Python seed publishes.
    let client = nats.client().await;
    client
        .publish("cache.invalidate", r#"{"action":"invalidate","key":"sma:trading_signal_BTCUSDT","timestamp":"2025-07-30T08:45:23.123456"}"#.into())
        .await
        .unwrap();
    client
        .publish("cache.invalidate", r#"{"action":"invalidate_pattern","pattern":"md:BTCUSDT:*","timestamp":"2025-07-30T08:45:23.123456"}"#.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    // Two messages, applied one after the other: wait for each effect, since
    // the first being visible says nothing about the second.
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    for (key, fresh) in [
        ("sma:trading_signal_BTCUSDT", &b"sell"[..]),
        ("md:BTCUSDT:1h", &b"c2"[..]),
    ] {
        while a.get(key).await.unwrap().as_deref() != Some(fresh) {
            assert!(
                tokio::time::Instant::now() < until,
                "invalidation of {key} not applied"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(
        a.get("md:ETHUSDT:1h").await.unwrap().as_deref(),
        Some(&b"c"[..]),
        "a key outside the pattern keeps its L1 copy"
    );
    // The counters are bumped just after the entries go: poll them too.
    loop {
        let l3 = a
            .stats()
            .into_iter()
            .find(|l| l.layer == weir::cache::Layer::L3)
            .unwrap();
        if l3.hits >= 2 && l3.deletes >= 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "{l3:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_sharing_redis_and_nats_serve_the_demo_with_coherent_caches() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let host_manifest = |id: &str, symbols: [&str; 2]| {
        weir_tests::manifest(&format!(
            r#"
[host]
id = "{id}"
http = "127.0.0.1:0"

[nats]
url = "{}"

[redis]
url = "{}"

[components.sma-crossover]
wasm = "{{sma}}"
subscribe = [{{ subject = "TRADE.trade.{}" }}, {{ subject = "TRADE.trade.{}" }}]
grants = {{ subscribe = ["TRADE.trade.*"], publish = ["signals.*"], cache = "sma" }}
"#,
            nats.url(),
            redis.url(),
            symbols[0],
            symbols[1]
        ))
    };
    // Each host owns two symbols; both share one cache namespace.
    let a = weir::Host::start(&host_manifest("host-a", ["BTCUSDT", "ETHUSDT"]))
        .await
        .unwrap();
    let b = weir::Host::start(&host_manifest("host-b", ["SOLUSDT", "BNBUSDT"]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let msgs = weir_tests::sample_messages(usize::MAX);
    let trades: Vec<_> = msgs
        .iter()
        .filter(|m| m.subject.starts_with("TRADE."))
        .collect();
    let client = nats.client().await;
    for (i, t) in trades.iter().enumerate() {
        client
            .publish(t.subject.clone(), t.payload.clone())
            .await
            .unwrap();
        if i % 500 == 499 {
            client.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    client.flush().await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while a.component_stats()[0].1.handled + b.component_stats()[0].1.handled < trades.len() as u64
    {
        assert!(
            tokio::time::Instant::now() < until,
            "not every trade was handled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Both hosts read the same latest signal for every symbol, whichever
    // host computed it, and it is the reference's last signal.
    let expected = weir_tests::reference::sma_signals(&msgs, 5, 20);
    let (ca, cb) = (a.cache().unwrap(), b.cache().unwrap());
    for (symbol, signals) in &expected {
        let key = format!("sma:trading_signal_{symbol}");
        let va = ca.get(&key).await.unwrap().expect("host A sees the signal");
        let vb = cb.get(&key).await.unwrap().expect("host B sees the signal");
        assert_eq!(va, vb, "{symbol}");
        let v: serde_json::Value = serde_json::from_slice(&va).unwrap();
        assert_eq!(
            v["signal"],
            signals.last().unwrap().signal.as_str(),
            "{symbol}"
        );
    }

    // The dashboard reads Redis INFO and sees all three layers and both connections.
    let addr = a.http_addr().unwrap().to_string();
    let (code, body) = weir::observe::http_get(&addr, "/api/dashboard")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sys = &d["system_metrics"];
    assert_eq!(sys["source"], "redis", "{sys}");
    assert!(sys["used_memory"].as_u64().unwrap() > 0, "{sys}");
    assert!(
        sys["connected_clients"].as_u64().unwrap() >= 2,
        "two hosts: {sys}"
    );
    assert!(
        sys["total_commands_processed"].as_u64().unwrap() > 0,
        "{sys}"
    );
    assert_eq!(d["connections"]["nats"], "connected", "{d}");
    assert_eq!(d["connections"]["redis"], "ok", "{d}");
    let layers: Vec<&str> = d["cache_layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["layer"].as_str().unwrap())
        .collect();
    assert_eq!(layers, ["l1", "l2", "l3"]);
    let (_, metrics) = weir::observe::http_get(&addr, "/metrics").await.unwrap();
    for line in [
        "weir_cache_hits_total{layer=\"l2\"}",
        "weir_cache_compression_saved_bytes_total{layer=\"l2\"}",
        "nats_connection_status 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_on_one_key_make_one_redis_read() {
    let server = RedisServer::start();
    let writer = layered(Some(redis_store(&server)), None, true, &[]);
    writer
        .set("ns:shared", Bytes::from_static(b"value"), MIN)
        .await
        .unwrap();
    let reader = layered(Some(redis_store(&server)), None, true, &[]);
    let gets: Vec<_> = (0..32)
        .map(|_| {
            let r = reader.clone();
            tokio::spawn(async move { r.get("ns:shared").await.unwrap() })
        })
        .collect();
    for g in gets {
        assert_eq!(g.await.unwrap().as_deref(), Some(&b"value"[..]));
    }
    let l2 = reader.l2().unwrap().layer_stats();
    assert_eq!(l2.hits + l2.misses, 1, "single flight: {l2:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_dashboard_say_when_redis_is_failing_and_recover() {
    use weir::observe::http_get;
    let mut redis = RedisServer::start();
    let m = weir_tests::manifest(&format!(
        r#"
[host]
http = "127.0.0.1:0"

[redis]
url = "{}"
{}"#,
        redis.url(),
        weir_tests::ok_component("writer", "poke.*")
    ));
    let host = weir::Host::start(&m).await.unwrap();
    let addr = host.http_addr().unwrap().to_string();
    let bus = host.bus();
    // Cache traffic (each message writes a count) until /readyz answers `code`.
    let poke = || {
        let bus = bus.clone();
        async move {
            let msg = weir::bus::BusMessage::new("poke.1", "{}");
            bus.publish(msg).await.unwrap();
        }
    };
    let poke_until = |code: u16| readyz_until(&addr, code, Duration::from_secs(20), poke);
    assert_eq!(poke_until(200).await.0, 200);

    redis.kill();
    let (code, body) = poke_until(503).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body, "not ready: Redis is failing (circuit open)\n");
    let (_, d) = http_get(&addr, "/api/dashboard").await.unwrap();
    let d: serde_json::Value = serde_json::from_str(&d).unwrap();
    assert_eq!(d["connections"]["redis"], "failing", "{d}");
    assert!(d["system_metrics"]["error"].is_string(), "{d}");
    // The component kept handling on L1 meanwhile.
    assert_eq!(host.component_stats()[0].1.dead_lettered, 0);

    redis.restart();
    let (code, body) = poke_until(200).await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    let (_, d) = http_get(&addr, "/api/dashboard").await.unwrap();
    let d: serde_json::Value = serde_json::from_str(&d).unwrap();
    assert_eq!(d["system_metrics"]["source"], "redis", "{d}");
    assert!(
        d["system_metrics"]["used_memory"].as_u64().unwrap() > 0,
        "{d}"
    );
    host.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_in_redis_keep_their_envelope_ttl_and_refuse_what_is_not_a_counter() {
    let mut server = RedisServer::start();
    let cache = layered(Some(redis_store(&server)), None, false, &[]);
    let mut conn = raw_redis(&server).await;

    assert_eq!(cache.increment("ns:c", 40, MIN).await.unwrap(), 40);
    assert_eq!(cache.increment("ns:c", 2, MIN).await.unwrap(), 42);
    // Read back like any value, from L1 and from Redis by a peer.
    assert_eq!(&cache.get("ns:c").await.unwrap().unwrap()[..], b"42");
    let peer = layered(Some(redis_store(&server)), None, false, &[]);
    assert_eq!(&peer.get("ns:c").await.unwrap().unwrap()[..], b"42");
    let raw: Vec<u8> = conn.get("ns:c").await.unwrap();
    assert_eq!(raw, [&[RAW][..], b"42"].concat());
    let ttl: i64 = conn.pttl("ns:c").await.unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "{ttl}");
    // An existing counter keeps its TTL.
    let _: () = conn.pexpire("ns:c", 5_000).await.unwrap();
    assert_eq!(cache.increment("ns:c", 1, MIN).await.unwrap(), 43);
    let ttl: i64 = conn.pttl("ns:c").await.unwrap();
    assert!(ttl > 0 && ttl <= 5_000, "{ttl}");

    // A value that is not a counter, and a sum past what INCRBY holds, are
    // refused and leave the stored value as it was.
    cache
        .set("ns:text", Bytes::from_static(b"abc"), MIN)
        .await
        .unwrap();
    let e = cache.increment("ns:text", 1, MIN).await.unwrap_err();
    assert!(
        matches!(&e, CacheError::Invalid(m) if m.contains("not a decimal counter")),
        "{e:?}"
    );
    let big = i64::MAX.to_string();
    let _: () = conn
        .set("ns:big", [&[RAW][..], big.as_bytes()].concat())
        .await
        .unwrap();
    assert!(cache.increment("ns:big", 1, MIN).await.is_err());
    let raw: Vec<u8> = conn.get("ns:big").await.unwrap();
    assert_eq!(
        raw,
        [&[RAW][..], big.as_bytes()].concat(),
        "restored after INCRBY refused"
    );
    let raw: Vec<u8> = conn.get("ns:text").await.unwrap();
    assert_eq!(raw, [&[RAW][..], b"abc"].concat());
    assert!(cache.increment("ns:c", u64::MAX, MIN).await.is_err());

    // Without Redis the count cannot be shared: the call fails, even
    // though writes may stay in L1 with `l2_required = false`.
    server.kill();
    let e = cache.increment("ns:c", 1, MIN).await.unwrap_err();
    assert!(
        matches!(e, CacheError::Unavailable(_) | CacheError::Timeout(_)),
        "{e:?}"
    );
}

/// sma-crossover writes each symbol's state once per `handle-batch` call.
/// With `l2_required`, a write Redis does not confirm fails: the trades
/// that changed that state must then not count as handled. Here every
/// trade sent while Redis is down is retried and dead-lettered with the
/// reason; none is acknowledged with its state unwritten, and trades after
/// the restart carry on from the state Redis confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_state_writes_that_redis_refuses_are_not_acknowledged() {
    let mut redis = RedisServer::start();
    let m = weir_tests::manifest(&format!(
        r#"
[host]
http = "127.0.0.1:0"

[redis]
url = "{}"

[cache]
l2_required = true
redis_timeout_ms = 100

[components.sma-crossover]
wasm = "{{sma}}"
subscribe = [{{ subject = "TRADE.trade.*" }}]
grants = {{ subscribe = ["TRADE.trade.*"], publish = ["signals.*"], cache = "sma" }}
limits = {{ max_deliver = 2, time_per_event_ms = 1000 }}
"#,
        redis.url()
    ));
    let host = weir::Host::start(&m).await.unwrap();
    let dlq = weir_tests::Collector::start(&*host.bus(), "dlq.>").await;
    let trades = weir_tests::sample_trade_messages(usize::MAX);
    let stats = || host.component_stats()[0].1;
    let send = |range: std::ops::Range<usize>| {
        let (bus, batch) = (host.bus(), trades[range].to_vec());
        async move {
            for t in batch {
                bus.publish(t).await.unwrap();
            }
        }
    };
    let until = |done: &'static str, what: fn(&weir::stats::ComponentSnapshot) -> bool| {
        let stats = &stats;
        async move {
            let deadline = tokio::time::Instant::now() + MIN;
            while !what(&stats()) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{done}: {:?}",
                    stats()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    send(0..200).await;
    until("the first 200 trades handled", |s| s.handled == 200).await;

    redis.kill();
    let before = stats();
    send(200..240).await;
    until("the outage's trades settled", |s| {
        s.handled + s.dead_lettered == 240
    })
    .await;
    let after = stats();
    assert_eq!((after.handled, after.dead_lettered), (200, 40), "{after:?}");
    assert!(
        after.batches > before.batches,
        "through handle-batch: {after:?}"
    );
    // Each says why: Redis, not a deadline (a Redis call that times out
    // takes 100 ms, within the 1 s deadline).
    for letter in dlq.wait_for(40, Duration::from_secs(5)).await {
        let letter: serde_json::Value = serde_json::from_slice(&letter.payload).unwrap();
        let error = letter["error"].as_str().unwrap();
        assert!(
            error.starts_with("retry requested:") && error.contains("Redis at"),
            "dead letter says why: {error}"
        );
    }

    // Sent once the host sees Redis again (its circuit closes after a probe).
    redis.restart();
    let addr = host.http_addr().unwrap().to_string();
    let ready = readyz_until(&addr, 200, MIN, || async {}).await;
    assert_eq!(ready.0, 200, "{ready:?}");
    send(240..280).await;
    until("trades after the restart handled", |s| s.handled == 240).await;
    assert_eq!(stats().dead_lettered, 40);
    host.shutdown(Duration::from_secs(2)).await;
}
