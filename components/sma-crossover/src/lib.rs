//! Simple moving average crossover strategy.
//!
//! Takes the trades of `TRADE.trade.<SYMBOL>`, decoded by the host (a
//! weir-guest [`Strategy`]: no JSON is parsed here). Per symbol it keeps
//! the newest `slow_window` prices and the side the fast average was on in
//! the cache (key `sma:<SYMBOL>`), so a fresh instance carries on where a
//! failed one stopped. When the fast average crosses the slow one it
//! publishes a signal on `signals.<SYMBOL>` and caches
//! `trading_signal_<SYMBOL>`.
//!
//! The trades come many per call, and the states of all the call's symbols
//! are read in one `get-many` and written in one `set-many`: for 30 trades
//! over five symbols, two calls into the host instead of sixty.
//!
//! Config: `fast_window` (default 5), `slow_window` (default 20),
//! `signal_ttl_secs` (default 3600), `publish` = `core` (default) or
//! `jetstream`: signals stored in a stream with `Nats-Msg-Id`
//! `sma-<SYMBOL>-<trade_id>`, so a redelivered trade's signal is stored once.
//!
//! Redelivery is harmless: the state remembers the last trade id per
//! symbol, and a trade at or below it is acknowledged without effect.

use std::sync::OnceLock;

use market::{iso8601_ms, sma_pair_after};
use serde::Serialize;
use weir_guest::bindings::weir::host::{cache, config, messaging, types};
use weir_guest::{HandleError, Strategy, TradeRef, Trades};

