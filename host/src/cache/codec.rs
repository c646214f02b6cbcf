//! Value envelopes for L2: one header byte naming the codec, then the
//! codec's output, so the format can evolve and every host can decode what
//! any other host wrote.
//!
//! | header | body |
//! |---|---|
//! | `0x00` | the value as is |
//! | `0x01` | gzip (what the seed's Python cache wrote) |
//! | `0x02` | zstd frame |
//! | `0x03` | dictionary id (u32, big endian), then a zstd frame made with it |
//!
//! Values below the threshold, and values that do not shrink, are stored as is.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, RwLock};

use thiserror::Error;

/// Header byte of an uncompressed value.
pub const RAW: u8 = 0x00;
/// Header byte of a gzip value.
pub const GZIP: u8 = 0x01;
/// Header byte of a zstd value.
pub const ZSTD: u8 = 0x02;
/// Header byte of a zstd value made with a shared dictionary.
pub const ZSTD_DICT: u8 = 0x03;

pub use crate::manifest::Codec;

/// Why an envelope could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// Zero bytes: not even a header.
    #[error("cache value is empty (no codec header)")]
    Empty,
    /// A header byte this version does not know.
    #[error("cache value has unknown codec header 0x{0:02x}")]
    UnknownCodec(u8),
    /// Header says dictionary but the id is cut short.
    #[error("cache value is truncated")]
    Truncated,
    /// The dictionary is not installed here (fetch it, then retry).
    #[error("cache value needs zstd dictionary {0:08x}, which this host does not have")]
    UnknownDictionary(u32),
    /// The body does not decode.
    #[error("cache value does not decode: {0}")]
    Corrupt(String),
    /// The decoded value would exceed the value size limit.
    #[error("cache value decodes to more than {0} bytes")]
    TooLarge(usize),
}

/// A trained zstd dictionary with its reusable contexts.
struct Dictionary {
    compressor: Mutex<zstd::bulk::Compressor<'static>>,
    decompressor: Mutex<zstd::bulk::Decompressor<'static>>,
}

/// Encoder/decoder with reusable zstd contexts; cheap to share.
pub struct Codecs {
    /// Compress values of at least this many bytes.
    threshold: usize,
    /// Codec above the threshold.
    codec: Codec,
    /// Decoded values above this are refused (decompression bombs).
    max_value: usize,
    zstd_c: Mutex<zstd::bulk::Compressor<'static>>,
    zstd_d: Mutex<zstd::bulk::Decompressor<'static>>,
    /// Installed dictionaries by id.
    dicts: RwLock<HashMap<u32, Arc<Dictionary>>>,
    /// Key prefix → dictionary id used to encode keys with that prefix.
    prefixes: RwLock<Vec<(String, u32)>>,
}

fn io(e: std::io::Error) -> CodecError {
    CodecError::Corrupt(e.to_string())
}

impl Codecs {
    /// Codecs with a compression threshold, a default codec and a cap on decoded size.
    pub fn new(threshold: usize, codec: Codec, max_value: usize) -> Result<Codecs, CodecError> {
        Ok(Codecs {
            threshold,
            codec,
            max_value,
            zstd_c: Mutex::new(zstd::bulk::Compressor::new(1).map_err(io)?),
            zstd_d: Mutex::new(zstd::bulk::Decompressor::new().map_err(io)?),
            dicts: RwLock::default(),
            prefixes: RwLock::default(),
        })
    }

