//! Dependencies' health is not learned from traffic alone: an idle host
//! notices Redis going away and coming back by itself, readiness follows,
//! and the first write after recovery reaches Redis for the other hosts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::time::{Duration, Instant};

use bytes::Bytes;
use weir::Host;
use weir_tests::servers::RedisServer;
use weir_tests::{manifest, ok_component, readyz_until};

fn idle_host(redis: &RedisServer) -> String {
    format!(
        "[host]\nhttp = \"127.0.0.1:0\"\n\n[redis]\nurl = \"{}\"\n{}",
        redis.url(),
        ok_component("idle", "never.used")
    )
}

/// Polls readiness with no traffic at all in between.
async fn ready_code(host: &Host, code: u16, within: Duration) -> (u16, String) {
    let addr = host.http_addr().unwrap().to_string();
    readyz_until(&addr, code, within, || async {}).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_host_follows_redis_down_and_back_and_writes_reach_it_again() {
    let mut redis = RedisServer::start();
    let a = Host::start(&manifest(&idle_host(&redis))).await.unwrap();
    let b = Host::start(&manifest(&idle_host(&redis))).await.unwrap();
    for h in [&a, &b] {
        assert_eq!(ready_code(h, 200, Duration::from_secs(10)).await.0, 200);
    }

    redis.kill();
    for h in [&a, &b] {
        let (code, body) = ready_code(h, 503, Duration::from_secs(15)).await;
        assert_eq!(
            (code, body.as_str()),
            (503, "not ready: Redis is failing (circuit open)\n"),
            "an idle host must notice Redis is gone"
        );
    }
    // Nothing but readiness polls happened: no cache call was made.
    let calls = |h: &Host| {
        h.cache_stats()
            .iter()
            .map(|l| l.hits + l.misses + l.sets)
            .sum::<u64>()
    };
    assert_eq!((calls(&a), calls(&b)), (0, 0));

    redis.restart();
    let back = Instant::now();
    for h in [&a, &b] {
        let (code, body) = ready_code(h, 200, Duration::from_secs(10)).await;
        assert_eq!(
            (code, body.as_str()),
            (200, "ready\n"),
            "readiness recovers without traffic"
        );
    }
    println!("ready again {:?} after Redis restarted", back.elapsed());
    assert_eq!((calls(&a), calls(&b)), (0, 0), "no traffic was needed");

    // The first write after recovery is in Redis: the other host reads it.
    let value = Bytes::from_static(b"written after recovery");
    a.cache()
        .unwrap()
        .set("idle:after", value.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        b.cache().unwrap().get("idle:after").await.unwrap(),
        Some(value)
    );
    let l2 = |h: &Host| {
        h.cache_stats()
            .into_iter()
            .find(|l| l.layer == weir::cache::Layer::L2)
            .unwrap()
    };
    assert_eq!((l2(&a).sets, l2(&b).hits), (1, 1));
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
}
