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
use weir_tests::servers::{NatsCluster, free_port};
use weir_tests::{Tags, readyz_until, tempdir, wait_for_drained, wasm};

/// Messages each test publishes.
const MESSAGES: u64 = 3000;

/// Creates the R3 stream `LOAD` on `load.>`.
async fn r3_stream(js: &jetstream::Context) {
    r3(js, "LOAD", "load.>", None).await;
}

/// Creates an R3 stream on `subject`; with `partitions`, a subject
/// `<prefix>.*` is stored as `<prefix>.<token>.<partition>` (NATS'
/// `partition()` mapping over the last token).
async fn r3(js: &jetstream::Context, name: &str, subject: &str, partitions: Option<u32>) {
    let subject_transform = partitions.map(|n| {
        let prefix = subject.trim_end_matches(".*");
        stream::SubjectTransform {
            source: subject.into(),
            destination: format!("{prefix}.{{{{wildcard(1)}}}}.{{{{partition({n},1)}}}}"),
        }
    });
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        subject_transform,
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
async fn killing_the_stream_leader_node_and_a_hosts_server_loses_nothing() {
    let mut cluster = NatsCluster::start(3).await;
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    r3_stream(&js).await;
    let dir = tempdir("cluster-leader");
    let leader = stream_leader(&js).await;
    // Host a is connected to the leader's node (its only seed URL; it
    // learns the others from the cluster), b and the tag collector to
    // another node (core NATS would drop tags while their node is down).
    let other = (leader + 1) % cluster.nodes.len();
    let tags = Tags::collect(&cluster.nodes[other].client().await).await;
    let a_url = cluster.nodes[leader].url();
    let b_url = cluster.nodes[other].url();
    let a = WeirProcess::start(&write_manifest(&dir, "a", "v1", &a_url));
    let _b = WeirProcess::start(&write_manifest(&dir, "b", "v1", &b_url));

    let sent = Arc::new(AtomicU64::new(0));
    let publisher = publish_all(client.clone(), sent.clone());
    sent_at_least(&sent, MESSAGES / 3).await;
    eprintln!("killing n{leader}: the stream leader, and host a's server");
    cluster.nodes[leader].kill();
    let killed_at = sent.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.nodes[leader].restart();
    publisher.await.unwrap();
    every_sequence_handled(&tags, &js).await;
    // a reconnected to another node and went on pulling.
    let after = tags
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(v, seq)| v == "a/v1" && *seq > killed_at + 100)
        .count();
    assert!(after > 0, "a handled nothing after its server died");
    drop(a);
}

/// Three hosts started at once, as a deploy starts them, before their
/// shared R3 durable consumer exists: whichever pulls before the
/// consumer's group has a leader is refused. On an idle stream, each must
/// turn ready by itself, and again after the consumer's leader steps down
/// (its waiting pulls are cut off), with no message published at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_started_together_turn_ready_on_an_idle_stream_and_after_a_leader_change() {
    let cluster = NatsCluster::start(3).await;
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    r3_stream(&js).await;
    let dir = tempdir("cluster-ready");
    let urls = cluster.urls();
    let hosts: Vec<(WeirProcess, String)> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            let path = write_manifest(&dir, name, "v1", &urls);
            let addr = serve_http(&path, "");
            (WeirProcess::spawn(&path), addr)
        })
        .collect();
    let all_ready = |when: &'static str| {
        let hosts = &hosts;
        async move {
            for (host, addr) in hosts {
                host.wait_for_log("weir host started", Duration::from_secs(60));
                let (code, body) =
                    readyz_until(addr, 200, Duration::from_secs(20), || async {}).await;
                assert_eq!(
                    (code, body.as_str()),
                    (200, "ready\n"),
                    "{when}: a host stayed not ready on an idle stream:\n{}",
                    host.output()
                );
            }
        }
    };
    all_ready("after starting together").await;

    let info = js
        .get_stream("LOAD")
        .await
        .unwrap()
        .consumer_info("tagger")
        .await
        .unwrap();
    let leader = info.cluster.and_then(|c| c.leader).expect("a leader");
    let answer = client
        .request("$JS.API.CONSUMER.LEADER.STEPDOWN.LOAD.tagger", "".into())
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer.payload).into_owned();
    assert!(answer.contains("\"success\":true"), "{answer}");
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stream = js.get_stream("LOAD").await.unwrap();
        let now = stream.consumer_info("tagger").await.ok();
        let moved = now
            .and_then(|i| i.cluster.clone())
            .and_then(|c| c.leader)
            .is_some_and(|l| l != leader);
        if moved {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the leader never moved"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Pulls waiting at the old leader are cut off; give them time to fail.
    tokio::time::sleep(Duration::from_secs(2)).await;
    all_ready("after the consumer's leader changed").await;
    for (host, _) in &hosts {
        let refused = host.output().matches("pull consumer:").count();
        eprintln!("a host logged {refused} refused pulls");
    }
    let stored = weir_tests::stream_messages(&js, "LOAD").await;
    assert_eq!(stored, 0, "the stream stayed idle");
}

