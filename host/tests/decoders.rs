//! Property tests over every decoder of outside data: whatever the bytes,
//! each returns a value or an error and never panics. Run longer with
//! `PROPTEST_CASES=200000 cargo test -p weir --test decoders --release`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use weir::bus::EmbeddedBus;
use weir::cache::codec::{Codec, Codecs};
use weir::cache::{Coherence, MemoryStore, MemoryStoreConfig};
use weir::dlq::DeadLetter;
use weir::manifest::Manifest;

const GOOD_MANIFEST: &str = r#"
[host]
id = "h"
[nats]
url = "nats://127.0.0.1:4222"
[cache]
default_ttl_secs = 30
codec = "gzip"
[components.sma]
wasm = "c.wasm"
subscribe = [{ subject = "TRADE.trade.*", queue_group = "q" }, { subject = "A.>", stream = "S", consumer = "c" }]
grants = { subscribe = [">"], publish = ["signals.*"], streams = ["S"], cache = "sma" }
limits = { instances = 2, memory_mb = 16 }
config = { fast_window = 5, alerts = [{ id = "a", threshold = 1.5 }] }
"#;

/// Text with runs of the manifest's own bytes replaced, to reach deep
/// into the parser rather than failing at the first byte.
fn mutated_manifest() -> impl Strategy<Value = String> {
    (proptest::collection::vec((0..GOOD_MANIFEST.len(), any::<u8>()), 0..8)).prop_map(|edits| {
        let mut bytes = GOOD_MANIFEST.as_bytes().to_vec();
        for (i, b) in edits {
            bytes[i] = b;
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

proptest! {
    #[test]
    fn manifest_parser_never_panics(text in prop_oneof![any::<String>(), mutated_manifest()]) {
        match Manifest::parse(&text, Path::new("fuzz.toml")) {
            Ok(_) => {}
            Err(e) => prop_assert!(e.to_string().starts_with("fuzz.toml:")),
        }
    }

    #[test]
    fn coherence_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), json_key in "[a-z:*?\\[\\]]{0,12}") {
        let l1 = MemoryStore::new(MemoryStoreConfig::default());
        let c = Coherence::new(Arc::new(EmbeddedBus::new()), "me".into());
        c.apply(&l1, &bytes);
        for action in ["update", "invalidate", "invalidate_pattern"] {
            let msg = format!(r#"{{"action":"{action}","key":"{json_key}","pattern":"{json_key}"}}"#);
            c.apply(&l1, msg.as_bytes());
        }
    }

    #[test]
    fn dead_letters_and_feed_lines_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), line in any::<String>()) {
        if let Ok(d) = serde_json::from_slice::<DeadLetter>(&bytes) {
            let _ = d.original_payload();
        }
        let _ = weir::feed::parse_line(&line);
        let _ = weir::streams::parse(Path::new("fuzz.json"), &line);
        let _ = weir::streams::parse(Path::new("fuzz.json"), &String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn cache_envelopes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let c = Codecs::new(0, Codec::Zstd, 1 << 16).unwrap();
        let _ = c.decode(&bytes);
        let mut gz = vec![1u8];
        gz.extend_from_slice(&bytes);
        let _ = c.decode(&gz);
    }
}