    /// Installs a dictionary under its id (see [`dictionary_id`]).
    pub fn install_dictionary(&self, id: u32, raw: &[u8]) -> Result<(), CodecError> {
        let d = Dictionary {
            compressor: Mutex::new(zstd::bulk::Compressor::with_dictionary(3, raw).map_err(io)?),
            decompressor: Mutex::new(zstd::bulk::Decompressor::with_dictionary(raw).map_err(io)?),
        };
        self.dicts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::new(d));
        Ok(())
    }

    /// Encodes keys starting with `prefix` with dictionary `id` from now on.
    pub fn use_dictionary_for(&self, prefix: &str, id: u32) {
        let mut p = self.prefixes.write().unwrap_or_else(|e| e.into_inner());
        p.retain(|(x, _)| x != prefix);
        p.push((prefix.to_owned(), id));
        // Longest prefix first.
        p.sort_by_key(|(x, _)| std::cmp::Reverse(x.len()));
    }

    /// Whether a dictionary id is installed.
    pub fn has_dictionary(&self, id: u32) -> bool {
        self.dicts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&id)
    }

    fn dictionary(&self, id: u32) -> Option<Arc<Dictionary>> {
        self.dicts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    fn dictionary_for(&self, key: &str) -> Option<(u32, Arc<Dictionary>)> {
        let p = self.prefixes.read().unwrap_or_else(|e| e.into_inner());
        let id = p
            .iter()
            .find(|(x, _)| key.starts_with(x.as_str()))
            .map(|(_, id)| *id)?;
        drop(p);
        self.dictionary(id).map(|d| (id, d))
    }

    /// Encodes a value for `key`.
    pub fn encode(&self, key: &str, value: &[u8]) -> Vec<u8> {
        let raw = || {
            let mut out = Vec::with_capacity(value.len() + 1);
            out.push(RAW);
            out.extend_from_slice(value);
            out
        };
        if value.len() < self.threshold || self.codec == Codec::None {
            return raw();
        }
        let packed = match self.codec {
            Codec::None => None,
            Codec::Gzip => {
                let mut e = flate2::write::GzEncoder::new(vec![GZIP], flate2::Compression::new(6));
                e.write_all(value).and_then(|_| e.finish()).ok()
            }
            Codec::Zstd => match self.dictionary_for(key) {
                Some((id, d)) => {
                    let mut out = vec![ZSTD_DICT];
                    out.extend_from_slice(&id.to_be_bytes());
                    compress_into(&d.compressor, value, out)
                }
                None => compress_into(&self.zstd_c, value, vec![ZSTD]),
            },
        };
        match packed {
            Some(p) if p.len() < value.len() + 1 => p,
            _ => raw(),
        }
    }

    /// Decodes an envelope.
    pub fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        let (&header, body) = bytes.split_first().ok_or(CodecError::Empty)?;
        match header {
            RAW => Ok(body.to_vec()),
            GZIP => {
                let mut out = Vec::new();
                let limit = self.max_value as u64 + 1;
                flate2::read::GzDecoder::new(body)
                    .take(limit)
                    .read_to_end(&mut out)
                    .map_err(io)?;
                if out.len() > self.max_value {
                    return Err(CodecError::TooLarge(self.max_value));
                }
                Ok(out)
            }
            ZSTD => decompress(&self.zstd_d, body, self.max_value),
            ZSTD_DICT => {
                let id = body
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes)
                    .ok_or(CodecError::Truncated)?;
                let d = self
                    .dictionary(id)
                    .ok_or(CodecError::UnknownDictionary(id))?;
                decompress(&d.decompressor, &body[4..], self.max_value)
            }
            other => Err(CodecError::UnknownCodec(other)),
        }
    }
}

fn compress_into(
    c: &Mutex<zstd::bulk::Compressor<'static>>,
    value: &[u8],
    mut out: Vec<u8>,
) -> Option<Vec<u8>> {
    let start = out.len();
    out.reserve(zstd::zstd_safe::compress_bound(value.len()));
    let mut body = Vec::with_capacity(zstd::zstd_safe::compress_bound(value.len()));
    let n = c
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .compress_to_buffer(value, &mut body)
        .ok()?;
    out.truncate(start);
    out.extend_from_slice(&body[..n]);
    Some(out)
}

fn decompress(
    d: &Mutex<zstd::bulk::Decompressor<'static>>,
    body: &[u8],
    max: usize,
) -> Result<Vec<u8>, CodecError> {
    match zstd::bulk::Decompressor::upper_bound(body) {
        Some(n) if n > max => return Err(CodecError::TooLarge(max)),
        _ => {}
    }
    d.lock()
        .unwrap_or_else(|e| e.into_inner())
        .decompress(body, max)
        .map_err(io)
}

/// A dictionary's id: the first four bytes of its sha256, so every host
/// derives the same id from the same bytes.
pub fn dictionary_id(raw: &[u8]) -> u32 {
    let hex = crate::digest::sha256_hex(raw);
    u32::from_str_radix(&hex[..8], 16).unwrap_or(0)
}

