//! Cache benchmarks, each against a baseline measured in the same run:
//!
//! 1. L1 eviction policy: hit ratio of weir's sharded LRU vs a TinyLFU
//!    cache (moka) on a skewed (Zipf) key trace;
//! 2. L1 hit vs a bare `Mutex<HashMap>`, and a hit as a guest sees it;
//! 3. L2 hit vs a raw Redis GET (spawned redis-server);
//! 4. compression ratio and µs/KB per codec on an order book (~400 B) and
//!    50 candles (~4 KB) of JSON;
//! 5. cross-host invalidation delay over NATS (spawned nats-server), p50/p99.
//!
//! Run with `just bench` (or `cargo bench -p weir-tests --bench cache`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark code

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::AsyncCommands;
use weir::bus::{Bus, BusMessage, NatsBus};
use weir::cache::codec::{Codec, Codecs, dictionary_id, train_dictionary};
use weir::cache::{CacheStore, Coherence, MemoryStore, MemoryStoreConfig, RedisStore, l3};
use weir::manifest::NatsSettings;
use weir_tests::servers::{NatsServer, RedisServer};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// ns per call of `f`, median of 7 rounds of `n` calls.
fn per_call(n: usize, mut f: impl FnMut(usize)) -> f64 {
    median(
        (0..7)
            .map(|_| {
                let t = Instant::now();
                for i in 0..n {
                    f(i);
                }
                t.elapsed().as_nanos() as f64 / n as f64
            })
            .collect(),
    )
}

/// Zipf(s=1) sampler over `n` keys by inverse CDF.
fn zipf_trace(n: usize, len: usize) -> Vec<usize> {
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / k as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(n);
    let mut acc = 0.0;
    for w in weights {
        acc += w / total;
        cdf.push(acc);
    }
    let mut x: u64 = 0x9E3779B97F4A7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            cdf.partition_point(|&c| c < u).min(n - 1)
        })
        .collect()
}

fn eviction_policy() {
    let (keys, cap, len) = (100_000, 5_000, 1_000_000);
    let trace = zipf_trace(keys, len);
    let names: Vec<String> = (0..keys).map(|k| format!("key:{k}")).collect();
    let lru = MemoryStore::new(MemoryStoreConfig {
        max_entries: cap,
        max_bytes: 1 << 30,
    });
    let moka: moka::sync::Cache<String, Bytes> = moka::sync::Cache::new(cap as u64);
    let (mut lru_hits, mut moka_hits) = (0u64, 0u64);
    let v = Bytes::from_static(b"v");
    for &k in &trace {
        let key = &names[k];
        if lru.get_now(key).is_some() {
            lru_hits += 1;
        } else {
            lru.set_now(key, v.clone(), Duration::from_secs(3600))
                .unwrap();
        }
        if moka.get(key).is_some() {
            moka_hits += 1;
        } else {
            moka.insert(key.clone(), v.clone());
        }
    }
    let (a, b) = (lru_hits as f64 / len as f64, moka_hits as f64 / len as f64);
    println!(
        "L1 policy       Zipf(1) trace, {keys} keys, {cap} slots: sharded LRU hit ratio {a:.3}, TinyLFU (moka) {b:.3}"
    );
}

fn l1_hit() {
    let l1 = MemoryStore::new(MemoryStoreConfig::default());
    let map: Mutex<HashMap<String, Bytes>> = Mutex::default();
    let keys: Vec<String> = (0..1000).map(|i| format!("sma:state:{i}")).collect();
    for k in &keys {
        l1.set_now(
            k,
            Bytes::from_static(b"0123456789abcdef"),
            Duration::from_secs(3600),
        )
        .unwrap();
        map.lock()
            .unwrap()
            .insert(k.clone(), Bytes::from_static(b"0123456789abcdef"));
    }
    let base = per_call(1_000_000, |i| {
        black_box(map.lock().unwrap().get(&keys[i % 1000]).cloned());
    });
    let ours = per_call(1_000_000, |i| {
        black_box(l1.get_now(&keys[i % 1000]));
    });
    println!(
        "L1 hit          HashMap {base:.0} ns   weir L1 {ours:.0} ns   ratio {:.2}x (target ≤ 100 ns)",
        ours / base
    );
    println!(
        "TABLE|cache: L1 hit|{ours:.0} ns|Mutex<HashMap> {base:.0} ns|{:.2}x|≤ 100 ns",
        ours / base
    );
}

