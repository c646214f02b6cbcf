//! In-host cost per event: sma-crossover as a component (the host decodes
//! each trade, the component gets it typed) against the same logic in
//! native Rust (parsing the same JSON itself), both on weir's L1 cache and
//! embedded bus.
//!
//! Prints criterion's figures and, at the end, the component/native ratio
//! from interleaved rounds in the same run (the machine is noisy).

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark code

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use futures::{FutureExt as _, StreamExt as _};
use market::{Trade, iso8601_ms, sma_pair};
use weir::bus::{Bus, BusMessage, EmbeddedBus};
use weir::cache::{CacheStore, MemoryStore, MemoryStoreConfig};
use weir::capability::ComponentContext;
use weir::manifest::{CacheSettings, Grants, Limits};
use weir::runtime::{
    BatchItem, ComponentTemplate, HandleOutcome, Instance, Runtime, RuntimeConfig,
};

/// Messages per `handle-batch` call on the batched side (a worker takes
/// up to 64 waiting messages at once; `PER_EVENT_BATCH` overrides).
fn batch_size() -> usize {
    std::env::var("PER_EVENT_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(16)
}

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The sample trades, with `trade_id` 0. The benches replay them round
/// after round, and sma-crossover acknowledges a trade at or below the last
/// id it applied without doing anything (a redelivery): with their ids,
/// every round after the first measured only that check. Id 0 turns the
/// check off, so every round does the whole step, as the native side does.
fn trades() -> Vec<BusMessage> {
    std::fs::read_to_string(root().join("examples/data/trades.ndjson"))
        .unwrap()
        .lines()
        .map(|l| weir::feed::parse_line(l).unwrap())
        .filter(|m| m.subject.starts_with("TRADE."))
        .map(|mut m| {
            let mut v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            v["trade_id"] = 0.into();
            m.payload = Bytes::from(v.to_string());
            m
        })
        .collect()
}

/// The message as it arrives from a transport: not decoded yet. The
/// rounds reuse the same messages, and a decode is kept with its message,
/// so without this only the first round would pay for it.
fn fresh(m: &mut BusMessage) -> &BusMessage {
    m.decoded = weir::bus::Decoded::for_subject(&m.subject);
    m
}

/// sma's per-symbol state as the native step keeps it: side and prices.
type NativeState = (u8, Vec<f64>);

fn native_load(l1: &MemoryStore, key: &str) -> NativeState {
    match l1.get_now(key) {
        Some(b) => (
            b[0],
            b[1..]
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        None => (0u8, Vec::new()),
    }
}

fn native_store(l1: &MemoryStore, key: &str, (side, prices): &NativeState) {
    let mut state = vec![*side];
    for p in prices {
        state.extend_from_slice(&p.to_le_bytes());
    }
    l1.set_now(key, Bytes::from(state), Duration::from_secs(300))
        .unwrap();
}

/// One trade on a symbol's state: the averages, and a signal when they cross.
fn native_apply(
    l1: &MemoryStore,
    bus: &EmbeddedBus,
    t: &Trade,
    (side, prices): &mut NativeState,
    rt: &tokio::runtime::Runtime,
) {
    prices.push(t.price);
    if prices.len() > 20 {
        prices.drain(..prices.len() - 20);
    }
    if let Some((fast, slow)) = sma_pair(prices, 5, 20) {
        let new = if fast > slow {
            1
        } else if fast < slow {
            2
        } else {
            *side
        };
        if *side != 0 && new != *side {
            let signal = if new == 1 { "buy" } else { "sell" };
            let ts = iso8601_ms(t.ts);
            // Typed, as sma-crossover writes them (no `Value` tree).
            #[derive(serde::Serialize)]
            struct Cached<'a> {
                confidence: f64,
                signal: &'a str,
                timestamp: &'a str,
            }
            #[derive(serde::Serialize)]
            struct Out<'a> {
                fast_sma: f64,
                price: f64,
                signal: &'a str,
                slow_sma: f64,
                symbol: &'a str,
                timestamp: &'a str,
                trade_id: u64,
            }
            let cached = Cached {
                confidence: 0.5,
                signal,
                timestamp: &ts,
            };
            l1.set_now(
                &format!("sma:native_signal_{}", t.symbol),
                Bytes::from(serde_json::to_vec(&cached).unwrap()),
                Duration::from_secs(3600),
            )
            .unwrap();
            let out = serde_json::to_vec(&Out {
                fast_sma: fast,
                price: t.price,
                signal,
                slow_sma: slow,
                symbol: &t.symbol,
                timestamp: &ts,
                trade_id: t.trade_id,
            })
            .unwrap();
            rt.block_on(bus.publish(BusMessage::new(format!("signals.{}", t.symbol), out)))
                .unwrap();
        }
        *side = new;
    }
}

