//! Scale-out on a real 3-node NATS cluster with an R3 stream: several
//! `weir run` processes share one durable consumer, and hosts come, go,
//! die (SIGKILL), get updated one by one (SIGHUP), and NATS nodes die under
//! them, while every published sequence is handled at least once.
//! Duplicates (a killed host's unacknowledged messages, redelivered after
//! `ack_wait`) are counted and printed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use weir_tests::process::WeirProcess;
use weir_tests::servers::NatsCluster;
use weir_tests::{Tags, tempdir, wait_for_drained, wasm};

/// Messages each test publishes.
const MESSAGES: u64 = 3000;

/// Creates the R3 stream `LOAD` on `load.>`.
async fn r3_stream(js: &jetstream::Context) {
    js.create_stream(stream::Config {
        name: "LOAD".into(),
        subjects: vec!["load.>".into()],
        storage: stream::StorageType::File,
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Writes host `name`'s manifest: the hostile component tagging each
/// message with `name/version`, on the shared durable consumer `tagger`
/// (a 2 s ack wait, so a dead host's messages come back soon).
fn write_manifest(dir: &std::path::Path, name: &str, version: &str, urls: &str) -> PathBuf {
    let shared =
        r#"{ subject = "load.>", stream = "LOAD", consumer = "tagger", ack_wait_ms = 2000 }"#;
    write_manifest_with(dir, name, version, urls, shared)
}

/// [`write_manifest`] with a subscription of the test's own.
fn write_manifest_with(
    dir: &std::path::Path,
    name: &str,
    version: &str,
    urls: &str,
    subscription: &str,
) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"[host]
id = "{name}"
[nats]
url = "{urls}"
reconnect_wait_ms = 200
[components.tagger]
wasm = "{wasm}"
subscribe = [{subscription}]
grants = {{ subscribe = ["load.>", "part.>"], publish = ["tag.out"], streams = ["LOAD", "PART"] }}
limits = {{ instances = 2 }}
config = {{ behaviour = "tag", version = "{name}/{version}" }}
"#,
        wasm = wasm("hostile").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Publishes `load.<seq % 8>` = `seq` for `0..MESSAGES` through JetStream,
/// each with a message id (so a publish retried across a node failure is
/// stored once), retrying until the cluster takes it; `sent` counts them.
fn publish_all(client: async_nats::Client, sent: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let js = jetstream::new(client);
        for seq in 0..MESSAGES {
            let until = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("load-{seq}").as_str());
                let stored = match js
                    .publish_with_headers(
                        format!("load.{}", seq % 8),
                        headers,
                        seq.to_string().into(),
                    )
                    .await
                {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if stored {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < until,
                    "sequence {seq} never stored"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            sent.store(seq + 1, Ordering::SeqCst);
            if seq % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
}

/// Waits until `sent` reaches `n`.
async fn sent_at_least(sent: &AtomicU64, n: u64) {
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while sent.load(Ordering::SeqCst) < n {
        assert!(tokio::time::Instant::now() < until, "publishing stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every sequence handled at least once, and the consumer drained; prints
/// the duplicates and who handled what.
async fn every_sequence_handled(tags: &Tags, js: &jetstream::Context) {
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let times = tags.times();
        let missing: Vec<u64> = (0..MESSAGES).filter(|s| !times.contains_key(s)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{} sequences never handled, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_drained(js, "LOAD", "tagger", Duration::from_secs(30)).await;
    let times = tags.times();
    let duplicates: usize = times.values().map(|n| n - 1).sum();
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for (v, _) in tags.0.lock().unwrap().iter() {
        *by.entry(v.clone()).or_default() += 1;
    }
    eprintln!("{MESSAGES} sequences handled; {duplicates} duplicates; by host/version: {by:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_join_die_and_leave_on_a_shared_consumer_and_nothing_is_lost() {
    let cluster = NatsCluster::start(3).await;
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    r3_stream(&js).await;
    let tags = Tags::collect(&client).await;
    let dir = tempdir("cluster");
    let urls = cluster.urls();
    let mut a = WeirProcess::start(&write_manifest(&dir, "a", "v1", &urls));
    let mut b = WeirProcess::start(&write_manifest(&dir, "b", "v1", &urls));

    let sent = Arc::new(AtomicU64::new(0));
    let publisher = publish_all(client.clone(), sent.clone());
    sent_at_least(&sent, MESSAGES / 4).await;
    // A host joins under load.
    let c = WeirProcess::start(&write_manifest(&dir, "c", "v1", &urls));
    sent_at_least(&sent, MESSAGES / 2).await;
    // One dies with messages in hand.
    b.kill();
    sent_at_least(&sent, MESSAGES * 3 / 4).await;
    // One leaves gracefully.
    assert!(a.stop(), "a did not stop cleanly:\n{}", a.output());
    publisher.await.unwrap();
    every_sequence_handled(&tags, &js).await;
    for host in ["a", "b", "c"] {
        assert!(
            tags.count(&format!("{host}/v1")) > 0,
            "{host} handled nothing"
        );
    }
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_node_loses_nothing() {
    let mut cluster = NatsCluster::start(3).await;
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    r3_stream(&js).await;
    let tags = Tags::collect(&client).await;
    let dir = tempdir("cluster-leader");
    let urls = cluster.urls();
    let _a = WeirProcess::start(&write_manifest(&dir, "a", "v1", &urls));
    let _b = WeirProcess::start(&write_manifest(&dir, "b", "v1", &urls));

    let sent = Arc::new(AtomicU64::new(0));
    let publisher = publish_all(client.clone(), sent.clone());
    sent_at_least(&sent, MESSAGES / 3).await;
    let info = js
        .get_stream("LOAD")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    let leader = info
        .cluster
        .and_then(|c| c.leader)
        .expect("the stream has a leader");
    let index: usize = leader.trim_start_matches('n').parse().unwrap();
    eprintln!("killing the stream leader {leader}");
    cluster.nodes[index].kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.nodes[index].restart();
    publisher.await.unwrap();
    every_sequence_handled(&tags, &js).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_across_hosts_loses_nothing() {
    let cluster = NatsCluster::start(3).await;
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    r3_stream(&js).await;
    let tags = Tags::collect(&client).await;
    let dir = tempdir("cluster-rolling");
    let urls = cluster.urls();
    let hosts: Vec<(&str, WeirProcess)> = ["a", "b"]
        .into_iter()
        .map(|n| (n, WeirProcess::start(&write_manifest(&dir, n, "v1", &urls))))
        .collect();

    let sent = Arc::new(AtomicU64::new(0));
    let publisher = publish_all(client.clone(), sent.clone());
    for (i, (name, host)) in hosts.iter().enumerate() {
        sent_at_least(&sent, MESSAGES * (i as u64 + 1) / 3).await;
        write_manifest(&dir, name, "v2", &urls);
        host.signal("HUP");
        host.wait_for_log("component updated", Duration::from_secs(30));
    }
    publisher.await.unwrap();
    every_sequence_handled(&tags, &js).await;
    for name in ["a", "b"] {
        assert!(
            tags.count(&format!("{name}/v1")) > 0,
            "{name} v1 handled nothing"
        );
        assert!(
            tags.count(&format!("{name}/v2")) > 0,
            "{name} v2 handled nothing"
        );
    }
}

/// Per-subject order with several hosts: the stream partitions its
/// subjects (`partition()` in a subject transform) and each host owns one
/// partition's durable consumer, so every subject is handled by one host,
/// in stream order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_consumers_keep_per_subject_order_across_hosts() {
    let cluster = NatsCluster::start(3).await;
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "PART".into(),
        subjects: vec!["part.*".into()],
        subject_transform: Some(stream::SubjectTransform {
            source: "part.*".into(),
            destination: "part.{{wildcard(1)}}.{{partition(2,1)}}".into(),
        }),
        storage: stream::StorageType::File,
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let tags = Tags::collect(&client).await;
    let dir = tempdir("cluster-partitions");
    let urls = cluster.urls();
    let hosts: Vec<WeirProcess> = (0..2)
        .map(|p| {
            let sub = format!(
                r#"{{ subject = "part.*.{p}", stream = "PART", consumer = "tagger-p{p}" }}"#
            );
            WeirProcess::start(&write_manifest_with(
                &dir,
                &format!("p{p}"),
                "v1",
                &urls,
                &sub,
            ))
        })
        .collect();
    for seq in 0..MESSAGES {
        js.publish(format!("part.s{}", seq % 8), seq.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    tags.wait_for(MESSAGES as usize, "every message").await;
    let got = tags.0.lock().unwrap().clone();
    let mut owner: std::collections::BTreeMap<u64, &str> = Default::default();
    let mut last: std::collections::BTreeMap<u64, u64> = Default::default();
    for (host, seq) in &got {
        let subject = seq % 8;
        let owned = *owner.entry(subject).or_insert(host);
        assert_eq!(owned, host, "part.s{subject} handled by two hosts");
        if let Some(prev) = last.insert(subject, *seq) {
            assert!(prev < *seq, "part.s{subject}: {seq} after {prev}");
        }
    }
    assert_eq!(got.len() as u64, MESSAGES, "each message once");
    let per_host: std::collections::BTreeSet<&str> = owner.values().copied().collect();
    assert_eq!(
        per_host.len(),
        2,
        "both partitions have subjects: {owner:?}"
    );
    drop(hosts);
}
