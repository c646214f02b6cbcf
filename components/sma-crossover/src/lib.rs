//! Simple moving average crossover strategy.
//!
//! Consumes `TRADE.trade.<SYMBOL>` trades. Per symbol it keeps the newest
//! `slow_window` prices and the side the fast average was on in the cache
//! (key `sma:<SYMBOL>`), so a fresh instance carries on where a failed one
//! stopped. When the fast average crosses the slow one it publishes a signal
//! on `signals.<SYMBOL>` and caches `trading_signal_<SYMBOL>`.
//!
//! Config: `fast_window` (default 5), `slow_window` (default 20),
//! `signal_ttl_secs` (default 3600).

#![allow(unsafe_code)] // the ABI glue that wit-bindgen generates is unsafe

use std::sync::OnceLock;

use market::{Trade, iso8601_ms, sma_pair};
use serde_json::json;

wit_bindgen::generate!({
    path: "../../wit",
    world: "weir:host/strategy",
});

use exports::weir::host::handler::{Delivery, Guest, HandleError};
use weir::host::messaging::{self, Message};
use weir::host::{cache, config, types};

struct Settings {
    fast: usize,
    slow: usize,
    signal_ttl_ms: u64,
}

static SETTINGS: OnceLock<Result<Settings, String>> = OnceLock::new();

fn settings() -> Result<&'static Settings, HandleError> {
    SETTINGS
        .get_or_init(|| {
            let num = |key: &str, default: u64| -> Result<u64, String> {
                match config::get(key) {
                    None => Ok(default),
                    Some(v) => v
                        .trim()
                        .parse()
                        .map_err(|_| format!("config `{key}` = {v:?} is not a whole number")),
                }
            };
            let fast = num("fast_window", 5)? as usize;
            let slow = num("slow_window", 20)? as usize;
            if fast == 0 || slow <= fast {
                return Err(format!(
                    "config needs 0 < fast_window < slow_window, got {fast} and {slow}"
                ));
            }
            Ok(Settings {
                fast,
                slow,
                signal_ttl_ms: num("signal_ttl_secs", 3600)? * 1000,
            })
        })
        .as_ref()
        .map_err(|e| HandleError::Reject(e.clone()))
}

/// Which side of the slow average the fast one was on at the last trade.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Unknown = 0,
    Above = 1,
    Below = 2,
}

/// Per-symbol state: one side byte, then up to `slow` f64 prices, oldest first.
fn decode(bytes: &[u8]) -> (Side, Vec<f64>) {
    let side = match bytes.first() {
        Some(1) => Side::Above,
        Some(2) => Side::Below,
        _ => Side::Unknown,
    };
    let prices = bytes
        .get(1..)
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    (side, prices)
}

fn encode(side: Side, prices: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + prices.len() * 8);
    out.push(side as u8);
    for p in prices {
        out.extend_from_slice(&p.to_le_bytes());
    }
    out
}

/// A refused call will be refused again: reject. Anything else may pass later.
fn host_error(e: types::Error) -> HandleError {
    match e {
        types::Error::Denied(m) | types::Error::Invalid(m) => HandleError::Reject(m),
        other => HandleError::Retry(format!("{other:?}")),
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

struct SmaCrossover;

impl Guest for SmaCrossover {
    fn handle(msg: Message, _delivery: Delivery) -> Result<(), HandleError> {
        let settings = settings()?;
        let trade = Trade::parse(&msg.payload).map_err(HandleError::Reject)?;
        let state_key = format!("sma:{}", trade.symbol);
        let (last_side, mut prices) = match cache::get(&state_key).map_err(host_error)? {
            Some(bytes) => decode(&bytes),
            None => (Side::Unknown, Vec::new()),
        };
        prices.push(trade.price);
        if prices.len() > settings.slow {
            prices.drain(..prices.len() - settings.slow);
        }
        let Some((fast, slow)) = sma_pair(&prices, settings.fast, settings.slow) else {
            return cache::set(&state_key, &encode(last_side, &prices), None).map_err(host_error);
        };
        let side = if fast > slow {
            Side::Above
        } else if fast < slow {
            Side::Below
        } else {
            last_side
        };
        if last_side != Side::Unknown && side != last_side {
            let signal = if side == Side::Above { "buy" } else { "sell" };
            // Confidence grows with how far apart the averages are.
            let spread = (fast - slow).abs() / slow;
            let confidence = ((0.5 + spread * 100.0).min(0.99) * 1e4).round() / 1e4;
            let timestamp = iso8601_ms(trade.ts);
            let cached =
                json!({"signal": signal, "confidence": confidence, "timestamp": timestamp});
            cache::set(
                &format!("trading_signal_{}", trade.symbol),
                cached.to_string().as_bytes(),
                Some(settings.signal_ttl_ms),
            )
            .map_err(host_error)?;
            let out = json!({
                "symbol": trade.symbol,
                "signal": signal,
                "confidence": confidence,
                "price": trade.price,
                "fast_sma": round6(fast),
                "slow_sma": round6(slow),
                "trade_id": trade.trade_id,
                "timestamp": timestamp,
            });
            messaging::publish(
                &format!("signals.{}", trade.symbol),
                out.to_string().as_bytes(),
                &[("content-type".into(), "application/json".into())],
            )
            .map_err(host_error)?;
        }
        cache::set(&state_key, &encode(side, &prices), None).map_err(host_error)
    }
}

export!(SmaCrossover);
