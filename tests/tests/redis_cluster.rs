//! L2 on a real Redis Cluster (3 masters, 3 replicas, made with
//! `redis-cli --cluster create` on loopback): values, TTLs, batches,
//! pattern invalidation over every master, counters and shared
//! dictionaries, then a master killed and its replica promoted under a
//! host that keeps serving and turns ready again by itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weir::cache::codec::{Codec, Codecs};
use weir::cache::{
    CacheStore, LayeredCache, LayeredConfig, MemoryStore, MemoryStoreConfig, RedisStore,
};
use weir_tests::readyz_until;
use weir_tests::servers::RedisCluster;

const MIN: Duration = Duration::from_secs(60);

/// A host's cache on the cluster, with its own empty L1.
fn on_cluster(cluster: &RedisCluster, dicts: &[&str]) -> LayeredCache {
    let codecs = Codecs::new(64, Codec::Zstd, 1 << 20).unwrap();
    let l2 = RedisStore::cluster(
        &cluster.urls()[..2],
        Arc::new(codecs),
        Duration::from_millis(500),
    )
    .unwrap();
    let config = LayeredConfig {
        l2_required: true,
        l1_max_ttl: Some(Duration::from_secs(30)),
        dictionary_prefixes: dicts.iter().map(|s| s.to_string()).collect(),
    };
    LayeredCache::new(
        MemoryStore::new(MemoryStoreConfig::default()),
        Some(l2),
        None,
        config,
    )
}

