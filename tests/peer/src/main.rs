//! The wasmCloud echo component (`components/wasmcloud-echo`, written for
//! wasmCloud and run by weir unchanged) handling messages under wasmCloud's
//! own runtime library, `wasmcloud-runtime`: what a wasmCloud host does per
//! message, with the lattice left out on both sides (the reply goes to a
//! counter here, to weir's embedded bus on weir's side).
//!
//! `PEER_ROUNDS` rounds of `PEER_EVENTS` messages (default 7 × 6,000); it
//! prints the median time per message and a `PEER|wasmcloud-runtime|ns`
//! line for `just bench-peer`. Under callgrind, the difference between two
//! round counts divided by the messages is the instructions per message.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark code

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::Span;
use wasmcloud_runtime::capability::wrpc::exports::wasmcloud::messaging0_2_0::handler::Handler as _;
use wasmcloud_runtime::capability::wrpc::wasmcloud::messaging0_2_0::types::BrokerMessage;
use wasmcloud_runtime::capability::{
    CallTargetInterface, config, identity, logging, messaging0_2_0, messaging0_3_0, secrets,
};
use wasmcloud_runtime::component::{
    Bus, Config, Identity, InvocationErrorIntrospect, InvocationErrorKind, Logging, Messaging0_2,
    Messaging0_3, MessagingClient0_3, MessagingHostMessage0_3, ReplacedInstanceTarget, Secrets,
};
use wasmcloud_runtime::{Component, Runtime, async_trait};

/// The host side of every import: the echo uses `wasmcloud:messaging`
/// (`consumer.publish`, counted) and `wasi:logging`; the rest refuses.
#[derive(Clone, Default)]
struct Host {
    /// Replies published by the component.
    published: Arc<AtomicU64>,
}

impl wrpc_transport::Invoke for Host {
    type Context = Option<ReplacedInstanceTarget>;
    type Outgoing = wrpc_transport::frame::Outgoing;
    type Incoming = wrpc_transport::frame::Incoming;

    async fn invoke<P>(
        &self,
        _cx: Self::Context,
        instance: &str,
        func: &str,
        _params: Bytes,
        _paths: impl AsRef<[P]> + Send,
    ) -> anyhow::Result<(Self::Outgoing, Self::Incoming)>
    where
        P: AsRef<[Option<usize>]> + Send + Sync,
    {
        bail!("no lattice in this bench: {instance}.{func}")
    }
}

#[async_trait]
impl Bus for Host {
    async fn set_link_name(
        &self,
        _link_name: String,
        _interfaces: Vec<Arc<CallTargetInterface>>,
    ) -> anyhow::Result<Result<(), String>> {
        Ok(Err("no links in this bench".into()))
    }
}

#[async_trait]
impl Config for Host {
    async fn get(
        &self,
        _key: &str,
    ) -> anyhow::Result<Result<Option<String>, config::store::Error>> {
        Ok(Ok(None))
    }

    async fn get_all(&self) -> anyhow::Result<Result<Vec<(String, String)>, config::store::Error>> {
        Ok(Ok(Vec::new()))
    }
}

#[async_trait]
impl Logging for Host {
    async fn log(
        &self,
        _level: logging::logging::Level,
        _context: String,
        _message: String,
    ) -> anyhow::Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Secrets for Host {
    async fn get(
        &self,
        key: &str,
    ) -> anyhow::Result<Result<secrets::store::Secret, secrets::store::SecretsError>> {
        bail!("no secrets in this bench: {key}")
    }

    async fn reveal(
        &self,
        _secret: secrets::reveal::Secret,
    ) -> anyhow::Result<secrets::reveal::SecretValue> {
        bail!("no secrets in this bench")
    }
}

#[async_trait]
impl Identity for Host {
    async fn get(
        &self,
        _audience: &str,
    ) -> anyhow::Result<Result<Option<String>, identity::store::Error>> {
        Ok(Ok(None))
    }
}

impl Messaging0_2 for Host {
    async fn request(
        &self,
        subject: String,
        _body: Vec<u8>,
        _timeout_ms: u32,
    ) -> anyhow::Result<Result<messaging0_2_0::types::BrokerMessage, String>> {
        Ok(Err(format!("no responders on {subject}")))
    }

