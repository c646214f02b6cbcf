//! A trade tally written for wasmCloud: it imports only wasmCloud's
//! interfaces (messaging, `wasi:keyvalue`, `wasi:config`, `wasi:logging`,
//! `wasmcloud:bus`), and weir runs it unchanged, with its key-value bucket
//! in weir's cache tiers.
//!
//! - `TRADE.trade.<SYMBOL>`: adds 1 to the counter `trades:<SYMBOL>`
//!   (atomically, across hosts when Redis is configured) and keeps the trade
//!   as `last:<SYMBOL>`; answers the new count when there is a reply-to.
//! - Any other subject carries a command in its body, answered on the
//!   reply-to: `get K`, `exists K`, `set K V`, `del K`, `incr K N`,
//!   `getmany K…`, `setmany K=V…`, `delmany K…`, `list` (every key, paged
//!   with the cursor), `config`, and `notify SUBJECT REPLY_TO TEXT`
//!   (publishes asking for replies). An error is answered as `error: …`.
//!
//! Config: `bucket` (default `tally`), read through the legacy
//! `wasi:config/runtime`; `config` answers with `wasi:config/store`.

#![allow(unsafe_code)] // the ABI glue that wit-bindgen generates is unsafe

wit_bindgen::generate!({ generate_all });

use exports::wasmcloud::messaging::handler::Guest;
use serde_json::json;
use wasi::config0_2_0_draft::runtime;
use wasi::config0_2_0_rc_1::store as config_store;
use wasi::keyvalue::store::{self, Bucket};
use wasi::keyvalue::{atomics, batch};
use wasi::logging::logging::{Level, log};
use wasmcloud::bus::lattice;
use wasmcloud::messaging::{consumer, types::BrokerMessage};

/// Log context of every line.
const CONTEXT: &str = "wasmcloud-kv";

struct Tally;

fn kv(e: store::Error) -> String {
    match e {
        store::Error::NoSuchStore => "no such store".to_owned(),
        store::Error::AccessDenied => "access denied".to_owned(),
        store::Error::Other(m) => m,
    }
}

/// The bucket named by config (wasmCloud components usually pick theirs
/// with a link name first; weir accepts that call and ignores it).
fn open() -> Result<Bucket, String> {
    static LINKED: std::sync::Once = std::sync::Once::new();
    LINKED.call_once(|| {
        let target = lattice::CallTargetInterface::new("wasi", "keyvalue", "store");
        lattice::set_link_name("default", vec![target]);
    });
    let name = runtime::get("bucket")
        .map_err(|e| format!("config: {e:?}"))?
        .unwrap_or_else(|| "tally".to_owned());
    store::Bucket::open(&name)
}

impl store::Bucket {
    fn open(name: &str) -> Result<Bucket, String> {
        store::open(name).map_err(kv)
    }
}

fn text(v: Option<Vec<u8>>) -> String {
    v.map_or_else(
        || "none".to_owned(),
        |v| String::from_utf8_lossy(&v).into_owned(),
    )
}

/// Runs one command; the answer.
fn command(bucket: &Bucket, line: &str) -> Result<String, String> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or_default();
    let args: Vec<&str> = words.collect();
    let first = || args.first().copied().ok_or(format!("{verb} needs a key"));
    Ok(match verb {
        "get" => text(bucket.get(first()?).map_err(kv)?),
        "exists" => bucket.exists(first()?).map_err(kv)?.to_string(),
        "set" => {
            bucket
                .set(first()?, args[1..].join(" ").as_bytes())
                .map_err(kv)?;
            "ok".to_owned()
        }
        "del" => {
            bucket.delete(first()?).map_err(kv)?;
            "ok".to_owned()
        }
        "incr" => {
            let by = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1);
            atomics::increment(bucket, first()?, by)
                .map_err(kv)?
                .to_string()
        }
        "getmany" => {
            let keys: Vec<String> = args.iter().map(|k| (*k).to_owned()).collect();
            let found = batch::get_many(bucket, &keys).map_err(kv)?;
            let found: Vec<_> = found
                .into_iter()
                .map(|e| e.map(|(k, v)| json!([k, String::from_utf8_lossy(&v)])))
                .collect();
            json!(found).to_string()
        }
        "setmany" => {
            let pairs: Vec<(String, Vec<u8>)> = args
                .iter()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
                .collect();
            batch::set_many(bucket, &pairs).map_err(kv)?;
            "ok".to_owned()
        }
        "delmany" => {
            let keys: Vec<String> = args.iter().map(|k| (*k).to_owned()).collect();
            batch::delete_many(bucket, &keys).map_err(kv)?;
            "ok".to_owned()
        }
        "list" => {
            let (mut keys, mut pages, mut cursor) = (Vec::new(), 0, None);
            loop {
                let page = bucket.list_keys(cursor).map_err(kv)?;
                pages += 1;
                keys.extend(page.keys);
                match page.cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            keys.sort();
            keys.dedup();
            json!({ "keys": keys, "pages": pages }).to_string()
        }
        "notify" => {
            let (Some(subject), Some(reply_to)) = (args.first(), args.get(1)) else {
                return Err("notify needs a subject and a reply-to".to_owned());
            };
            consumer::publish(&BrokerMessage {
                subject: (*subject).to_owned(),
                reply_to: Some((*reply_to).to_owned()),
                body: args[2..].join(" ").into_bytes(),
            })?;
            "ok".to_owned()
        }
        "config" => {
            let all = config_store::get_all().map_err(|e| format!("config: {e:?}"))?;
            json!(
                all.into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>()
            )
            .to_string()
        }
        other => return Err(format!("unknown command {other:?}")),
    })
}

impl Guest for Tally {
    fn handle_message(msg: BrokerMessage) -> Result<(), String> {
        let bucket = open()?;
        let answer = match msg.subject.strip_prefix("TRADE.trade.") {
            // A failure here is passing (Redis away): retried by the host.
            Some(symbol) => {
                let n = atomics::increment(&bucket, &format!("trades:{symbol}"), 1).map_err(kv)?;
                bucket
                    .set(&format!("last:{symbol}"), &msg.body)
                    .map_err(kv)?;
                n.to_string()
            }
            None => command(&bucket, &String::from_utf8_lossy(&msg.body))
                .unwrap_or_else(|e| format!("error: {e}")),
        };
        log(
            Level::Debug,
            CONTEXT,
            &format!("{} -> {answer}", msg.subject),
        );
        match msg.reply_to {
            Some(reply_to) => consumer::publish(&BrokerMessage {
                subject: reply_to,
                reply_to: None,
                body: answer.into_bytes(),
            }),
            None => Ok(()),
        }
    }
}

export!(Tally);