/// A symbol's state key, joined by hand as sma-crossover joins its own.
fn native_key(symbol: &str) -> String {
    let mut key = String::with_capacity(11 + symbol.len());
    key.push_str("sma:native:");
    key.push_str(symbol);
    key
}

/// The strategy step in plain Rust, on the same cache and bus.
fn native_step(
    l1: &MemoryStore,
    bus: &EmbeddedBus,
    msg: &BusMessage,
    rt: &tokio::runtime::Runtime,
) {
    let t = Trade::parse(&msg.payload).unwrap();
    let key = native_key(&t.symbol);
    let mut state = native_load(l1, &key);
    native_apply(l1, bus, &t, &mut state, rt);
    native_store(l1, &key, &state);
}

/// A batch of trades in plain Rust the way sma-crossover's `handle-batch`
/// does it: each symbol's state read once and written once.
fn native_batch(
    l1: &MemoryStore,
    bus: &EmbeddedBus,
    msgs: &[&BusMessage],
    rt: &tokio::runtime::Runtime,
) {
    let mut held: Vec<(String, String, NativeState)> = Vec::new();
    for msg in msgs {
        let t = Trade::parse(&msg.payload).unwrap();
        let at = match held.iter().position(|(s, _, _)| *s == t.symbol) {
            Some(at) => at,
            None => {
                let key = native_key(&t.symbol);
                let state = native_load(l1, &key);
                held.push((t.symbol.clone(), key, state));
                held.len() - 1
            }
        };
        native_apply(l1, bus, &t, &mut held[at].2, rt);
    }
    for (_, key, state) in &held {
        native_store(l1, key, state);
    }
}

struct Setup {
    rt: tokio::runtime::Runtime,
    template: ComponentTemplate,
    instance: Instance,
    l1: MemoryStore,
    bus: EmbeddedBus,
    msgs: Vec<BusMessage>,
}

/// The runtime both sides' components run on.
fn engine() -> Runtime {
    Runtime::new(&RuntimeConfig {
        epoch_tick: Duration::from_millis(5),
        max_memory_bytes: 64 << 20,
        max_instances: 4,
        fuel: false,
    })
    .unwrap()
}

/// One thread, as a worker's instance sees it.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn setup() -> Setup {
    let rt = current_thread();
    let l1 = MemoryStore::new(MemoryStoreConfig::default());
    let bus = EmbeddedBus::new();
    let runtime = engine();
    let grants = Grants {
        publish: vec!["signals.*".into()],
        cache: Some("sma".into()),
        ..Grants::default()
    };
    let config = [("fast_window", "5"), ("slow_window", "20")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
    let ctx = ComponentContext::new(
        "sma-crossover".into(),
        grants,
        Limits::default(),
        Arc::new(bus.clone()),
    )
    .with_cache(
        Some(Arc::new(l1.clone()) as Arc<dyn CacheStore>),
        &CacheSettings::default(),
    )
    .with_config(config);
    let wasm = root().join("target/wasm32-wasip2/release/sma_crossover.wasm");
    let template = runtime
        .load(Arc::new(ctx), &wasm, None)
        .expect("run `just build-components` first");
    let instance = rt.block_on(template.instantiate()).unwrap();
    Setup {
        rt,
        template,
        instance,
        l1,
        bus,
        msgs: trades(),
    }
}

