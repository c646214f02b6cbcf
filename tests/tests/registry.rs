//! Components through a real OCI registry (the CNCF distribution server on
//! loopback): pushed with `weir push` and with ORAS, run from `oci://`
//! references by digest, started from the store when the registry is
//! gone, refused with their reason when a blob, a layer or a signature is
//! wrong; signatures made with wasmsign2 (the format's own library) and
//! with an OpenSSH key from `ssh-keygen`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use weir::Host;
use weir::registry::{Registry, Store};
use weir_tests::process::weir_command;
use weir_tests::servers::RegistryServer;
use weir_tests::{Collector, feed, reference, root, sample_messages, sample_trades, tempdir, wasm};

/// Runs the `weir` binary; its exit status, stdout and stderr.
fn weir(args: &[&str]) -> (bool, String, String) {
    weir_command(args, &[])
}

/// Pushes `file` to `REGISTRY/repo` with `weir push`; the digest reference.
fn push(registry: &RegistryServer, file: &Path, repo: &str) -> String {
    let target = format!("{}/{repo}", registry.host());
    let (ok, out, err) = weir(&[
        "push",
        &file.display().to_string(),
        &target,
        "--insecure",
        &registry.host(),
    ]);
    assert!(ok, "weir push failed: {err}");
    out.trim().to_owned()
}

