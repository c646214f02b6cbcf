//! A component that misbehaves on purpose, for weir's own tests.
//!
//! Config `behaviour` picks what `handle` does:
//! - `trap`: executes `unreachable`
//! - `panic`: a Rust panic (also a trap)
//! - `loop`: spins forever (the epoch deadline must stop it)
//! - `alloc`: allocates without bound (the memory limit must stop it)
//! - `recurse`: recurses until the stack overflows
//! - `trap-first`: traps on the first delivery of a message, succeeds on a
//!   redelivery (tests that a fresh instance takes over)
//! - `escape`: tries to read `/etc/passwd`, open a socket and read the
//!   environment, then rejects the message with what happened
//! - `read-data`: reads `/data/hello.txt`, tries to write `/data` and to
//!   read `/etc/passwd`, rejects with what happened
//! - `flood`: publishes on `flood.x` until the host refuses, then rejects
//!   with the refusal
//! - `huge-payload`: publishes 2 MiB, rejects with the refusal
//! - `huge-reason`: rejects with a 10 MB reason
//! - `print-flood`: writes 100 000 lines to stdout, then succeeds
//! - `empty-writes`: writes empty and one-byte chunks straight to the WASI
//!   stdout and stderr streams, without end (host memory must stay
//!   bounded; the deadline must stop it)
//! - `cache-escape`: tries to read and wipe other namespaces' keys, rejects
//!   with how many foreign values it saw
//! - `cache-get`: reads key `hot` from the cache `loops` times (benchmarks)
//! - `last-trade`: reads the latest BTCUSDT trade `loops` times (benchmarks)
//! - `market-probe`: publishes on `market.out` the latest trade of the
//!   symbol named by the payload, as `price/trade_id`, or `none`, or the
//!   host's refusal
//! - `echo`: an ordinary request answerer: publishes the payload back to
//!   the message's reply-to; a refused reply rejects with the refusal
//! - `describe`: appends a line per message to the cache key `described`:
//!   subject, headers, stream, sequence, attempt and payload, `|` between
//!   (tests that a batch carries every part of every message)
//! - `order`: appends each payload to the cache key `order` (comma after
//!   each); a payload containing `fail-once` asks for a retry on its first
//!   delivery (tests that order holds through retries)
//! - `order-once`: `order` for payloads that start with their index, each
//!   applied once (an index at or below the last applied one is skipped, as
//!   a strategy skips a redelivered trade); a payload containing
//!   `trap-once` traps on its first delivery
//! - `probe`: publishes on `probe.out` what the guest sees: wall-clock
//!   ms, 8 random bytes (hex) and the cache key `k`; a payload `set`
//!   first caches `k` for 1 s (tests the replay's virtual clock)
//! - `tag`: publishes `<config version>|<payload>` on `tag.out` (tests
//!   which version of a hot-updated component handled each message)
//! - `batch-empty`: `handle` handles everything like `ok`; `handle-batch`
//!   answers with an empty list (tests that weir still makes progress)
//! - `ok`: handles everything (counts messages in the cache under `seen`)

#![allow(unsafe_code)] // the ABI glue that wit-bindgen generates is unsafe
#![allow(clippy::panic)] // misbehaving on purpose is this component's job

use std::hint::black_box;

wit_bindgen::generate!({
    path: "../../wit",
    // The batch form too: weir's tests of `handle-batch` (set
    // `limits.max_batch = 1` for one message per call).
    world: "weir:host/batch-strategy",
});

use exports::weir::host::handler::Guest;
use weir::host::messaging::{self, Message};
use weir::host::types::{Delivery, HandleError};
use weir::host::{cache, config, market};

/// Recursion the optimiser cannot turn into a loop, with no locals in
/// linear memory, so it exhausts wasm's own call stack.
#[inline(never)]
fn recurse(depth: u64, limit: u64) -> u64 {
    if depth >= limit {
        return depth;
    }
    recurse(depth + 1, limit).wrapping_mul(31) ^ depth
}

