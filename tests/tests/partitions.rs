//! Partitions on loopback (nftables drops, every process running): a host
//! cut from Redis while the other host and the L3 messages carry on.
//! (The NATS partitions run on the cluster harness, in `cluster.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weir::bus::{Bus, NatsBus};
use weir::cache::codec::{Codec, Codecs};
use weir::cache::{
    CacheStore, Coherence, LayeredCache, LayeredConfig, MemoryStore, MemoryStoreConfig, RedisStore,
    l3,
};
use weir::manifest::NatsSettings;
use weir_tests::partition::Partition;
use weir_tests::root;
use weir_tests::servers::{NatsServer, RedisServer};

const MIN: Duration = Duration::from_secs(60);

/// A host's cache: L1, Redis at `redis_url` (writes Redis does not take
/// stay in L1), L3 over NATS as host `name` (until the returned sender is
/// dropped).
async fn host_cache(
    name: &str,
    redis_url: &str,
    nats: &NatsServer,
) -> (LayeredCache, RedisStore, weir::shutdown::Trigger) {
    let bus = NatsBus::connect(&NatsSettings::with_url(nats.url()), &root(), name)
        .await
        .unwrap();
    let bus: Arc<dyn Bus> = Arc::new(bus);
    let codecs = Codecs::new(64, Codec::Zstd, 1 << 20).unwrap();
    let l2 = RedisStore::new(redis_url, Arc::new(codecs), Duration::from_millis(250)).unwrap();
    let l3 = Coherence::new(bus.clone(), name.into());
    let config = LayeredConfig {
        l2_required: false,
        l1_max_ttl: Some(Duration::from_secs(30)),
        dictionary_prefixes: Vec::new(),
    };
    let l1 = MemoryStore::new(MemoryStoreConfig::default());
    let cache = LayeredCache::new(l1, Some(l2.clone()), Some(l3.clone()), config);
    let (stop, stop_rx) = weir::shutdown::channel();
    let ups = bus.subscribe(l3::UPDATE, None).await.unwrap();
    let invs = bus.subscribe(l3::INVALIDATE, None).await.unwrap();
    tokio::spawn(l3.run(cache.l1().clone(), ups, invs, None, stop_rx));
    (cache, l2, stop)
}

/// Polls `l2`'s health until it is failing (or not), within `within`.
async fn health_until(l2: &RedisStore, failing: bool, within: Duration) {
    let until = tokio::time::Instant::now() + within;
    while l2.is_failing() != failing {
        assert!(
            tokio::time::Instant::now() < until,
            "Redis failing = {} after {within:?}",
            l2.is_failing()
        );
        l2.check_health().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_from_redis_stays_coherent_through_l3_and_heals() {
    // One Redis on two loopback addresses: host a reaches it through
    // 127.0.0.2 (the one cut), host b through 127.0.0.1.
    let redis = RedisServer::with_args(vec!["--bind".into(), "127.0.0.1 127.0.0.2".into()]);
    let nats = NatsServer::start();
    let (a, a_l2, _a_l3) = host_cache(
        "host-a",
        &format!("redis://127.0.0.2:{}", redis.port),
        &nats,
    )
    .await;
    let (b, b_l2, _b_l3) = host_cache("host-b", &redis.url(), &nats).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.set("ns:k", Bytes::from_static(b"v1"), MIN).await.unwrap();
    assert_eq!(b.get("ns:k").await.unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(a.get("ns:k").await.unwrap().as_deref(), Some(&b"v1"[..]));

    let cut = Partition::address("127.0.0.2", redis.port);
    // a sees Redis fail by itself; b does not.
    health_until(&a_l2, true, Duration::from_secs(10)).await;
    assert!(!b_l2.is_failing());
    // b writes; the L3 message reaches a, which must not serve v1 again.
    b.set("ns:k", Bytes::from_static(b"v2"), MIN).await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = a.get("ns:k").await.ok().flatten();
        if seen.as_deref() != Some(&b"v1"[..]) {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "a kept its stale v1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..20 {
        let seen = a.get("ns:k").await.ok().flatten();
        assert_ne!(seen.as_deref(), Some(&b"v1"[..]), "stale v1 came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // a keeps serving what it writes meanwhile, from L1.
    a.set("ns:own", Bytes::from_static(b"mine"), MIN)
        .await
        .unwrap();
    assert_eq!(
        a.get("ns:own").await.unwrap().as_deref(),
        Some(&b"mine"[..])
    );

    cut.heal();
    health_until(&a_l2, false, Duration::from_secs(15)).await;
    // Healed: a reads b's write from Redis.
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while a.get("ns:k").await.unwrap().as_deref() != Some(&b"v2"[..]) {
        assert!(
            tokio::time::Instant::now() < until,
            "a never read v2 after healing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