/// Steps the `tagger` consumer's leader down until it is not on `node`.
async fn leader_away_from(js: &jetstream::Context, client: &async_nats::Client, node: &str) {
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let leader = js
            .get_stream("LOAD")
            .await
            .unwrap()
            .consumer_info("tagger")
            .await
            .ok()
            .and_then(|i| i.cluster.clone())
            .and_then(|c| c.leader);
        match leader.as_deref() {
            Some(l) if l != node => return,
            Some(_) => {
                let _ = client
                    .request("$JS.API.CONSUMER.LEADER.STEPDOWN.LOAD.tagger", "".into())
                    .await;
            }
            None => {}
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the consumer's leader stayed on {node}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node index (`n<i>`) of stream LOAD's leader.
async fn stream_leader(js: &jetstream::Context) -> usize {
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
    leader.trim_start_matches('n').parse().unwrap()
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
    r3(&js, "PART", "part.*", Some(2)).await;
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

/// The demo strategy on the cluster, the way the README says to run it
/// with order: the TRADE stream partitions its symbols, each host owns one
/// partition's durable consumer, state lives in a shared Redis (L2) and
/// signals go to an R3 SIGNALS stream with `Nats-Msg-Id`. One host is
/// SIGKILLed with trades in hand and a replacement with the same manifest
/// takes its partition once the server's ack wait has passed. The signals
/// stored are exactly the native oracle's: every trade applied once (a
/// redelivered one is skipped by trade id, a re-published signal dropped
/// by its id), none lost, none applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_strategy_on_partitions_survives_a_sigkill_with_exact_signals() {
    demo_strategy_with_exact_signals(Fault::Kill).await;
}

/// The same with the node under one host cut from the rest of the cluster
/// for a while (nftables on its routes, nothing killed): the trades that
/// host pulled before the cut and could not acknowledge come back, and
/// none is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_strategy_on_partitions_survives_its_node_cut_off_with_exact_signals() {
    demo_strategy_with_exact_signals(Fault::CutNode).await;
}

/// What befalls the host of partition 1 a third of the way through.
enum Fault {
    /// SIGKILLed, replaced by a fresh host after the ack wait.
    Kill,
    /// Its node (its only seed, node 0) cut from the cluster until half way.
    CutNode,
}

async fn demo_strategy_with_exact_signals(fault: Fault) {
    let cluster = NatsCluster::start(3).await;
    let redis = weir_tests::servers::RedisServer::start();
    // The trades go in through node 1, away from the node that may be cut.
    let client = cluster.nodes[1].client().await;
    let js = jetstream::new(client.clone());
    r3(&js, "TRADE", "TRADE.trade.*", Some(2)).await;
    r3(&js, "SIGNALS", "signals.>", None).await;
    let dir = tempdir("cluster-sma");
    let write = |name: &str, partition: usize, urls: &str| {
        let path = dir.join(format!("{name}.toml"));
        let text = format!(
            r#"[host]
id = "{name}"
[nats]
url = "{urls}"
reconnect_wait_ms = 200
[redis]
url = "{redis}"
[components.sma-crossover]
wasm = "{wasm}"
subscribe = [{{ subject = "TRADE.trade.*.{partition}", stream = "TRADE", consumer = "sma-p{partition}", ack_wait_ms = 2000 }}]
grants = {{ subscribe = ["TRADE.trade.>"], publish = ["signals.*"], streams = ["TRADE", "SIGNALS"], cache = "sma" }}
# The signals go to an R3 stream whose leader may sit on the node that is
# cut: a publish then waits for a new leader (seconds), so each attempt may
# wait a second and the retries outlast an election.
limits = {{ instances = 2, max_deliver = 30, time_per_event_ms = 1000 }}
config = {{ fast_window = 5, slow_window = 20, publish = "jetstream" }}
"#,
            redis = redis.url(),
            wasm = wasm("sma_crossover").display(),
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let p0 = write("p0", 0, &cluster.urls());
    let p1_urls = match fault {
        Fault::Kill => cluster.urls(),
        Fault::CutNode => cluster.nodes[0].url(),
    };
    let p1 = write("p1", 1, &p1_urls);
    let p1_again = write("p1-replacement", 1, &cluster.urls());
    let a = WeirProcess::start(&p0);
    let mut b = WeirProcess::start(&p1);
    let mut cut = None;
    let mut cut_at = None;

    let trades = weir_tests::sample_trade_messages(3000);
    let expected = weir_tests::reference::sma_signals(&trades, 5, 20);
    let expected_count: usize = expected.values().map(Vec::len).sum();
    let mut replacement = None;
    for (i, t) in trades.iter().enumerate() {
        if i == trades.len() / 3 {
            match fault {
                // Killed with trades in hand: they stay unacknowledged.
                Fault::Kill => b.kill(),
                // Cut off with trades in hand: their acks cannot arrive.
                Fault::CutNode => {
                    cut_at = Some(tokio::time::Instant::now());
                    cut = Some(weir_tests::partition::Partition::routes(
                        cluster.nodes[0].pid().unwrap(),
                        cluster.routes[0],
                        &cluster.routes[1..],
                    ))
                }
            }
        }
        if i == trades.len() / 2 {
            match fault {
                // The replacement binds the same consumer after the ack
                // wait, so the server hands it the dead host's trades first,
                // in order.
                Fault::Kill => {
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    replacement = Some(WeirProcess::start(&p1_again));
                }
                // Cut for at least 8 s: longer than a pull's answer may take.
                Fault::CutNode => {
                    let since =
                        cut_at.map_or(Duration::ZERO, |t: tokio::time::Instant| t.elapsed());
                    tokio::time::sleep(Duration::from_secs(8).saturating_sub(since)).await;
                    drop(cut.take());
                }
            }
        }
        // Retried until stored (a leader may be moving): the message id
        // keeps a retried trade stored once.
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let pm = jetstream::message::PublishMessage::build()
                .payload(t.payload.clone())
                .message_id(format!("trade-{i}"));
            if let Ok(ack) = js.send_publish(t.subject.clone(), pm).await
                && ack.await.is_ok()
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "trade {i} never stored"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for partition in 0..2 {
        wait_for_drained(
            &js,
            "TRADE",
            &format!("sma-p{partition}"),
            Duration::from_secs(60),
        )
        .await;
    }
    weir_tests::stream_reaches(
        &js,
        "SIGNALS",
        expected_count as u64,
        Duration::from_secs(30),
    )
    .await;
    // Give redeliveries a moment to (not) add anything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut signals = js.get_stream("SIGNALS").await.unwrap();
    let last = signals.info().await.unwrap().state.last_sequence;
    let mut stored = Vec::new();
    for seq in 1..=last {
        let m = signals.get_raw_message(seq).await.unwrap();
        stored.push(weir::bus::BusMessage::new(m.subject.to_string(), m.payload));
    }
    let got = weir_tests::reference::published_signals(&stored);
    if stored.len() != expected_count || got != expected {
        // What the hosts said, to tell a lost trade from a late one.
        eprintln!("p0's log:\n{}\np1's log:\n{}", a.output(), b.output());
        if let Some(r) = &replacement {
            eprintln!("p1-replacement's log:\n{}", r.output());
        }
        let missing: Vec<String> = expected
            .iter()
            .flat_map(|(symbol, want)| {
                let have = got.get(symbol).cloned().unwrap_or_default();
                want.iter()
                    .filter(move |s| !have.contains(s))
                    .map(move |s| format!("{symbol}: {s:?}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        eprintln!("signals missing: {missing:#?}");
    }
    assert_eq!(stored.len(), expected_count, "duplicate or missing signals");
    assert_eq!(got, expected);
    if let Fault::CutNode = fault {
        let log = b.output();
        eprintln!(
            "p1 while cut: {} pull errors logged",
            log.matches("pull consumer:").count()
        );
    }
    // Both partitions carried trades.
    for partition in 0..2 {
        let mut c = js
            .get_stream("TRADE")
            .await
            .unwrap()
            .get_consumer::<jetstream::consumer::pull::Config>(&format!("sma-p{partition}"))
            .await
            .unwrap();
        let acked = c.info().await.unwrap().ack_floor.consumer_sequence;
        assert!(acked > 0, "partition {partition} had no trades");
    }
    drop(replacement);
}

/// Core subjects share work the NATS way across hosts on different nodes:
/// a queue group delivers each message to one member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_group_across_hosts_on_different_nodes_handles_each_message_once() {
    let cluster = NatsCluster::start(3).await;
    let publisher = cluster.nodes[2].client().await;
    let tags = Tags::collect(&publisher).await;
    let dir = tempdir("cluster-queue");
    let hosts: Vec<WeirProcess> = (0..2)
        .map(|i| {
            let sub = r#"{ subject = "load.*", queue_group = "taggers" }"#;
            let url = cluster.nodes[i].url();
            WeirProcess::start(&write_manifest_with(
                &dir,
                &format!("q{i}"),
                "v1",
                &url,
                sub,
            ))
        })
        .collect();
    // Both hosts' interest has crossed the routes to the publisher's node.
    tokio::time::sleep(Duration::from_millis(500)).await;
    const CORE: u64 = 1000;
    for seq in 0..CORE {
        publisher
            .publish(format!("load.{}", seq % 8), seq.to_string().into())
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    tags.wait_for(CORE as usize, "queue group").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let times = tags.times();
    assert_eq!(times.len() as u64, CORE, "every message handled");
    assert!(times.values().all(|n| *n == 1), "a message handled twice");
    for i in 0..2 {
        assert!(tags.count(&format!("q{i}/v1")) > 0, "q{i} handled nothing");
    }
    drop(hosts);
}

/// Gives the host of the manifest at `path` an HTTP address (a free port)
/// and `extra` lines in its `[nats]` table; the address.
fn serve_http(path: &std::path::Path, extra_nats: &str) -> String {
    let addr = format!("127.0.0.1:{}", free_port());
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replacen("[host]\n", &format!("[host]\nhttp = \"{addr}\"\n"), 1)
        .replacen("[nats]\n", &format!("[nats]\n{extra_nats}"), 1);
    std::fs::write(path, text).unwrap();
    addr
}

/// `/readyz` of the host at `addr`, every 50 ms for `span`: how often each
/// code came, and the first answer that was not 200 with when it came.
/// Every 503 must say it is NATS or the pull from stream LOAD.
async fn readiness_during(
    addr: &str,
    span: Duration,
) -> (
    std::collections::BTreeMap<u16, usize>,
    Option<(Duration, String)>,
) {
    let mut answers = std::collections::BTreeMap::<u16, usize>::new();
    let mut first = None;
    let start = tokio::time::Instant::now();
    while start.elapsed() < span {
        let (code, body) = weir::observe::http_get(addr, "/readyz").await.unwrap();
        if code != 200 {
            assert!(
                body.contains("NATS is") || body.contains("cannot pull from stream LOAD"),
                "{body}"
            );
            first.get_or_insert_with(|| (start.elapsed(), body));
        }
        *answers.entry(code).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (answers, first)
}

/// The nodes of the cluster that list a client connection named `name`
/// (each node's `/connz`; a node cut from its clients still lists them
/// until its own pings time out).
async fn nodes_of(cluster: &NatsCluster, name: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let Some(monitor) = node.monitor else {
            continue;
        };
        let addr = format!("127.0.0.1:{monitor}");
        let Ok((200, body)) = weir::observe::http_get(&addr, "/connz").await else {
            continue;
        };
        if body.contains(&format!("\"name\": \"{name}\""))
            || body.contains(&format!("\"name\":\"{name}\""))
        {
            out.push(i);
        }
    }
    out
}

/// A host cut from the NATS node it is connected to, the node and the host
/// both running (a partition: packets dropped, nothing killed), while
/// trades flow: the host notices within its ping interval, fails over to
/// another seed, and every sequence is handled at least once; its
/// readiness says why while it is cut, and is back after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_from_its_node_fails_over_to_another_seed_and_loses_nothing() {
    let cluster = NatsCluster::start(3).await;
    let dir = tempdir("cluster-cut-host");
    // The test's own clients are on node 2; the host's seeds are 0 and 1.
    let observer = cluster.nodes[2].client().await;
    let js = jetstream::new(observer.clone());
    r3_stream(&js).await;
    let tags = Tags::collect(&observer).await;
    let seeds = format!("{},{}", cluster.nodes[0].url(), cluster.nodes[1].url());
    let path = write_manifest(&dir, "a", "v1", &seeds);
    let addr = serve_http(&path, "ping_interval_secs = 1\n");
    let host = WeirProcess::start(&path);
    let on = nodes_of(&cluster, "weir a").await;
    assert!(on.len() == 1 && on[0] < 2, "connected to one seed: {on:?}");
    let node = on[0];

    let sent = Arc::new(AtomicU64::new(0));
    let publisher = publish_all(observer.clone(), sent.clone());
    sent_at_least(&sent, MESSAGES / 3).await;
    eprintln!("cutting the host from n{node}");
    let cut = weir_tests::partition::Partition::port(cluster.nodes[node].port);
    let cut_at = sent.load(Ordering::SeqCst);
    let (answers, _) = readiness_during(&addr, Duration::from_secs(6)).await;
    // Failed over (within its ping interval and connect timeout; longer
    // on a loaded machine): another node lists it.
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    let on = loop {
        let on = nodes_of(&cluster, "weir a").await;
        if on.iter().any(|n| *n != node) {
            break on;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the host did not fail over: listed on {on:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("readiness while cut: {answers:?}; the host is listed on {on:?}");
    cut.heal();
    publisher.await.unwrap();
    every_sequence_handled(&tags, &js).await;
    let after = tags
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, seq)| *seq > cut_at + 100)
        .count();
    assert!(after > 0, "nothing handled after the cut");
    let (code, body) = readyz_until(&addr, 200, Duration::from_secs(20), || async {}).await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    drop(host);
}

/// One NATS node cut from the other two (its route traffic dropped both
/// ways, nothing killed) while a host is connected to it and trades flow,
/// then healed: the host's pulls fail while its node is in the minority
/// and readiness says so, nothing is lost, and after the heal the host is
/// ready and pulling again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_from_the_cluster_under_a_host_loses_nothing_and_heals() {
    let cluster = NatsCluster::start(3).await;
    let dir = tempdir("cluster-cut-node");
    // The host has node 0 as its only seed; the test's clients use node 1.
    let observer = cluster.nodes[1].client().await;
    let js = jetstream::new(observer.clone());
    r3_stream(&js).await;
    let tags = Tags::collect(&observer).await;
    let path = write_manifest(&dir, "a", "v1", &cluster.nodes[0].url());
    let addr = serve_http(&path, "");
    let host = WeirProcess::start(&path);
    assert_eq!(nodes_of(&cluster, "weir a").await, vec![0]);
    // The consumer's leader elsewhere: a leader on the cut node would
    // go on answering its pulls (with nothing new) until it notices it
    // lost its quorum.
    leader_away_from(&js, &observer, "n0").await;

    let sent = Arc::new(AtomicU64::new(0));
    let publisher = publish_all(observer.clone(), sent.clone());
    sent_at_least(&sent, MESSAGES / 3).await;
    eprintln!("cutting n0 from n1 and n2");
    let cut = weir_tests::partition::Partition::routes(
        cluster.nodes[0].pid().unwrap(),
        cluster.routes[0],
        &cluster.routes[1..],
    );
    let cut_at = sent.load(Ordering::SeqCst);
    let (answers, first_503) = readiness_during(&addr, Duration::from_secs(20)).await;
    eprintln!("first not ready at {first_503:?}");
    let published_during = sent.load(Ordering::SeqCst) - cut_at;
    eprintln!("readiness while n0 was cut: {answers:?}; {published_during} published meanwhile");
    assert!(published_during > 0, "the majority kept storing");
    assert!(
        answers.contains_key(&503),
        "readiness never said the host cannot pull"
    );
    cut.heal();
    publisher.await.unwrap();
    every_sequence_handled(&tags, &js).await;
    let (code, body) = readyz_until(&addr, 200, Duration::from_secs(30), || async {}).await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    drop(host);
}