struct Hostile;

impl Guest for Hostile {
    fn handle(msg: Message, delivery: Delivery) -> Result<(), HandleError> {
        match config::get("behaviour").as_deref().unwrap_or("ok") {
            "trap" => core::arch::wasm32::unreachable(),
            "panic" => panic!("hostile component panicked on purpose"),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    black_box(&hoard);
                }
            }
            "recurse" => {
                // The limit comes from outside so it cannot be folded away.
                let limit = u64::MAX - u64::from(delivery.attempt);
                black_box(recurse(0, black_box(limit)));
                Ok(())
            }
            "escape" => {
                let file = match std::fs::read_to_string("/etc/passwd") {
                    Ok(s) => format!("LEAK: read {} bytes of /etc/passwd", s.len()),
                    Err(e) => format!("reading /etc/passwd failed ({e})"),
                };
                let socket = match std::net::TcpStream::connect("127.0.0.1:4222") {
                    Ok(_) => "LEAK: opened a socket".to_owned(),
                    Err(e) => format!("opening a socket failed ({e})"),
                };
                let env = std::env::vars().count() + std::env::args().count();
                Err(HandleError::Reject(format!(
                    "{file}; {socket}; {env} env vars and args"
                )))
            }
            "read-data" => {
                let read = match std::fs::read_to_string("/data/hello.txt") {
                    Ok(s) => format!("read /data/hello.txt: {}", s.trim()),
                    Err(e) => format!("reading /data/hello.txt failed ({e})"),
                };
                let write = match std::fs::write("/data/new.txt", b"x") {
                    Ok(()) => "LEAK: wrote /data/new.txt".to_owned(),
                    Err(e) => format!("writing /data failed ({e})"),
                };
                let outside = match std::fs::read_to_string("/etc/passwd") {
                    Ok(_) => "LEAK: read /etc/passwd".to_owned(),
                    Err(e) => format!("reading /etc/passwd failed ({e})"),
                };
                Err(HandleError::Reject(format!("{read}; {write}; {outside}")))
            }
            "flood" => {
                for i in 0..10_000_000u64 {
                    if let Err(e) = messaging::publish("flood.x", b"x", &[]) {
                        return Err(HandleError::Reject(format!("publish {i} refused: {e:?}")));
                    }
                }
                Ok(())
            }
            "huge-reason" => Err(HandleError::Reject("why ".repeat(2_500_000))),
            "huge-payload" => {
                let big = vec![7u8; 2 << 20];
                match messaging::publish("flood.x", &big, &[]) {
                    Ok(()) => Err(HandleError::Reject("LEAK: 2 MiB published".into())),
                    Err(e) => Err(HandleError::Reject(format!("2 MiB publish refused: {e:?}"))),
                }
            }
            "empty-writes" => {
                use wasip2::cli::{stderr, stdout};
                let (out, err) = (stdout::get_stdout(), stderr::get_stderr());
                let mut n: u64 = 0;
                loop {
                    for stream in [&out, &err] {
                        // Empty writes need no permit; a byte only when
                        // the stream grants one (never waiting for it).
                        let _ = stream.write(&[]);
                        let _ = stream.write(&[]);
                        if stream.check_write().is_ok_and(|permit| permit > 0) {
                            let byte: &[u8] = if n.is_multiple_of(64) { b"\n" } else { b"x" };
                            let _ = stream.write(byte);
                        }
                    }
                    n = black_box(n.wrapping_add(1));
                }
            }
            "print-flood" => {
                for i in 0..100_000 {
                    println!("line {i} of a flood");
                }
                Ok(())
            }
            "cache-escape" => {
                let mut found = 0;
                for key in [
                    "sma:BTCUSDT",
                    "../sma:sma:BTCUSDT",
                    "sma:sma:BTCUSDT",
                    "*",
                    ":sma:BTCUSDT",
                ] {
                    found += usize::from(matches!(cache::get(key), Ok(Some(_))));
                }
                let wiped = cache::invalidate_pattern("*").unwrap_or(0);
                let wiped_other = cache::invalidate_pattern("../*").unwrap_or(0);
                Err(HandleError::Reject(format!(
                    "escape: found {found} foreign values, wiped {wiped} own and {wiped_other} other keys"
                )))
            }
            "cache-get" => {
                let loops: u32 = config::get("loops")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                for _ in 0..loops {
                    black_box(cache::get("hot").map_err(|e| HandleError::Retry(format!("{e:?}")))?);
                }
                Ok(())
            }
            "last-trade" => {
                let loops: u32 = config::get("loops")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                for _ in 0..loops {
                    black_box(
                        market::last_trade("BTCUSDT")
                            .map_err(|e| HandleError::Retry(format!("{e:?}")))?,
                    );
                }
                Ok(())
            }
            "market-probe" => {
                let symbol = String::from_utf8_lossy(&msg.payload).into_owned();
                let seen = match market::last_trade(&symbol) {
                    Ok(Some(t)) => format!("{}/{}", t.price, t.trade_id),
                    Ok(None) => "none".to_owned(),
                    Err(e) => format!("{e:?}"),
                };
                messaging::publish("market.out", seen.as_bytes(), &[])
                    .map_err(|e| HandleError::Reject(format!("{e:?}")))
            }
            "trap-first" if delivery.attempt <= 1 => core::arch::wasm32::unreachable(),
            "describe" => {
                // Everything the message arrived with, one line per
                // message, appended in handling order.
                let line = format!(
                    "{}|{:?}|{:?}|{:?}|{}|{}\n",
                    msg.subject,
                    msg.headers,
                    delivery.stream,
                    delivery.sequence,
                    delivery.attempt,
                    String::from_utf8_lossy(&msg.payload)
                );
                let retry = |e| HandleError::Retry(format!("{e:?}"));
                let mut seen = cache::get("described")
                    .map_err(retry)?
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default();
                seen.push_str(&line);
                cache::set("described", seen.as_bytes(), None).map_err(retry)?;
                Ok(())
            }
            "order-once" => {
                let text = String::from_utf8_lossy(&msg.payload).into_owned();
                if text.contains("trap-once") && delivery.attempt <= 1 {
                    core::arch::wasm32::unreachable()
                }
                if text.contains("fail-once") && delivery.attempt <= 1 {
                    return Err(HandleError::Retry("first delivery fails on purpose".into()));
                }
                let index: u64 = text
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(0);
                let retry = |e| HandleError::Retry(format!("{e:?}"));
                let last = cache::get("last")
                    .map_err(retry)?
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.parse::<u64>().ok());
                if last.is_some_and(|l| index <= l) {
                    return Ok(());
                }
                let mut seen = cache::get("order")
                    .map_err(retry)?
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default();
                seen.push_str(&text);
                seen.push(',');
                cache::set("order", seen.as_bytes(), None).map_err(retry)?;
                cache::set("last", index.to_string().as_bytes(), None).map_err(retry)
            }
            "order" => {
                let text = String::from_utf8_lossy(&msg.payload).into_owned();
                if text.contains("fail-once") && delivery.attempt <= 1 {
                    return Err(HandleError::Retry("first delivery fails on purpose".into()));
                }
                let mut seen = cache::get("order")
                    .map_err(|e| HandleError::Retry(format!("{e:?}")))?
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default();
                seen.push_str(&text);
                seen.push(',');
                cache::set("order", seen.as_bytes(), None)
                    .map_err(|e| HandleError::Retry(format!("{e:?}")))
            }
            "probe" => {
                if msg.payload == b"set" {
                    cache::set("k", b"v", Some(1000))
                        .map_err(|e| HandleError::Retry(format!("{e:?}")))?;
                }
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let mut bytes = [0u8; 8];
                for b in &mut bytes {
                    // A fresh std RandomState draws from wasi:random.
                    *b = std::hash::BuildHasher::hash_one(
                        &std::collections::hash_map::RandomState::new(),
                        0u8,
                    ) as u8;
                }
                let random: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                let cached = cache::get("k")
                    .map_err(|e| HandleError::Retry(format!("{e:?}")))?
                    .is_some();
                let out = format!(r#"{{"now_ms":{now_ms},"random":"{random}","cached":{cached}}}"#);
                messaging::publish("probe.out", out.as_bytes(), &[])
                    .map_err(|e| HandleError::Reject(format!("{e:?}")))
            }
            "stall" => {
                // Parks in a host call far longer than any deadline: a
                // request to a responder that never answers.
                match messaging::request("stall.wait", b"", &[], 60_000) {
                    Ok(_) => Ok(()),
                    Err(e) => Err(HandleError::Retry(format!("{e:?}"))),
                }
            }
            "tag" => {
                let version = config::get("version").unwrap_or_default();
                let mut out = version.into_bytes();
                out.push(b'|');
                out.extend_from_slice(&msg.payload);
                messaging::publish("tag.out", &out, &[])
                    .map_err(|e| HandleError::Retry(format!("{e:?}")))
            }
            "echo" => {
                let Some(reply_to) = msg.reply_to else {
                    return Err(HandleError::Reject("no reply-to to answer".into()));
                };
                messaging::publish(&reply_to, &msg.payload, &[])
                    .map_err(|e| HandleError::Reject(format!("reply refused: {e:?}")))
            }
            _ => {
                let seen = cache::get("seen")
                    .ok()
                    .flatten()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                cache::set("seen", (seen + 1).to_string().as_bytes(), None)
                    .map_err(|e| HandleError::Retry(format!("{e:?}")))
            }
        }
    }
}