/// ORAS (oras-py, installed by `just pytools`) on the registry.
fn oras(args: &[&str]) -> String {
    let out = Command::new(root().join("target/py/bin/python"))
        .arg(root().join("tests/tools/oras_interop.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oras {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A manifest in its own directory: `[registry]` on `registry`'s store
/// `store`, then `body`.
fn manifest_in(dir: &Path, registry: &RegistryServer, store: &Path, body: &str) -> PathBuf {
    let path = dir.join("weir.toml");
    let text = format!(
        "[host]\nhttp = \"127.0.0.1:0\"\n[registry]\nstore = \"{}\"\ninsecure = [\"{}\"]\n{body}",
        store.display(),
        registry.host()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn load(path: &Path) -> weir::Manifest {
    weir::Manifest::load(path, &weir::EnvOverrides::none()).unwrap_or_else(|e| panic!("{e}"))
}

/// The demo's sma-crossover, from `wasm`.
fn sma_entry(wasm: &str) -> String {
    format!(
        r#"[components.sma-crossover]
wasm = "{wasm}"
subscribe = [{{ subject = "TRADE.trade.*" }}]
grants = {{ subscribe = ["TRADE.trade.*"], publish = ["signals.*"], cache = "sma" }}
config = {{ fast_window = 5, slow_window = 20 }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_weir_pushes_oras_reads_what_oras_pushes_weir_runs_by_digest() {
    let registry = RegistryServer::start();
    let sma = wasm("sma_crossover");
    let pushed = push(&registry, &sma, "strategies/sma:v1");
    assert!(
        pushed.starts_with(&format!("oci://{}/strategies/sma@sha256:", registry.host())),
        "{pushed}"
    );
    // ORAS reads the CNCF Wasm layout: the config's and the layer's types.
    let out = tempdir("oras-pull");
    let manifest: serde_json::Value = serde_json::from_str(&oras(&[
        "pull",
        &format!("{}/strategies/sma:v1", registry.host()),
        &out.display().to_string(),
    ]))
    .unwrap();
    assert_eq!(manifest["config"]["mediaType"], weir::registry::WASM_CONFIG);
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    assert_eq!(
        std::fs::read(out.join(layer)).unwrap(),
        std::fs::read(&sma).unwrap()
    );
    // ORAS pushes price-alert; the host runs both from the registry.
    oras(&[
        "push",
        &format!("{}/strategies/alert:o1", registry.host()),
        &wasm("price_alert").display().to_string(),
    ]);
    let dir = tempdir("registry-run");
    let store = dir.join("store");
    let body = weir_tests::DEMO
        .replace(
            "{sma}",
            &format!("oci://{}/strategies/sma:v1", registry.host()),
        )
        .replace(
            "{alert}",
            &format!("oci://{}/strategies/alert:o1", registry.host()),
        );
    let host = Host::start(&load(&manifest_in(&dir, &registry, &store, &body)))
        .await
        .unwrap();
    let signals = Collector::start(&*host.bus(), "signals.>").await;
    feed(&host, &sample_trades(), 2000).await;
    assert!(host.wait_idle(Duration::from_secs(60)).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let expected = reference::sma_signals(&sample_messages(2000), 5, 20);
    assert_eq!(reference::published_signals(&signals.messages()), expected);
    // What runs, logs and shows is the digest the tag resolved to.
    let status = host.observed().status();
    let sma_status = status
        .components
        .iter()
        .find(|c| c.name == "sma-crossover")
        .unwrap();
    assert_eq!(sma_status.origin.as_deref(), Some(pushed.as_str()));
    assert_eq!(
        sma_status.sha256.as_deref(),
        Some(weir::digest::sha256_hex(&std::fs::read(&sma).unwrap()).as_str())
    );
    let alert = status
        .components
        .iter()
        .find(|c| c.name == "price-alert")
        .unwrap();
    assert!(
        alert.origin.as_deref().unwrap().starts_with(&format!(
            "oci://{}/strategies/alert@sha256:",
            registry.host()
        )),
        "{alert:?}"
    );
    let http = host.http_addr().unwrap().to_string();
    let (code, body) = weir::observe::http_get(&http, "/api/status").await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains(&pushed), "{body}");
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_starts_from_the_store_with_the_registry_down_and_names_it_without_a_copy() {
    let mut registry = RegistryServer::start();
    let pushed = push(&registry, &wasm("sma_crossover"), "strategies/sma:v1");
    push(
        &registry,
        &wasm("sma_crossover"),
        "strategies/sma:never-pulled",
    );
    let dir = tempdir("registry-offline");
    let store = dir.join("store");
    let tag = format!("oci://{}/strategies/sma:v1", registry.host());
    let path = manifest_in(&dir, &registry, &store, &sma_entry(&tag));
    let host = Host::start(&load(&path)).await.unwrap();
    host.shutdown(Duration::from_secs(5)).await;

    registry.kill();
    // The tag as last resolved, from the store: the same digest runs.
    let host = Host::start(&load(&path)).await.unwrap();
    let status = host.observed().status();
    assert_eq!(
        status.components[0].origin.as_deref(),
        Some(pushed.as_str())
    );
    host.shutdown(Duration::from_secs(5)).await;
    // By digest, too.
    let by_digest = manifest_in(&dir, &registry, &store, &sma_entry(&pushed));
    Host::start(&load(&by_digest))
        .await
        .unwrap()
        .shutdown(Duration::from_secs(5))
        .await;
    // A tag never pulled: one line naming the registry.
    let never = format!("oci://{}/strategies/sma:never-pulled", registry.host());
    let path = manifest_in(&dir, &registry, &store, &sma_entry(&never));
    let (ok, _, err) = weir(&["check", &path.display().to_string()]);
    assert!(!ok);
    let line = err
        .lines()
        .find(|l| l.starts_with("Error:"))
        .unwrap_or_default();
    assert!(
        line.contains(&format!(
            "cannot pull {}: registry {} is unreachable",
            &never[..],
            registry.host()
        )) && line.contains("the store holds no copy"),
        "{err}"
    );
    // Back up: the tag resolves again.
    registry.restart();
    Host::start(&load(&path))
        .await
        .unwrap()
        .shutdown(Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_blob_a_foreign_or_oversized_layer_and_a_moved_tag_are_refused_with_their_reason()
 {
    let registry = RegistryServer::start();
    let client = Registry::new(&[registry.host()]);
    let sma = std::fs::read(wasm("sma_crossover")).unwrap();
    // A blob changed on the registry's disk: its bytes no longer hash to
    // the digest the manifest names.
    push(&registry, &wasm("sma_crossover"), "strategies/sma:v1");
    let layer = weir::registry::sha256_digest(&sma);
    let file = registry.blob_file(&layer);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let store = Store::new(tempdir("registry-tamper"));
    let reference = format!("{}/strategies/sma:v1", registry.host());
    let e = weir::registry::fetch(&client, &store, &reference)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("not to the manifest's {layer}")),
        "{e}"
    );
    assert!(
        store.blob(&layer).is_none(),
        "a tampered blob is never stored"
    );
    // Put right on the registry, it pulls.
    std::fs::write(&file, &sma).unwrap();
    weir::registry::fetch(&client, &store, &reference)
        .await
        .unwrap();
    assert!(store.blob(&layer).is_some());

    // A layer that is not application/wasm (pushed with the OCI client).
    let other = format!("{}/strategies/tarball:v1", registry.host());
    push_layer(
        &other,
        b"not a component".to_vec(),
        "application/vnd.oci.image.layer.v1.tar",
    )
    .await;
    let e = weir::registry::fetch(&client, &store, &other)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains(
            "its layer has media type application/vnd.oci.image.layer.v1.tar, not application/wasm"
        ),
        "{e}"
    );

    // A layer over the 64 MiB a component may have: refused from the
    // manifest, before its download.
    let big = format!("{}/strategies/big:v1", registry.host());
    let huge = vec![0u8; weir::runtime::MAX_COMPONENT_BYTES as usize + 1];
    push_layer(&big, huge, "application/wasm").await;
    let e = weir::registry::fetch(&client, &store, &big)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("its wasm layer is 67108865 bytes, more than the 67108864"),
        "{e}"
    );

    // A tag that moved away from the pinned bytes: the pin refuses it.
    let alert = wasm("price_alert");
    push(&registry, &wasm("sma_crossover"), "strategies/pinned:live");
    let dir = tempdir("registry-pin");
    let pinned = sma_entry(&format!("oci://{}/strategies/pinned:live", registry.host()))
        + &format!("sha256 = \"{}\"\n", weir::digest::sha256_hex(&sma));
    let path = manifest_in(&dir, &registry, &dir.join("store"), &pinned);
    let host = Host::start(&load(&path)).await.unwrap();
    push(&registry, &alert, "strategies/pinned:live");
    let e = host.updater().reload().await.unwrap_err().to_string();
    assert!(
        e.contains("the manifest pins") && e.contains("nothing was updated"),
        "{e}"
    );
    assert_eq!(host.observed().status().components[0].version, 1);
    host.shutdown(Duration::from_secs(5)).await;
}

/// Pushes one layer of `media_type` under a Wasm config with the OCI
/// client itself (plain HTTP): what weir must refuse to pull.
async fn push_layer(target: &str, bytes: Vec<u8>, media_type: &str) {
    // reqwest is built without a TLS provider of its own (as weir's is).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let oci = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let layers = [oci_client::client::ImageLayer::new(
        bytes,
        media_type.into(),
        None,
    )];
    let config = oci_client::client::Config {
        data: b"{}".to_vec().into(),
        media_type: weir::registry::WASM_CONFIG.into(),
        annotations: None,
    };
    let anonymous = oci_client::secrets::RegistryAuth::Anonymous;
    oci.push(&target.parse().unwrap(), &layers, config, &anonymous, None)
        .await
        .unwrap();
}

/// A key pair made by wasmsign2, the public half written to `dir/name.pub`.
fn key_pair(dir: &Path, name: &str) -> (wasmsign2::KeyPair, PathBuf) {
    let pair = wasmsign2::KeyPair::generate();
    let path = dir.join(format!("{name}.pub"));
    pair.pk.to_file(&path).unwrap();
    (pair, path)
}

/// `file` signed by `key`, written to `dir/name.wasm`.
fn signed(dir: &Path, file: &Path, key: &wasmsign2::SecretKey, name: &str) -> PathBuf {
    let module = wasmsign2::Module::deserialize_from_file(file).unwrap();
    let out = dir.join(format!("{name}.wasm"));
    key.sign(module, None)
        .unwrap()
        .serialize_to_file(&out)
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_components_signed_by_a_trusted_unexpired_key_run() {
    let registry = RegistryServer::start();
    let dir = tempdir("registry-signed");
    let sma = wasm("sma_crossover");
    let (team, team_pub) = key_pair(&dir, "team");
    let (other, _) = key_pair(&dir, "other");
    // An OpenSSH key, as operators have them.
    let ssh = dir.join("id_ed25519");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&ssh)
        .status()
        .unwrap();
    assert!(made.success());
    let ssh_secret = wasmsign2::SecretKey::from_openssh_file(&ssh).unwrap();

    let by_team = signed(&dir, &sma, &team.sk, "by-team");
    let by_other = signed(&dir, &sma, &other.sk, "by-other");
    let by_ssh = signed(&dir, &sma, &ssh_secret, "by-ssh");
    // A byte of the signed code changed after signing.
    let mut altered = std::fs::read(&by_team).unwrap();
    let last = altered.len() - 1;
    altered[last] ^= 0x01;
    let altered_path = dir.join("altered.wasm");
    std::fs::write(&altered_path, &altered).unwrap();
    for (file, tag) in [
        (&by_team, "by-team"),
        (&by_other, "by-other"),
        (&by_ssh, "by-ssh"),
        (&altered_path, "altered"),
        (&sma, "unsigned"),
    ] {
        push(&registry, file, &format!("strategies/sma:{tag}"));
    }

    let store = dir.join("store");
    let start = |tag: &str, trust: &str| {
        let entry = sma_entry(&format!("oci://{}/strategies/sma:{tag}", registry.host()));
        let path = manifest_in(&dir, &registry, &store, &format!("{trust}\n{entry}"));
        async move { Host::start(&load(&path)).await }
    };
    let trust = format!(
        "[trust]\nrequire_signature = true\nkeys = [\"{}\", \"{}.pub\"]\n",
        team_pub.display(),
        ssh.display()
    );
    let team_id = weir::signature::key_id(&team.pk);
    let host = start("by-team", &trust).await.unwrap();
    let status = host.observed().status();
    let signer = status.components[0].signed_by.clone().unwrap();
    assert_eq!(signer.key_id, team_id);
    assert_eq!(signer.key, team_pub.display().to_string());
    host.shutdown(Duration::from_secs(5)).await;
    let host = start("by-ssh", &trust).await.unwrap();
    let signer = host.observed().status().components[0]
        .signed_by
        .clone()
        .unwrap();
    assert!(signer.key.ends_with("id_ed25519.pub"), "{signer:?}");
    host.shutdown(Duration::from_secs(5)).await;

    let refused = |e: anyhow::Error| format!("{e:#}");
    let e = refused(start("unsigned", &trust).await.err().unwrap());
    assert!(
        e.contains("refusing to compile it: it is not signed"),
        "{e}"
    );
    for tag in ["by-other", "altered"] {
        let e = refused(start(tag, &trust).await.err().unwrap());
        assert!(
            e.contains("its signature does not verify with any trusted key"),
            "{tag}: {e}"
        );
    }
    let expired = format!(
        "[trust]\nrequire_signature = true\nkeys = [{{ path = \"{}\", expires = \"2020-01-01\" }}]\n",
        team_pub.display()
    );
    let e = refused(start("by-team", &expired).await.err().unwrap());
    assert!(
        e.contains(&format!("key id {team_id}"))
            && e.contains("stopped trusting at 2020-01-01T00:00:00Z"),
        "{e}"
    );
    // Files are checked the same way, and `weir inspect` says who signed.
    let path = manifest_in(
        &dir,
        &registry,
        &store,
        &format!("{trust}\n{}", sma_entry(&sma.display().to_string())),
    );
    let e = refused(Host::start(&load(&path)).await.err().unwrap());
    assert!(e.contains("it is not signed"), "{e}");
    let (ok, out, _) = weir(&[
        "inspect",
        &by_team.display().to_string(),
        "--key",
        &team_pub.display().to_string(),
    ]);
    assert!(ok);
    assert!(
        out.contains(&format!(
            "signed   by {} (key id {team_id})",
            team_pub.display()
        )),
        "{out}"
    );
    let (ok, _, err) = weir(&[
        "inspect",
        &by_other.display().to_string(),
        "--key",
        &team_pub.display().to_string(),
    ]);
    assert!(
        !ok && err.contains("does not verify with any trusted key"),
        "{err}"
    );

    // A hot update to an unsigned version is refused; the signed one runs on.
    let live = |file: &str| {
        let entry = sma_entry(&format!("oci://{}/strategies/sma:live", registry.host()));
        push(&registry, Path::new(file), "strategies/sma:live");
        manifest_in(&dir, &registry, &store, &format!("{trust}\n{entry}"))
    };
    let path = live(&by_team.display().to_string());
    let host = Host::start(&load(&path)).await.unwrap();
    live(&sma.display().to_string());
    let e = host.updater().reload().await.unwrap_err().to_string();
    assert!(
        e.contains("it is not signed") && e.contains("nothing was updated"),
        "{e}"
    );
    let status = host.observed().status();
    assert_eq!(status.components[0].version, 1);
    assert_eq!(
        status.components[0].signed_by.as_ref().unwrap().key_id,
        team_id
    );
    host.shutdown(Duration::from_secs(5)).await;
}

/// `weir:s3cret`, as `htpasswd -B` writes it (bcrypt, cost 10).
const HTPASSWD: &str = "weir:$2b$10$7Pz/eC3evxO0R5N4J5joeuI5e1pDBNKtr.E8oPqnZUYdHOKiVEx1m\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_come_from_the_environment_or_docker_s_config_json() {
    let registry = RegistryServer::with_users(Some(HTPASSWD));
    let host = registry.host();
    let target = format!("{host}/strategies/sma:v1");
    let file = wasm("sma_crossover").display().to_string();
    let push =
        |env: &[(&str, &str)]| weir_command(&["push", &file, &target, "--insecure", &host], env);
    let (ok, _, err) = push(&[]);
    assert!(
        !ok && err.contains(&format!("registry {host} answered")) && err.contains("401"),
        "{err}"
    );
    let (ok, out, err) = push(&[
        ("WEIR_REGISTRY_USERNAME", "weir"),
        ("WEIR_REGISTRY_PASSWORD", "s3cret"),
    ]);
    assert!(ok, "{err}");
    // `docker login` writes base64 of user:password under the registry.
    let docker = tempdir("docker-config");
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "weir:s3cret");
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let store = tempdir("registry-auth").display().to_string();
    let pull = |env: &[(&str, &str)]| {
        weir_command(
            &["pull", &target, "--insecure", &host, "--store", &store],
            env,
        )
    };
    let (ok, _, err) = pull(&[]);
    assert!(!ok && err.contains("Not authorized"), "{err}");
    let (ok, pulled, err) = pull(&[("DOCKER_CONFIG", &docker.display().to_string())]);
    assert!(ok, "{err}");
    assert_eq!(
        pulled.lines().next(),
        out.lines().next(),
        "the digest pushed"
    );
}
