//! Hot update: a new version of a component takes over under continuous
//! load, on core NATS and on a JetStream consumer, with every message
//! handled (by the old version or the new one, never both, never neither),
//! per-subject order kept across the switch, and a refused update leaving
//! the running version untouched.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use weir::Host;
use weir::update::UpdateError;
use weir::{EnvOverrides, Manifest};
use weir_tests::servers::NatsServer;
use weir_tests::{Tags, tempdir, wait_for_drained, wasm};

/// Subjects the load spreads over (one per worker queue and more).
const SUBJECTS: u64 = 6;

/// A manifest file and a component file that can be rewritten in place.
struct Project {
    dir: PathBuf,
    /// `[nats]` and the subscription, as the transport needs.
    transport: String,
    subscription: String,
    /// An OCI registry (`host:port`) the versions are pushed to, one tag
    /// moved from version to version, instead of files.
    registry: Option<String>,
}

impl Project {
    fn new(nats: Option<&str>) -> Project {
        let (transport, subscription) = match nats {
            None => (String::new(), r#"{ subject = "load.>" }"#.to_owned()),
            Some(url) => (
                format!("[nats]\nurl = \"{url}\"\n"),
                r#"{ subject = "load.>", stream = "LOAD", consumer = "tagger" }"#.to_owned(),
            ),
        };
        let p = Project {
            dir: tempdir("hot-update"),
            transport,
            subscription,
            registry: None,
        };
        p.write("v1");
        p
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join("weir.toml")
    }

    /// Writes version `version`: the hostile component (behaviour `tag`)
    /// as its own file, marked with a custom section naming the version
    /// (so each version is a different file with its own sha256, pinned).
    fn write(&self, version: &str) {
        let file = format!("tagger-{version}.wasm");
        let mut bytes = std::fs::read(wasm("hostile")).unwrap();
        bytes.extend(custom_section("weir-test-version", version.as_bytes()));
        std::fs::write(self.dir.join(&file), &bytes).unwrap();
        let sha = weir::digest::sha256_hex(&bytes);
        // From a registry: the tag `live` moves to this version, and the
        // manifest stays the same but for the config (no pin: the tag
        // names the bytes).
        let (wasm, pin, registry) = match &self.registry {
            None => (file, format!("sha256 = \"{sha}\""), String::new()),
            Some(host) => {
                let target = format!("{host}/tagger:live");
                let path = self.dir.join(&file).display().to_string();
                let (ok, _, err) = weir_tests::process::weir_command(
                    &["push", &path, &target, "--insecure", host],
                    &[],
                );
                assert!(ok, "weir push: {err}");
                (
                    format!("oci://{target}"),
                    String::new(),
                    format!("[registry]\nstore = \"store\"\ninsecure = [\"{host}\"]\n"),
                )
            }
        };
        let text = format!(
            r#"[host]
http = "127.0.0.1:0"
{transport}
{registry}
[components.tagger]
wasm = "{wasm}"
{pin}
subscribe = [{subscription}]
grants = {{ subscribe = ["load.>"], publish = ["tag.out"], streams = ["LOAD"] }}
limits = {{ instances = 2 }}
config = {{ behaviour = "tag", version = "{version}" }}
"#,
            transport = self.transport,
            subscription = self.subscription,
        );
        std::fs::write(self.manifest_path(), text).unwrap();
    }

    fn load(&self) -> Manifest {
        Manifest::load(&self.manifest_path(), &EnvOverrides::none()).unwrap()
    }
}

/// The stream the JetStream load goes to.
async fn load_stream(js: &jetstream::Context) {
    js.create_stream(stream::Config {
        name: "LOAD".into(),
        subjects: vec!["load.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
}

/// A component-level custom section (id 0): name, then content.
fn custom_section(name: &str, content: &[u8]) -> Vec<u8> {
    let mut body = leb128(name.len());
    body.extend(name.as_bytes());
    body.extend(content);
    let mut out = vec![0u8];
    out.extend(leb128(body.len()));
    out.extend(body);
    out
}

fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Publishes `load.<seq % SUBJECTS>` with payload `seq`, about 2000 a
/// second, until stopped; returns the publisher and its running count.
fn start_load(
    client: async_nats::Client,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>) {
    let sent = Arc::new(AtomicU64::new(0));
    let count = sent.clone();
    let task = tokio::spawn(async move {
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..20 {
                client
                    .publish(format!("load.{}", seq % SUBJECTS), seq.to_string().into())
                    .await
                    .unwrap();
                seq += 1;
            }
            client.flush().await.unwrap();
            count.store(seq, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (task, sent)
}

/// Swaps v1 for v2 with `POST /api/reload` while the load runs, then
/// checks every sequence came out exactly once, the versions split at one
/// point per subject, and what was published after the switch went to v2.
async fn swap_under_load(server: &NatsServer, project: &Project, host: &Host) {
    let client = server.client().await;
    let tags = Tags::collect(&client).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (publisher, sent) = start_load(client.clone(), stop.clone());
    tags.wait_for(600, "v1 before the update").await;

    project.write("v2");
    let addr = host.http_addr().unwrap().to_string();
    let (code, body) = weir::observe::http_request(&addr, "POST", "/api/reload", b"")
        .await
        .unwrap();
    // Batches before this count were sent before the update answered; the
    // one after it may have been on its way. Later ones came after.
    let after_switch = sent.load(Ordering::SeqCst) + 20;
    assert_eq!(code, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["components"][0]["previous"], 1, "{body}");
    assert_eq!(report["components"][0]["version"], 2, "{body}");

    // v1's last outputs may still be on their way: count v2's own.
    tags.wait_for_version("v2", 600).await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    let total = sent.load(Ordering::SeqCst);
    tags.wait_for(total as usize, "every message").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let got = tags.0.lock().unwrap().clone();
    let times = tags.times();
    let missing: Vec<u64> = (0..total).filter(|s| !times.contains_key(s)).collect();
    let twice: Vec<u64> = times
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert!(twice.is_empty(), "handled twice: {twice:?}");
    let (v1, v2) = (tags.count("v1"), tags.count("v2"));
    assert_eq!(v1 + v2, total as usize);
    assert!(v1 >= 600 && v2 >= 600, "v1 {v1}, v2 {v2}");
    eprintln!(
        "{total} messages: {v1} by v1, {v2} by v2 (published after the switch from {after_switch})"
    );

    // Per subject, in sequence order: v1 then v2, never back.
    let mut by_subject: BTreeMap<u64, Vec<(u64, &str)>> = BTreeMap::new();
    for (v, seq) in &got {
        by_subject
            .entry(seq % SUBJECTS)
            .or_default()
            .push((*seq, v));
    }
    for (subject, mut seen) in by_subject {
        let arrival: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
        assert!(arrival.is_sorted(), "load.{subject} out of order");
        seen.sort();
        let switch = seen.iter().position(|(_, v)| *v == "v2").unwrap();
        assert!(
            seen[switch..].iter().all(|(_, v)| *v == "v2"),
            "load.{subject}: v1 after v2"
        );
    }
    // Whatever was published once the update had answered went to v2.
    let late_v1: Vec<u64> = got
        .iter()
        .filter(|(v, s)| v == "v1" && *s >= after_switch)
        .map(|(_, s)| *s)
        .collect();
    assert!(
        late_v1.is_empty(),
        "v1 handled messages sent after the switch: {late_v1:?}"
    );

    let status = host.observed().status();
    assert_eq!(status.components[0].version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_swapped_under_load_on_core_nats_handles_every_message() {
    let server = NatsServer::start();
    let project = Project::new(Some(&server.url()));
    // A core subscription: the manifest's subscription without a stream.
    let project = Project {
        subscription: r#"{ subject = "load.>" }"#.to_owned(),
        ..project
    };
    project.write("v1");
    let host = Host::start(&project.load()).await.unwrap();
    swap_under_load(&server, &project, &host).await;
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_swapped_under_load_on_jetstream_handles_every_message() {
    let server = NatsServer::start();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    load_stream(&js).await;
    let project = Project::new(Some(&server.url()));
    let host = Host::start(&project.load()).await.unwrap();
    swap_under_load(&server, &project, &host).await;
    wait_for_drained(&js, "LOAD", "tagger", Duration::from_secs(10)).await;
    host.shutdown(Duration::from_secs(5)).await;
}

/// The same from a registry: `POST /api/reload` resolves the tag again,
/// finds it moved to v2, and v2 takes over with nothing lost; what runs
/// is shown by its digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_swapped_under_load_by_a_moved_registry_tag_handles_every_message() {
    let registry = weir_tests::servers::RegistryServer::start();
    let server = NatsServer::start();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    load_stream(&js).await;
    let project = Project {
        registry: Some(registry.host()),
        ..Project::new(Some(&server.url()))
    };
    project.write("v1");
    let host = Host::start(&project.load()).await.unwrap();
    let v1 = host.observed().status().components[0]
        .origin
        .clone()
        .unwrap();
    swap_under_load(&server, &project, &host).await;
    wait_for_drained(&js, "LOAD", "tagger", Duration::from_secs(10)).await;
    let v2 = host.observed().status().components[0]
        .origin
        .clone()
        .unwrap();
    let prefix = format!("oci://{}/tagger@sha256:", registry.host());
    assert!(
        v1.starts_with(&prefix) && v2.starts_with(&prefix) && v1 != v2,
        "{v1} → {v2}"
    );
    host.shutdown(Duration::from_secs(5)).await;
}

/// Sends one message on the embedded bus and returns what came out.
async fn one(host: &Host, tags: &weir_tests::Collector, payload: &str) -> String {
    let before = tags.messages().len();
    host.bus()
        .publish(weir::bus::BusMessage::new("load.a", payload.to_owned()))
        .await
        .unwrap();
    let got = tags.wait_for(before + 1, Duration::from_secs(10)).await;
    String::from_utf8(got[before].payload.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_update_leaves_the_running_version_and_a_good_one_applies_its_limits() {
    let project = Project::new(None);
    let host = Host::start(&project.load()).await.unwrap();
    let tags = weir_tests::Collector::start(&*host.bus(), "tag.out").await;
    let dead = weir_tests::Collector::start(&*host.bus(), "dlq.>").await;
    let updater = host.updater();
    assert_eq!(one(&host, &tags, "1").await, "v1|1");

    // A pin the file does not match.
    project.write("v2");
    let text = std::fs::read_to_string(project.manifest_path()).unwrap();
    let pinned = text.lines().find(|l| l.starts_with("sha256")).unwrap();
    std::fs::write(
        project.manifest_path(),
        text.replace(pinned, &format!("sha256 = \"{}\"", "0".repeat(64))),
    )
    .unwrap();
    let e = updater.reload().await.unwrap_err();
    assert!(matches!(e, UpdateError::Load(_)), "{e}");
    assert!(
        e.to_string().contains("sha256") && e.to_string().contains("nothing was updated"),
        "{e}"
    );

    // Not a component at all.
    project.write("v2");
    let text = std::fs::read_to_string(project.manifest_path()).unwrap();
    std::fs::write(project.dir.join("junk.wasm"), b"\0asm junk").unwrap();
    let junk = text
        .lines()
        .filter(|l| !l.starts_with("sha256"))
        .map(|l| {
            if l.starts_with("wasm =") {
                "wasm = \"junk.wasm\""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(project.manifest_path(), junk).unwrap();
    let e = updater.reload().await.unwrap_err();
    assert!(e.to_string().contains("not a usable weir component"), "{e}");

    // A changed subscription needs a restart; a broken manifest is refused.
    project.write("v2");
    let text = std::fs::read_to_string(project.manifest_path()).unwrap();
    let moved = text
        .replace(r#"subject = "load.>""#, r#"subject = "other.>""#)
        .replace(
            r#"subscribe = ["load.>"]"#,
            r#"subscribe = ["load.>", "other.>"]"#,
        );
    std::fs::write(project.manifest_path(), moved).unwrap();
    let e = updater.reload().await.unwrap_err();
    assert!(
        e.to_string().contains("its subscriptions changed") && e.to_string().contains("restart"),
        "{e}"
    );
    std::fs::write(project.manifest_path(), "[components.tagger\n").unwrap();
    assert!(matches!(
        updater.reload().await,
        Err(UpdateError::Manifest(_))
    ));

    // Every refusal left v1 running.
    assert_eq!(one(&host, &tags, "2").await, "v1|2");
    assert_eq!(host.observed().status().components[0].version, 1);

    // A good update: new config and a smaller payload limit, in force at once.
    project.write("v2");
    let text = std::fs::read_to_string(project.manifest_path()).unwrap();
    let smaller = text.replace(
        "limits = { instances = 2 }",
        "limits = { instances = 2, max_payload_bytes = 8 }",
    );
    std::fs::write(project.manifest_path(), smaller).unwrap();
    let report = updater.reload().await.unwrap();
    assert_eq!(report.updated().count(), 1);
    assert_eq!(one(&host, &tags, "3").await, "v2|3");
    host.bus()
        .publish(weir::bus::BusMessage::new("load.a", "123456789"))
        .await
        .unwrap();
    let letters = dead.wait_for(1, Duration::from_secs(10)).await;
    let letter = String::from_utf8_lossy(&letters[0].payload);
    assert!(letter.contains("max_payload_bytes"), "{letter}");

    // Nothing changed: nothing is recompiled and the version stays.
    let report = updater.reload().await.unwrap();
    assert_eq!(report.updated().count(), 0);
    assert_eq!(report.components[0].version, 2);

    // Grants too: without the publish grant, v3's output is denied.
    project.write("v3");
    let text = std::fs::read_to_string(project.manifest_path()).unwrap();
    std::fs::write(
        project.manifest_path(),
        text.replace(r#"publish = ["tag.out"], "#, ""),
    )
    .unwrap();
    updater.reload().await.unwrap();
    host.bus()
        .publish(weir::bus::BusMessage::new("load.a", "4"))
        .await
        .unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while host.component_stats()[0].1.denied == 0 {
        assert!(tokio::time::Instant::now() < until, "v3 was not denied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(host.observed().status().components[0].version, 3);
    host.shutdown(Duration::from_secs(5)).await;
}