fn value(i: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"symbol":"S{i}","bids":[[{}.5,0.1],[{}.0,1.2]],"asks":[[{}.5,0.3]],"ts":{}}}"#,
        1000 + i,
        999 + i,
        1001 + i,
        1_753_862_400_000u64 + i as u64
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_on_a_redis_cluster_keeps_values_ttls_batches_patterns_counters_and_dictionaries() {
    let cluster = RedisCluster::start(3);
    let writer = on_cluster(&cluster, &["md:ob:"]);
    let keys: Vec<String> = (0..300).map(|i| format!("t:k{i}")).collect();
    let entries: Vec<(String, Bytes)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), value(i)))
        .collect();
    // One batch over keys of every slot range.
    writer.set_many(entries, MIN).await.unwrap();
    for m in cluster.master_nodes(0) {
        let n: u64 = cluster.cli(m, &["dbsize"]).trim().parse().unwrap();
        assert!(n > 50, "master {m} holds {n} of the 300 keys");
    }
    // Another host reads them all from Redis, in one batch.
    let reader = on_cluster(&cluster, &[]);
    let got = reader.get_many(&keys).await.unwrap();
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, v)| v.as_ref() == Some(&value(i)))
    );

    // TTLs are Redis's: gone for a host that never held them in L1.
    writer
        .set(
            "t:short",
            Bytes::from_static(b"brief"),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        on_cluster(&cluster, &[]).get("t:short").await.unwrap(),
        None
    );

    // Pattern invalidation reaches every master: k1, k10-k19, k100-k199.
    assert_eq!(writer.invalidate_pattern("t:k1*").await.unwrap(), 111);
    let fresh = on_cluster(&cluster, &[]);
    let after = fresh.get_many(&keys).await.unwrap();
    for (k, v) in keys.iter().zip(&after) {
        assert_eq!(v.is_none(), k.starts_with("t:k1"), "{k}");
    }

    // The counter script runs on its key's master.
    assert_eq!(writer.increment("t:count", 40, MIN).await.unwrap(), 40);
    assert_eq!(reader.increment("t:count", 2, MIN).await.unwrap(), 42);

    // A dictionary trained on one host decodes on another.
    for i in 0..300 {
        writer
            .set(&format!("md:ob:{i}"), value(i), MIN)
            .await
            .unwrap();
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while cluster
        .cli(0, &["-c", "get", "weir:dict:prefix:md:ob:"])
        .trim()
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < until, "no dictionary shared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.set("md:ob:new", value(5000), MIN).await.unwrap();
    assert_eq!(
        on_cluster(&cluster, &[]).get("md:ob:new").await.unwrap(),
        Some(value(5000))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_by_its_replica_and_the_host_heals() {
    let mut cluster = RedisCluster::start(3);
    let seeds = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let m = weir_tests::manifest(&format!(
        "[host]\nhttp = \"127.0.0.1:0\"\n\n[redis]\ncluster = [{seeds}]\n{}",
        weir_tests::ok_component("writer", "poke.*")
    ));
    let host = weir::Host::start(&m).await.unwrap();
    let addr = host.http_addr().unwrap().to_string();
    assert_eq!(
        readyz_until(&addr, 200, Duration::from_secs(10), || async {})
            .await
            .0,
        200
    );
    let cache = host.cache().unwrap();
    let keys: Vec<String> = (0..100).map(|i| format!("f:k{i}")).collect();
    let entries: Vec<(String, Bytes)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), value(i)))
        .collect();
    cache.set_many(entries.clone(), MIN).await.unwrap();
    // In Redis before the master dies: a write Redis did not confirm in time
    // stays in this host's L1 only (its L2 is not required), so write again
    // until a reader of the cluster sees every key.
    let reader = on_cluster(&cluster, &[]);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while reader
        .get_many(&keys)
        .await
        .map_or(true, |got| got.iter().any(Option::is_none))
    {
        assert!(
            tokio::time::Instant::now() < until,
            "the first 100 keys never all reached Redis"
        );
        cache.set_many(entries.clone(), MIN).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Replicated before the master dies. (`WAIT` from another connection
    // proves nothing: it waits for that connection's own writes, of which
    // redis-cli has none. The replicas' offsets must reach the master's.)
    let masters = cluster.master_nodes(0);
    for &m in &masters {
        wait_replicated(&cluster, m).await;
    }

    let victim = masters[0];
    cluster.nodes[victim].kill();
    let killed = tokio::time::Instant::now();
    // Writes go on through the failover: the host's own connection must
    // reach every slot again by itself (its cache does not require L2, so
    // each round is read back by a host that never held the keys), and
    // what was written before the master died is still there.
    let other = on_cluster_without(&cluster, victim);
    let all: Vec<String> = (0..200).map(|i| format!("f:k{i}")).collect();
    let more: Vec<(String, Bytes)> = (100..200).map(|i| (format!("f:k{i}"), value(i))).collect();
    loop {
        cache.set_many(more.clone(), MIN).await.unwrap();
        let got = other.get_many(&all).await;
        let missing: Vec<&String> = match &got {
            Ok(got) => all
                .iter()
                .zip(got)
                .filter(|(_, v)| v.is_none())
                .map(|(k, _)| k)
                .collect(),
            Err(_) => all.iter().collect(),
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "not in Redis 30 s after the master died ({got:?}): {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "every write in Redis {:?} after the master died",
        killed.elapsed()
    );
    let witness = (0..cluster.nodes.len()).find(|i| *i != victim).unwrap();
    assert!(!cluster.master_nodes(witness).contains(&victim));
    assert_eq!(
        cluster.master_nodes(witness).len(),
        3,
        "a replica took over"
    );
    // Ready again by itself.
    let (code, body) = readyz_until(&addr, 200, Duration::from_secs(30), || async {}).await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    host.shutdown(Duration::from_secs(2)).await;
}

/// A cache on the cluster seeded only with nodes other than `dead`.
fn on_cluster_without(cluster: &RedisCluster, dead: usize) -> LayeredCache {
    let seeds: Vec<String> = cluster
        .urls()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != dead)
        .map(|(_, u)| u)
        .collect();
    let codecs = Codecs::new(64, Codec::Zstd, 1 << 20).unwrap();
    let l2 = RedisStore::cluster(&seeds, Arc::new(codecs), Duration::from_millis(500)).unwrap();
    let config = LayeredConfig {
        l2_required: true,
        l1_max_ttl: Some(Duration::from_secs(30)),
        dictionary_prefixes: Vec::new(),
    };
    LayeredCache::new(
        MemoryStore::new(MemoryStoreConfig::default()),
        Some(l2),
        None,
        config,
    )
}

/// Waits until every replica of master `m` has acknowledged all the master
/// has written so far (its offset in `INFO replication`), within 10 s.
async fn wait_replicated(cluster: &RedisCluster, m: usize) {
    let field = |text: &str, key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    let info = cluster.cli(m, &["info", "replication"]);
    let target = field(&info, "master_repl_offset:").expect("the master's offset");
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = cluster.cli(m, &["info", "replication"]);
        let offsets: Vec<u64> = info
            .lines()
            .filter(|l| l.starts_with("slave"))
            .filter_map(|l| {
                l.split(',')
                    .find_map(|kv| kv.strip_prefix("offset="))
                    .and_then(|v| v.trim().parse().ok())
            })
            .collect();
        if !offsets.is_empty() && offsets.iter().all(|o| *o >= target) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "node {m}'s replicas at {offsets:?}, short of {target} after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