impl exports::weir::host::batch_handler::Guest for Hostile {
    /// Each message as `handle` would, in order; stops after the first error.
    fn handle_batch(
        batch: exports::weir::host::batch_handler::Batch,
    ) -> Vec<Result<(), HandleError>> {
        if config::get("behaviour").as_deref() == Some("batch-empty") {
            // Against the contract: answers for none of the events (and
            // counts such answers under `empty-answers`).
            let n = cache::get("empty-answers")
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            let _ = cache::set("empty-answers", (n + 1).to_string().as_bytes(), None);
            return Vec::new();
        }
        let mut out = Vec::with_capacity(batch.frames.len() / 12);
        for frame in batch.frames.chunks_exact(12) {
            let result = unpack(&batch, frame)
                .ok_or_else(|| HandleError::Retry("batch frame outside its batch".into()))
                .and_then(|(msg, delivery)| <Hostile as Guest>::handle(msg, delivery));
            let failed = result.is_err();
            out.push(result);
            if failed {
                break;
            }
        }
        out
    }
}

export!(Hostile);

/// A frame of a batch (its twelve numbers, as `wit/handler.wit` lays them
/// out) as the message and delivery `handle` takes.
fn unpack(
    batch: &exports::weir::host::batch_handler::Batch,
    w: &[u32],
) -> Option<(Message, Delivery)> {
    let range = |at: usize| {
        let start = *w.get(at)? as usize;
        Some(start..start.checked_add(*w.get(at + 1)? as usize)?)
    };
    let text = |at: usize| batch.text.get(range(at)?).map(str::to_owned);
    let flags = *w.get(11)?;
    let stream = match flags & 1 {
        0 => None,
        _ => Some(text(6)?),
    };
    let msg = Message {
        subject: text(0)?,
        reply_to: None,
        headers: batch.headers.get(range(4)?)?.to_vec(),
        payload: batch.bytes.get(range(2)?)?.to_vec(),
    };
    let delivery = Delivery {
        stream,
        sequence: (flags & 2 != 0).then(|| u64::from(w[8]) | u64::from(w[9]) << 32),
        attempt: *w.get(10)?,
    };
    Some((msg, delivery))
}