fn guest_hit(rt: &tokio::runtime::Runtime) {
    use weir::capability::ComponentContext;
    use weir::manifest::{CacheSettings, Grants, Limits};
    use weir::runtime::{HandleOutcome, Runtime, RuntimeConfig};
    let l1 = MemoryStore::new(MemoryStoreConfig::default());
    l1.set_now(
        "b:hot",
        Bytes::from_static(b"0123456789abcdef"),
        Duration::from_secs(3600),
    )
    .unwrap();
    let runtime = Runtime::new(&RuntimeConfig {
        epoch_tick: Duration::from_millis(5),
        max_memory_bytes: 64 << 20,
        max_instances: 4,
        fuel: false,
    })
    .unwrap();
    let market = weir::market::MarketStore::default();
    market
        .update(
            "TRADE.trade.BTCUSDT",
            br#"{"symbol":"BTCUSDT","price":64000.5,"qty":0.25,"ts":1753862400000,"trade_id":7}"#,
        )
        .unwrap();
    let per_handle = |behaviour: &str, loops: u32| {
        let grants = Grants {
            cache: Some("b".into()),
            market: true,
            ..Grants::default()
        };
        let config = [
            ("behaviour", behaviour.to_owned()),
            ("loops", loops.to_string()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into();
        let limits = Limits {
            host_calls_per_event: 1_000_000,
            ..Limits::default()
        };
        let ctx = ComponentContext::new(
            "bench".into(),
            grants,
            limits,
            Arc::new(weir::bus::EmbeddedBus::new()),
        )
        .with_cache(
            Some(Arc::new(l1.clone()) as Arc<dyn CacheStore>),
            &CacheSettings::default(),
        )
        .with_config(config)
        .with_market(Some(market.clone()));
        let template = runtime
            .load(Arc::new(ctx), &weir_tests::wasm("hostile"), None)
            .unwrap();
        let mut inst = rt.block_on(template.instantiate()).unwrap();
        let msg = BusMessage::new("b.x", "{}");
        let rounds: Vec<f64> = (0..7)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..100 {
                    let out = rt.block_on(inst.handle(&template, &msg, None, None, 1));
                    assert!(matches!(out, HandleOutcome::Handled), "{out:?}");
                }
                t.elapsed().as_nanos() as f64 / 100.0
            })
            .collect();
        median(rounds)
    };
    let per_call =
        |behaviour: &str| (per_handle(behaviour, 1001) - per_handle(behaviour, 1)) / 1000.0;
    let get = per_call("cache-get");
    let last = per_call("last-trade");
    println!("L1 hit (guest)  {get:.0} ns per cache.get seen by a component (target ≤ 500 ns)");
    println!("market (guest)  {last:.0} ns per market.last-trade seen by a component");
    println!(
        "TABLE|market: last-trade lookup (guest)|{last:.0} ns|cache.get L1 hit (guest) {get:.0} ns|{:.2}x|",
        last / get
    );
}

async fn l2_hit(server: &RedisServer) {
    let store = RedisStore::new(
        &server.url(),
        Arc::new(Codecs::new(256, Codec::Zstd, 1 << 20).unwrap()),
        Duration::from_secs(1),
    )
    .unwrap();
    let value = Bytes::from(vec![b'x'; 200]);
    store
        .set_many(&[("bench:k".into(), value)], Duration::from_secs(600))
        .await
        .unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_connection_manager().await.unwrap();
    let _: () = raw.set("bench:raw", vec![b'x'; 200]).await.unwrap();
    let n = 3000;
    let mut base = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n {
            let v: Option<Vec<u8>> = raw.get("bench:raw").await.unwrap();
            black_box(v);
        }
        base.push(t.elapsed().as_nanos() as f64 / n as f64 / 1000.0);
        let t = Instant::now();
        for _ in 0..n {
            black_box(store.get("bench:k").await.unwrap());
        }
        ours.push(t.elapsed().as_nanos() as f64 / n as f64 / 1000.0);
    }
    let (b, o) = (median(base), median(ours));
    println!(
        "L2 hit          raw Redis GET {b:.1} µs   weir L2 get (GET+PTTL, decode) {o:.1} µs   ratio {:.2}x",
        o / b
    );
    println!(
        "TABLE|cache: L2 hit|{o:.1} µs|raw Redis GET {b:.1} µs|{:.2}x|",
        o / b
    );
}

fn order_book(i: usize) -> Vec<u8> {
    let lvl = |side: f64, k: usize| {
        format!(
            "[{:.2},{:.4}]",
            64000.0 + side * (k as f64 * 0.5 + (i % 7) as f64),
            0.1 + ((i * 31 + k * 17) % 997) as f64 / 1000.0
        )
    };
    let bids: Vec<String> = (0..5).map(|k| lvl(-1.0, k)).collect();
    let asks: Vec<String> = (0..5).map(|k| lvl(1.0, k)).collect();
    format!(
        r#"{{"symbol":"BTCUSDT","ts":{},"lastUpdateId":{},"bids":[{}],"asks":[{}]}}"#,
        1_753_862_400_000u64 + i as u64 * 100,
        48_000_000 + i,
        bids.join(","),
        asks.join(",")
    )
    .into_bytes()
}

fn candles(i: usize) -> Vec<u8> {
    let mut p = 64000.0 + (i % 100) as f64;
    let c: Vec<String> = (0..50)
        .map(|k| {
            let o = p;
            p += ((k * 7 + i) % 13) as f64 - 6.0;
            format!(
                r#"{{"t":{},"o":{o:.2},"h":{:.2},"l":{:.2},"c":{p:.2},"v":{:.4}}}"#,
                1_753_862_400_000u64 + (i * 50 + k) as u64 * 60_000,
                o.max(p) + 3.5,
                o.min(p) - 2.25,
                10.0 + ((k * 13 + i) % 97) as f64 / 7.0
            )
        })
        .collect();
    format!(
        r#"{{"symbol":"BTCUSDT","interval":"1m","candles":[{}]}}"#,
        c.join(",")
    )
    .into_bytes()
}

