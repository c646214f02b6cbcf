//! A message's reply-to is chosen by whoever published the message, so a
//! reply must not let a component write where that publisher could not:
//! replies go to inboxes (or granted subjects), never into `$KV`, the
//! JetStream API, `$SYS` or a stream the component may not publish to.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use weir::Host;
use weir::bus::BusMessage;
use weir_tests::servers::NatsServer;
use weir_tests::{Collector, manifest};

/// An ordinary request answerer (`hostile` in `echo` mode) that may
/// publish on `replies.>` only.
fn echo_component(nats: Option<&str>) -> String {
    let nats = nats.map_or(String::new(), |url| {
        format!("[nats]\nurl = \"{url}\"\ninbox_prefix = \"_R.weir\"\n")
    });
    format!(
        r#"{nats}
[components.echo]
wasm = "{{hostile}}"
subscribe = [{{ subject = "svc.echo" }}]
grants = {{ subscribe = ["svc.echo"], publish = ["replies.>"] }}
config = {{ behaviour = "echo" }}
"#
    )
}

fn denied(host: &Host) -> u64 {
    host.component_stats()[0].1.denied
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_reach_inboxes_and_granted_subjects_only_on_the_embedded_bus() {
    let host = Host::start(&manifest(&echo_component(None))).await.unwrap();
    let bus = host.bus();
    let dlq = Collector::start(&*bus, "dlq.>").await;
    let everything = Collector::start(&*bus, ">").await;

    // A real request: the inbox answer arrives.
    let reply = bus
        .request(BusMessage::new("svc.echo", "ping"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], b"ping");

    // A reply-to the component may publish on anyway is fine.
    let granted = Collector::start(&*bus, "replies.>").await;
    let mut m = BusMessage::new("svc.echo", "to-granted");
    m.reply_to = Some("replies.ok".into());
    bus.publish(m).await.unwrap();
    granted.wait_for(1, Duration::from_secs(5)).await;

    // Chosen reply-tos that are neither an inbox nor granted.
    let hostile = [
        "$JS.API.STREAM.DELETE.TRADE",
        "$KV.secrets.pwned",
        "alerts.triggered",
        "replies.*",
        "_INBOX",
        "_INBOXES.x",
        "a..b",
    ];
    for r in hostile {
        let mut m = BusMessage::new("svc.echo", "evil");
        m.reply_to = Some(r.into());
        bus.publish(m).await.unwrap();
    }
    let letters = dlq.wait_for(hostile.len(), Duration::from_secs(10)).await;
    assert!(host.wait_idle(Duration::from_secs(10)).await);
    for l in &letters {
        let v: serde_json::Value = serde_json::from_slice(&l.payload).unwrap();
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains("Denied") && error.contains("may not reply"),
            "{error}"
        );
    }
    assert_eq!(denied(&host), hostile.len() as u64);
    // Nothing but the requests, the two answers and the dead letters moved.
    let stray: Vec<String> = everything
        .messages()
        .iter()
        .map(|m| m.subject.clone())
        .filter(|s| s != "svc.echo" && !s.starts_with("dlq.") && !s.starts_with("_INBOX."))
        .filter(|s| s != "replies.ok")
        .collect();
    assert!(stray.is_empty(), "replies escaped to {stray:?}");
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chosen_reply_to_writes_nothing_on_a_real_server() {
    let server = NatsServer::start();
    let outside = server.client().await;
    let js = jetstream::new(outside.clone());
    let secrets = js
        .create_key_value(kv::Config {
            bucket: "secrets".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    secrets.put("token", "s3cret".into()).await.unwrap();
    for (name, subject) in [("VICTIM", "victim.>"), ("ORDERS", "orders.>")] {
        weir_tests::create_stream(&js, name, subject).await;
    }
    js.publish("victim.keep", "precious".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let host = Host::start(&manifest(&echo_component(Some(&server.url()))))
        .await
        .unwrap();
    // Watch every place a reply could land, from outside the host.
    let mut watch = futures::stream::select_all([
        outside.subscribe("$KV.>").await.unwrap(),
        outside.subscribe("$JS.API.STREAM.PURGE.>").await.unwrap(),
        outside.subscribe("$JS.API.STREAM.DELETE.>").await.unwrap(),
        outside.subscribe("$SYS.>").await.unwrap(),
        outside.subscribe("orders.>").await.unwrap(),
    ]);
    let mut dlq = outside.subscribe("dlq.>").await.unwrap();
    outside.flush().await.unwrap();

    let chosen = [
        "$KV.secrets.pwned",
        "$KV.secrets.token",
        "$JS.API.STREAM.PURGE.VICTIM",
        "$JS.API.STREAM.DELETE.VICTIM",
        "$SYS.REQ.SERVER.PING",
        "orders.placed",
    ];
    for r in chosen {
        outside
            .publish_with_reply("svc.echo", r, "evil".into())
            .await
            .unwrap();
    }
    outside.flush().await.unwrap();
    for _ in chosen {
        let letter = tokio::time::timeout(Duration::from_secs(10), dlq.next())
            .await
            .expect("a refused reply is dead-lettered")
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&letter.payload).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains("may not reply"),
            "{v}"
        );
    }
    assert_eq!(denied(&host), chosen.len() as u64);

    // The host keeps serving: a real request (the outside client's own
    // inbox) and one from a client with the configured inbox prefix.
    let answer = outside.request("svc.echo", "ping".into()).await.unwrap();
    assert_eq!(&answer.payload[..], b"ping");
    let prefixed = async_nats::ConnectOptions::new()
        .custom_inbox_prefix("_R.weir")
        .connect(server.url())
        .await
        .unwrap();
    let answer = prefixed.request("svc.echo", "pong".into()).await.unwrap();
    assert_eq!(&answer.payload[..], b"pong");

    // Nothing was written anywhere.
    let stray = tokio::time::timeout(Duration::from_millis(500), watch.next()).await;
    assert!(
        stray.is_err(),
        "a reply landed on {:?}",
        stray.ok().flatten().map(|m| m.subject)
    );
    assert_eq!(secrets.get("pwned").await.unwrap(), None);
    assert_eq!(
        secrets.get("token").await.unwrap().as_deref(),
        Some(&b"s3cret"[..])
    );
    let mut victim = js.get_stream("VICTIM").await.unwrap();
    let victim = victim.info().await.unwrap();
    assert_eq!(victim.state.messages, 1, "the stream was purged");
    let mut orders = js.get_stream("ORDERS").await.unwrap();
    assert_eq!(orders.info().await.unwrap().state.messages, 0);
    host.shutdown(Duration::from_secs(5)).await;
}