/// Trains a zstd dictionary of at most `max_size` bytes from sample values.
pub fn train_dictionary(samples: &[Vec<u8>], max_size: usize) -> Result<Vec<u8>, CodecError> {
    zstd::dict::from_samples(samples, max_size).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order_book(i: usize) -> Vec<u8> {
        format!(
            r#"{{"symbol":"BTCUSDT","ts":{},"bids":[[{:.2},0.{:03}],[{:.2},1.{:03}]],"asks":[[{:.2},0.{:03}],[{:.2},2.{:03}]]}}"#,
            1_753_862_400_000u64 + i as u64,
            64000.0 - i as f64 * 0.5,
            i % 1000,
            63999.5 - i as f64 * 0.5,
            (i * 7) % 1000,
            64000.5 + i as f64 * 0.5,
            (i * 3) % 1000,
            64001.0 + i as f64 * 0.5,
            (i * 11) % 1000
        )
        .into_bytes()
    }

    #[test]
    fn round_trips_every_codec() {
        let big = order_book(1).repeat(20);
        for codec in [Codec::None, Codec::Gzip, Codec::Zstd] {
            let c = Codecs::new(64, codec, 1 << 20).unwrap();
            for v in [&b""[..], b"tiny", &big] {
                let e = c.encode("k", v);
                assert_eq!(c.decode(&e).unwrap(), v, "{codec:?}");
            }
            let e = c.encode("k", &big);
            let expected = match codec {
                Codec::None => RAW,
                Codec::Gzip => GZIP,
                Codec::Zstd => ZSTD,
            };
            assert_eq!(e[0], expected);
            assert_eq!(c.encode("k", b"tiny")[0], RAW, "below the threshold");
        }
    }

    #[test]
    fn dictionary_shrinks_small_json_and_other_hosts_decode_it() {
        let samples: Vec<Vec<u8>> = (0..400).map(order_book).collect();
        let raw = train_dictionary(&samples, 8 * 1024).unwrap();
        let id = dictionary_id(&raw);
        let writer = Codecs::new(32, Codec::Zstd, 1 << 20).unwrap();
        writer.install_dictionary(id, &raw).unwrap();
        writer.use_dictionary_for("ob:", id);
        let value = order_book(1234);
        let with = writer.encode("ob:BTCUSDT", &value);
        let without = writer.encode("other", &value);
        assert_eq!(with[0], ZSTD_DICT);
        assert!(
            with.len() * 2 < without.len(),
            "dict {} vs plain {}",
            with.len(),
            without.len()
        );

        let reader = Codecs::new(32, Codec::Zstd, 1 << 20).unwrap();
        assert_eq!(reader.decode(&with), Err(CodecError::UnknownDictionary(id)));
        reader.install_dictionary(id, &raw).unwrap();
        assert_eq!(reader.decode(&with).unwrap(), value);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_round_trip_through_every_codec(value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096), threshold in 0usize..512) {
            for codec in [Codec::None, Codec::Gzip, Codec::Zstd] {
                let c = Codecs::new(threshold, codec, 1 << 20).unwrap();
                let e = c.encode("k", &value);
                proptest::prop_assert!(e.len() <= value.len() + 1, "never larger than raw + header");
                proptest::prop_assert_eq!(c.decode(&e).unwrap(), value.clone());
            }
        }

        #[test]
        fn arbitrary_envelopes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let c = Codecs::new(0, Codec::Zstd, 1 << 16).unwrap();
            let _ = c.decode(&bytes);
        }
    }

    #[test]
    fn bad_envelopes_are_clear_errors() {
        let c = Codecs::new(0, Codec::Zstd, 1000).unwrap();
        assert_eq!(c.decode(b""), Err(CodecError::Empty));
        assert_eq!(c.decode(&[0x7f, 1, 2]), Err(CodecError::UnknownCodec(0x7f)));
        assert_eq!(c.decode(&[ZSTD_DICT, 1]), Err(CodecError::Truncated));
        assert!(matches!(
            c.decode(&[ZSTD, 1, 2, 3]),
            Err(CodecError::Corrupt(_))
        ));
        assert!(matches!(
            c.decode(&[GZIP, 1, 2, 3]),
            Err(CodecError::Corrupt(_))
        ));
        // A bomb: 1 MB of zeros compresses tiny but decodes past the cap.
        let bomb = Codecs::new(0, Codec::Zstd, 10 << 20)
            .unwrap()
            .encode("k", &vec![0u8; 1 << 20]);
        assert_eq!(c.decode(&bomb), Err(CodecError::TooLarge(1000)));
        let gz = Codecs::new(0, Codec::Gzip, 10 << 20)
            .unwrap()
            .encode("k", &vec![0u8; 1 << 20]);
        assert_eq!(c.decode(&gz), Err(CodecError::TooLarge(1000)));
    }
}