fn codecs() {
    for (name, make) in [
        ("order book", order_book as fn(usize) -> Vec<u8>),
        ("50 candles", candles),
    ] {
        let samples: Vec<Vec<u8>> = (0..256).map(make).collect();
        let value = make(10_000);
        let dict = train_dictionary(&samples, 16 * 1024).unwrap();
        let mut line = format!("codec {name:<10} {} B:", value.len());
        for (label, codec, with_dict) in [
            ("gzip", Codec::Gzip, false),
            ("zstd", Codec::Zstd, false),
            ("zstd+dict", Codec::Zstd, true),
        ] {
            let c = Codecs::new(0, codec, 1 << 20).unwrap();
            if with_dict {
                let id = dictionary_id(&dict);
                c.install_dictionary(id, &dict).unwrap();
                c.use_dictionary_for("k", id);
            }
            let enc = c.encode("k", &value);
            assert_eq!(c.decode(&enc).unwrap(), value);
            let ns = per_call(2000, |_| {
                black_box(c.encode("k", &value));
            });
            let us_per_kb = ns / 1000.0 / (value.len() as f64 / 1024.0);
            line += &format!(
                "  {label} {:.2}x {us_per_kb:.2} µs/KB",
                value.len() as f64 / enc.len() as f64
            );
        }
        println!("{line}");
    }
    println!(
        "                (targets: order book ≥ 3x with a dictionary; candles ≥ 4.5x at ≤ 5 µs/KB)"
    );
}

async fn invalidation_delay(server: &NatsServer) {
    let root = weir_tests::root();
    let a: Arc<dyn Bus> = Arc::new(
        NatsBus::connect(&NatsSettings::with_url(server.url()), &root, "a")
            .await
            .unwrap(),
    );
    let b: Arc<dyn Bus> = Arc::new(
        NatsBus::connect(&NatsSettings::with_url(server.url()), &root, "b")
            .await
            .unwrap(),
    );
    let la = Coherence::new(a.clone(), "a".into());
    let lb = Coherence::new(b.clone(), "b".into());
    let l1b = MemoryStore::new(MemoryStoreConfig::default());
    let (_stop, stop_rx) = weir::shutdown::channel();
    let ups = b.subscribe(l3::UPDATE, None).await.unwrap();
    let invs = b.subscribe(l3::INVALIDATE, None).await.unwrap();
    tokio::spawn(lb.run(l1b.clone(), ups, invs, None, stop_rx));
    // Raw baseline: one core message, publish to receipt.
    let mut raw_sub = b.subscribe("bench.ping", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    // 5,000 rounds: a p99 of 500 was the 5th-worst sample, moved by any
    // one hiccup of this shared machine on either side.
    for i in 0..5000 {
        let t = Instant::now();
        a.publish(BusMessage::new("bench.ping", "x")).await.unwrap();
        // Waited for the way weir's side below is: polling between yields,
        // so both sides compete for the 2 cores alike.
        loop {
            use futures::FutureExt as _;
            if futures::StreamExt::next(&mut raw_sub)
                .now_or_never()
                .is_some()
            {
                break;
            }
            tokio::task::yield_now().await;
        }
        raw.push(t.elapsed().as_secs_f64() * 1e6);

        let key = format!("k{i}");
        l1b.set_now(&key, Bytes::from_static(b"v"), Duration::from_secs(60))
            .unwrap();
        let t = Instant::now();
        la.invalidated(&key).await;
        while l1b.get_now(&key).is_some() {
            tokio::task::yield_now().await;
        }
        ours.push(t.elapsed().as_secs_f64() * 1e6);
    }
    raw.sort_by(f64::total_cmp);
    ours.sort_by(f64::total_cmp);
    let p = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    println!(
        "invalidation    raw NATS one-way p50 {:.0} µs p99 {:.0} µs   weir cross-host L1 drop p50 {:.0} µs p99 {:.0} µs (target p99 ≤ 1 ms)",
        p(&raw, 0.5),
        p(&raw, 0.99),
        p(&ours, 0.5),
        p(&ours, 0.99)
    );
    println!(
        "TABLE|cache: cross-host invalidation p99|{:.0} µs|NATS one-way p99 {:.0} µs|{:.2}x|≤ 1 ms",
        p(&ours, 0.99),
        p(&raw, 0.99),
        p(&ours, 0.99) / p(&raw, 0.99)
    );
}

fn main() {
    eviction_policy();
    l1_hit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    guest_hit(&rt);
    codecs();
    rt.block_on(async {
        let redis = RedisServer::start();
        l2_hit(&redis).await;
        let nats = NatsServer::start();
        invalidation_delay(&nats).await;
    });
}