impl Setup {
    fn component_events(&mut self, n: usize, offset: usize) -> Duration {
        let Setup {
            rt,
            template,
            instance,
            msgs,
            ..
        } = self;
        rt.block_on(async {
            let start = Instant::now();
            for i in 0..n {
                let len = msgs.len();
                let m = fresh(&mut msgs[(offset + i) % len]);
                let out = instance.handle(template, m, None, None, 1).await;
                assert!(matches!(out, HandleOutcome::Handled), "{out:?}");
            }
            start.elapsed()
        })
    }

    /// The same events through `handle-batch`, `batch_size()` per call.
    fn batched_events(&mut self, n: usize, offset: usize) -> Duration {
        let Setup {
            rt,
            template,
            instance,
            msgs,
            ..
        } = self;
        let size = batch_size();
        rt.block_on(async {
            let start = Instant::now();
            let mut done = 0;
            while done < n {
                let len = msgs.len();
                for i in done..n.min(done + size) {
                    fresh(&mut msgs[(offset + i) % len]);
                }
                let items: Vec<BatchItem<'_>> = (done..n.min(done + size))
                    .map(|i| BatchItem {
                        msg: &msgs[(offset + i) % msgs.len()],
                        stream: None,
                        sequence: None,
                        attempt: 1,
                    })
                    .collect();
                let out = instance.handle_batch(template, &items).await.unwrap();
                assert_eq!(out.len(), items.len());
                assert!(out.iter().all(|o| matches!(o, HandleOutcome::Handled)));
                done += items.len();
            }
            start.elapsed()
        })
    }

    /// The native step on the same batches as `batched_events`.
    fn native_batched_events(&mut self, n: usize, offset: usize) -> Duration {
        let size = batch_size();
        let start = Instant::now();
        let mut done = 0;
        while done < n {
            let batch: Vec<&BusMessage> = (done..n.min(done + size))
                .map(|i| &self.msgs[(offset + i) % self.msgs.len()])
                .collect();
            native_batch(&self.l1, &self.bus, &batch, &self.rt);
            done += batch.len();
        }
        start.elapsed()
    }

    fn native_events(&mut self, n: usize, offset: usize) -> Duration {
        let start = Instant::now();
        for i in 0..n {
            let m = &self.msgs[(offset + i) % self.msgs.len()];
            native_step(&self.l1, &self.bus, m, &self.rt);
        }
        start.elapsed()
    }
}

fn per_event(c: &mut Criterion) {
    let mut s = setup();
    let mut g = c.benchmark_group("sma-crossover per event");
    let mut offset = 0;
    g.bench_function("native Rust", |b| {
        b.iter_custom(|iters| {
            offset += iters as usize;
            s.native_events(iters as usize, offset)
        })
    });
    g.bench_function("component", |b| {
        b.iter_custom(|iters| {
            offset += iters as usize;
            s.component_events(iters as usize, offset)
        })
    });
    g.bench_function(format!("native Rust, batches of {}", batch_size()), |b| {
        b.iter_custom(|iters| {
            offset += iters as usize;
            s.native_batched_events(iters as usize, offset)
        })
    });
    g.bench_function(
        format!("component, handle-batch of {}", batch_size()),
        |b| {
            b.iter_custom(|iters| {
                offset += iters as usize;
                s.batched_events(iters as usize, offset)
            })
        },
    );
    g.finish();
}