    async fn publish(
        &self,
        _msg: messaging0_2_0::types::BrokerMessage,
    ) -> anyhow::Result<Result<(), String>> {
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(Ok(()))
    }
}

impl Messaging0_3 for Host {
    async fn connect(
        &self,
        _name: String,
    ) -> anyhow::Result<Result<Box<dyn MessagingClient0_3 + Send + Sync>, messaging0_3_0::types::Error>>
    {
        Ok(Err(messaging0_3_0::types::Error::Other(
            "messaging 0.3 is not used by this bench".into(),
        )))
    }

    async fn send(
        &self,
        _client: &(dyn MessagingClient0_3 + Send + Sync),
        _topic: messaging0_3_0::types::Topic,
        _message: messaging0_3_0::types::Message,
    ) -> anyhow::Result<Result<(), messaging0_3_0::types::Error>> {
        bail!("messaging 0.3 is not used by this bench")
    }

    async fn request(
        &self,
        _client: &(dyn MessagingClient0_3 + Send + Sync),
        _topic: messaging0_3_0::types::Topic,
        _message: &messaging0_3_0::types::Message,
        _options: Option<messaging0_3_0::request_reply::RequestOptions>,
    ) -> anyhow::Result<
        Result<Vec<Box<dyn MessagingHostMessage0_3 + Send + Sync>>, messaging0_3_0::types::Error>,
    > {
        bail!("messaging 0.3 is not used by this bench")
    }

    async fn reply(
        &self,
        _reply_to: &messaging0_3_0::types::Message,
        _message: messaging0_3_0::types::Message,
    ) -> anyhow::Result<Result<(), messaging0_3_0::types::Error>> {
        bail!("messaging 0.3 is not used by this bench")
    }
}

impl InvocationErrorIntrospect for Host {
    fn invocation_error_kind(&self, _err: &anyhow::Error) -> InvocationErrorKind {
        InvocationErrorKind::Trap
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let wasm_path = std::env::args()
        .nth(1)
        .context("usage: weir-peer-bench PATH/wasmcloud_echo.wasm")?;
    let wasm = std::fs::read(&wasm_path).with_context(|| format!("reading {wasm_path}"))?;
    let (rt, _thread) = Runtime::new()?;
    let component = Component::new(&rt, &wasm, None)?;
    let host = Host::default();
    let (events, mut returned) = mpsc::channel(1024);
    let instance = component.instantiate(host.clone(), events);
    let rounds = env("PEER_ROUNDS", 7);
    let n = env("PEER_EVENTS", 6000);
    let body = Bytes::from_static(br#"{"symbol":"BTCUSDT","price":64000.5,"qty":0.1,"ts":1,"trade_id":7}"#);
    let mut per_round = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..n {
            let msg = BrokerMessage {
                subject: "svc.echo".into(),
                body: body.clone(),
                reply_to: Some("_INBOX.peer.1".into()),
            };
            instance
                .handle_message(Box::new(Span::none()), msg)
                .await?
                .map_err(|e| anyhow::anyhow!("the echo failed: {e}"))?;
            // The runtime reports each return on this channel.
            let _ = returned.try_recv();
        }
        per_round.push(start.elapsed().as_nanos() as f64 / n as f64);
    }
    let published = host.published.load(Ordering::Relaxed);
    anyhow::ensure!(
        published == (rounds * n) as u64,
        "the echo published {published} replies, not {}",
        rounds * n
    );
    per_round.sort_by(f64::total_cmp);
    let median = per_round.get(per_round.len() / 2).copied().unwrap_or(f64::NAN);
    println!("wasmcloud-runtime {}: wasmcloud-echo, median of {rounds} rounds of {n}: {median:.0} ns per message", rt.version());
    println!("PEER|wasmcloud-runtime|{median:.0}");
    Ok(())
}