struct Settings {
    fast: usize,
    slow: usize,
    signal_ttl_ms: u64,
    jetstream: bool,
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
            let jetstream = match config::get("publish").as_deref() {
                None | Some("core") => false,
                Some("jetstream") => true,
                Some(other) => {
                    return Err(format!(
                        "config `publish` = {other:?}: use core or jetstream"
                    ));
                }
            };
            Ok(Settings {
                fast,
                slow,
                signal_ttl_ms: num("signal_ttl_secs", 3600)? * 1000,
                jetstream,
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

/// Per-symbol state, kept in the cache as bytes: the side byte, the last
/// trade id (u64 LE), then up to `slow` f64 prices (LE), oldest first.
struct State {
    side: Side,
    last_trade_id: u64,
    prices: Vec<f64>,
}

impl State {
    /// A symbol seen for the first time.
    fn fresh() -> State {
        State {
            side: Side::Unknown,
            last_trade_id: 0,
            prices: Vec::new(),
        }
    }

    fn decode(bytes: &[u8]) -> State {
        let side = match bytes.first() {
            Some(1) => Side::Above,
            Some(2) => Side::Below,
            _ => Side::Unknown,
        };
        let last_trade_id = bytes
            .get(1..9)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        let prices = bytes
            .get(9..)
            .unwrap_or_default()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        State {
            side,
            last_trade_id,
            prices,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.prices.len() * 8);
        out.push(self.side as u8);
        out.extend_from_slice(&self.last_trade_id.to_le_bytes());
        for p in &self.prices {
            out.extend_from_slice(&p.to_le_bytes());
        }
        out
    }
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

/// A symbol's state held through one call: read from the cache before
/// the call's first trade, written back once after its last.
struct Held {
    state: State,
    /// The first trade of the call that changed it (not yet written).
    first_change: Option<usize>,
}

impl Strategy for SmaCrossover {
    /// Each trade in order, stopping after the first retry; but the
    /// states of all the call's symbols are read in one `get-many` and
    /// written in one `set-many`, not once per trade (each call into the
    /// host costs more than the arithmetic of a trade). A failed read
    /// retries the call from its first trade. A failed write takes the
    /// answers back from the first trade that changed a state: that trade
    /// is retried and the later ones delivered again (the trade ids in the
    /// states that were written make those harmless, as on a redelivery).
    fn on_trades(trades: &Trades) -> Vec<Result<(), HandleError>> {
        let settings = match settings() {
            Ok(settings) => settings,
            Err(e) => return vec![Err(e)],
        };
        // One state per symbol of the call, in the order of `symbols()`.
        let keys: Vec<String> = trades.symbols().map(state_key).collect();
        let mut held: Vec<Held> = Vec::with_capacity(keys.len());
        // One symbol (a lone trade, under a trickle): the single calls,
        // which cross cheaper than lists of one.
        let read = match keys.as_slice() {
            [key] => cache::get(key).map(|value| vec![value]),
            _ => cache::get_many(&keys),
        };
        match read {
            Ok(values) => held.extend(values.into_iter().map(|value| Held {
                state: value.map_or_else(State::fresh, |bytes| State::decode(&bytes)),
                first_change: None,
            })),
            Err(e) => return vec![Err(host_error(e))],
        }
        let mut out = Vec::with_capacity(trades.len());
        for (index, trade) in trades.iter().enumerate() {
            let Some(h) = held.get_mut(trade.symbol_index) else {
                break;
            };
            // A trade whose signal fails leaves the held state as it was.
            let result = apply(settings, &trade, &mut h.state).map(|changed| {
                if changed {
                    h.first_change.get_or_insert(index);
                }
            });
            let retry = matches!(result, Err(HandleError::Retry(_)));
            out.push(result);
            if retry {
                break;
            }
        }
        let (entries, firsts): (Vec<(String, Vec<u8>)>, Vec<usize>) = held
            .iter()
            .zip(keys)
            .filter_map(|(h, key)| Some(((key, h.state.encode()), h.first_change?)))
            .unzip();
        let write = |entries: &[(String, Vec<u8>)]| match entries {
            [(key, value)] => cache::set(key, value, None),
            _ => cache::set_many(entries, None),
        };
        if let Some(&first) = firsts.iter().min()
            && let Err(e) = write(&entries)
            && first < out.len()
        {
            out.truncate(first);
            out.push(Err(host_error(e)));
        }
        out
    }
}

/// The cache key of a symbol's state.
fn state_key(symbol: &str) -> String {
    // Joined by hand: `format!`'s machinery costs more than the rest of
    // a trade's bookkeeping in wasm.
    let mut key = String::with_capacity(4 + symbol.len());
    key.push_str("sma:");
    key.push_str(symbol);
    key
}

/// Applies `trade` to `state` (publishing a signal when the averages
/// cross). `Ok(false)` for a trade already applied (a redelivery: nothing
/// to do). The averages are taken before the state changes, so a signal
/// that fails leaves `state` as it was.
fn apply(settings: &Settings, trade: &TradeRef, state: &mut State) -> Result<bool, HandleError> {
    if trade.trade_id != 0 && trade.trade_id <= state.last_trade_id {
        return Ok(false);
    }
    let mut side = state.side;
    if let Some((fast, slow)) =
        sma_pair_after(&state.prices, trade.price, settings.fast, settings.slow)
    {
        side = if fast > slow {
            Side::Above
        } else if fast < slow {
            Side::Below
        } else {
            state.side
        };
        if state.side != Side::Unknown && side != state.side {
            signal(settings, trade, side == Side::Above, fast, slow)?;
        }
    }
    // The newest `slow` prices, the trade's last.
    let drop = state.prices.len().saturating_sub(settings.slow - 1);
    state.prices.drain(..drop);
    state.prices.push(trade.price);
    state.side = side;
    state.last_trade_id = trade.trade_id;
    Ok(true)
}

/// `trading_signal_<SYMBOL>` in the seed's format. Fields in name order
/// (as a `serde_json::Value` prints them), written without building one.
#[derive(Serialize)]
struct CachedSignal<'a> {
    confidence: f64,
    signal: &'a str,
    timestamp: &'a str,
}

/// A signal as published on `signals.<SYMBOL>`, fields in name order.
#[derive(Serialize)]
struct Signal<'a> {
    confidence: f64,
    fast_sma: f64,
    price: f64,
    signal: &'a str,
    slow_sma: f64,
    symbol: &'a str,
    timestamp: &'a str,
    trade_id: u64,
}

fn encode(value: &impl Serialize) -> Result<Vec<u8>, HandleError> {
    serde_json::to_vec(value).map_err(|e| HandleError::Reject(format!("cannot encode: {e}")))
}

/// Caches `trading_signal_<SYMBOL>` in the seed's format and publishes the signal.
fn signal(
    settings: &Settings,
    trade: &TradeRef,
    buy: bool,
    fast: f64,
    slow: f64,
) -> Result<(), HandleError> {
    let signal = if buy { "buy" } else { "sell" };
    // Confidence grows with how far apart the averages are.
    let spread = (fast - slow).abs() / slow;
    let confidence = ((0.5 + spread * 100.0).min(0.99) * 1e4).round() / 1e4;
    let timestamp = iso8601_ms(trade.ts);
    let cached = CachedSignal {
        confidence,
        signal,
        timestamp: &timestamp,
    };
    cache::set(
        &format!("trading_signal_{}", trade.symbol),
        &encode(&cached)?,
        Some(settings.signal_ttl_ms),
    )
    .map_err(host_error)?;
    let out = encode(&Signal {
        confidence,
        fast_sma: round6(fast),
        price: trade.price,
        signal,
        slow_sma: round6(slow),
        symbol: trade.symbol,
        timestamp: &timestamp,
        trade_id: trade.trade_id,
    })?;
    let subject = format!("signals.{}", trade.symbol);
    let headers = [("content-type".to_owned(), "application/json".to_owned())];
    if settings.jetstream {
        let id = format!("sma-{}-{}", trade.symbol, trade.trade_id);
        messaging::jetstream_publish(&subject, &out, &headers, Some(&id)).map(|_| ())
    } else {
        messaging::publish(&subject, &out, &headers)
    }
    .map_err(host_error)
}

weir_guest::export_strategy!(SmaCrossover);