/// The wasmCloud echo (`components/wasmcloud-echo`) on one weir instance:
/// a message with a reply-to in, its body published to the reply-to on the
/// embedded bus. `just bench-peer` sets it beside the same component under
/// wasmCloud's runtime library (`tests/peer`).
fn echo(rounds: usize) {
    let rt = current_thread();
    let bus = EmbeddedBus::new();
    let runtime = engine();
    let ctx = ComponentContext::new(
        "wasmcloud-echo".into(),
        Grants::default(),
        Limits::default(),
        Arc::new(bus.clone()),
    );
    let wasm = root().join("target/wasm32-wasip2/release/wasmcloud_echo.wasm");
    let template = runtime
        .load(Arc::new(ctx), &wasm, None)
        .expect("run `just build-components` first");
    let n = 6000;
    let body = r#"{"symbol":"BTCUSDT","price":64000.5,"qty":0.1,"ts":1,"trade_id":7}"#;
    let (per_round, replies) = rt.block_on(async {
        let mut replies = bus.subscribe("_INBOX.>", None).await.unwrap();
        let mut instance = template.instantiate().await.unwrap();
        let mut per_round = Vec::new();
        let mut got = 0;
        for _ in 0..rounds {
            let start = Instant::now();
            for _ in 0..n {
                let mut msg = BusMessage::new("svc.echo", body);
                msg.reply_to = Some("_INBOX.peer.1".into());
                let out = instance.handle(&template, &msg, None, None, 1).await;
                assert!(matches!(out, HandleOutcome::Handled), "{out:?}");
                // The reply goes out from the component's publish queue:
                // let it run, then drain what arrived (the bus drops what a
                // full subscriber cannot take).
                tokio::task::yield_now().await;
                while let Some(Some(_)) = replies.next().now_or_never() {
                    got += 1;
                }
            }
            per_round.push(start.elapsed().as_nanos() as f64 / n as f64);
        }
        (per_round, got)
    });
    assert_eq!(replies, rounds * n, "one reply per message");
    let mut v = per_round;
    v.sort_by(f64::total_cmp);
    let median = v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
    println!("weir: wasmcloud-echo, median of {rounds} rounds of {n}: {median:.0} ns per message");
    println!("PEER|weir|{median:.0}");
}

/// Interleaved rounds of the whole sample, median ratio.
///
/// For instruction counts (`valgrind --tool=callgrind`, repeatable on a
/// noisy machine), `PER_EVENT_ROUNDS=N` sets the rounds and
/// `PER_EVENT_SIDE=native|component|native-batch|batch` runs one side only
/// (`echo`: the wasmCloud echo alone, for `just bench-peer`): the difference
/// between two round counts, divided by the events, is the cost per event.
fn ratio() {
    let rounds: usize = std::env::var("PER_EVENT_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
    let side = std::env::var("PER_EVENT_SIDE").unwrap_or_default();
    if side == "echo" {
        return echo(rounds);
    }
    let mut s = setup();
    let n = s.msgs.len();
    let (mut native, mut comp, mut native_b, mut batched) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let runs = |which: &str| side.is_empty() || side == which;
    for round in 0..rounds {
        if runs("native") {
            native.push(s.native_events(n, round * 7).as_nanos() as f64 / n as f64);
        }
        if runs("component") {
            comp.push(s.component_events(n, round * 7).as_nanos() as f64 / n as f64);
        }
        if runs("native-batch") {
            native_b.push(s.native_batched_events(n, round * 7).as_nanos() as f64 / n as f64);
        }
        if runs("batch") {
            batched.push(s.batched_events(n, round * 7).as_nanos() as f64 / n as f64);
        }
    }
    // NaN for a side that did not run.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let (nm, cm, nbm, bm) = (
        median(native),
        median(comp),
        median(native_b),
        median(batched),
    );
    let size = batch_size();
    println!("\nsma-crossover per event, median of {rounds} rounds of {n} trades:");
    println!(
        "  one event at a time: native Rust {nm:>6.0} ns   component {cm:>6.0} ns   ratio {:.2}x",
        cm / nm
    );
    println!(
        "  batches of {size} (state once per symbol per batch): native Rust {nbm:>6.0} ns   handle-batch {bm:>6.0} ns   ratio {:.2}x",
        bm / nbm
    );
    // One row of `just bench`'s summary table.
    println!(
        "TABLE|per_event: sma-crossover step, L1 + embedded bus|{cm:.0} ns|native Rust {nm:.0} ns|{:.2}x|≤ 1.5x",
        cm / nm
    );
    println!(
        "TABLE|per_event: batches of {size}, handle-batch|{bm:.0} ns|native Rust, same batches {nbm:.0} ns|{:.2}x|≤ 1.5x",
        bm / nbm
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = per_event
}

fn main() {
    benches();
    ratio();
    Criterion::default().configure_from_args().final_summary();
}
