//! Price alerts: "tell me when BTCUSDT goes above 65000".
//!
//! Alert specs come from the `alerts` config value (a JSON array of
//! `{id, symbol, condition: "above"|"below", threshold, name?}`) and from
//! `alerts.created` messages in the alert service's format, either with
//! those fields inside `alert` or with an `nl_description` such as
//! "Alert me when ETHUSDT goes below 3000".
//!
//! On each trade of `TRADE.trade.<SYMBOL>` (decoded by the host: a
//! weir-guest [`Strategy`]), and on each order book's mid price and each
//! candle's close when subscribed to `TRADE.depth.*` or
//! `market.data.ohlcv.*` (an alert from those has no `trade_id`), it
//! publishes `alerts.triggered` once per crossing: when the condition
//! becomes true. It re-arms when the condition
//! becomes false again. Specs and armed state live in the cache, so a fresh
//! instance carries on where a failed one stopped.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use market::{Trade, iso8601_ms};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weir_guest::bindings::weir::host::logging::{Level, log};
use weir_guest::bindings::weir::host::{cache, config, messaging, types};
use weir_guest::events::{Depth, Ohlcv};
use weir_guest::{Delivery, HandleError, Message, Strategy};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Condition {
    Above,
    Below,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Spec {
    id: String,
    #[serde(default)]
    name: Option<String>,
    symbol: String,
    condition: Condition,
    threshold: f64,
}

impl Spec {
    fn holds(&self, price: f64) -> bool {
        match self.condition {
            Condition::Above => price > self.threshold,
            Condition::Below => price < self.threshold,
        }
    }
}

static CONFIG_SPECS: OnceLock<Result<Vec<Spec>, String>> = OnceLock::new();

fn config_specs() -> Result<&'static [Spec], HandleError> {
    CONFIG_SPECS
        .get_or_init(|| match config::get("alerts") {
            None => Ok(Vec::new()),
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| format!("config `alerts` is not a list of alert specs: {e}")),
        })
        .as_ref()
        .map(Vec::as_slice)
        .map_err(|e| HandleError::Reject(e.clone()))
}

/// A refused call will be refused again: reject. Anything else may pass later.
fn host_error(e: types::Error) -> HandleError {
    match e {
        types::Error::Denied(m) | types::Error::Invalid(m) => HandleError::Reject(m),
        other => HandleError::Retry(format!("{other:?}")),
    }
}

fn load<T: for<'de> Deserialize<'de> + Default>(key: &str) -> Result<T, HandleError> {
    match cache::get(key).map_err(host_error)? {
        None => Ok(T::default()),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| HandleError::Retry(format!("cache key {key} holds bad JSON: {e}"))),
    }
}

fn store<T: Serialize>(key: &str, value: &T) -> Result<(), HandleError> {
    let bytes = serde_json::to_vec(value).map_err(|e| HandleError::Reject(e.to_string()))?;
    cache::set(key, &bytes, None).map_err(host_error)
}

/// Reads a price alert out of an `alerts.created` envelope. `Ok(None)` when
/// the alert is about something else (balances, gas): not ours to handle.
fn spec_from_created(payload: &[u8]) -> Result<Option<Spec>, String> {
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| format!("malformed alerts.created JSON: {e}"))?;
    let alert = v
        .get("alert")
        .ok_or("alerts.created message has no `alert` object")?;
    let id = alert
        .get("id")
        .and_then(Value::as_str)
        .ok_or("alert has no string `id`")?;
    if let Some(kind) = alert.get("event_type").and_then(Value::as_str)
        && !matches!(kind, "PRICE_EVENT" | "MARKET_EVENT")
    {
        return Ok(None);
    }
    let name = alert.get("name").and_then(Value::as_str).map(str::to_owned);
    if alert.get("symbol").is_some() {
        let mut spec: Spec = serde_json::from_value(alert.clone())
            .map_err(|e| format!("alert {id} has a bad price spec: {e}"))?;
        spec.name = spec.name.or(name);
        return Ok(Some(spec));
    }
    let Some(text) = alert.get("nl_description").and_then(Value::as_str) else {
        return Ok(None);
    };
    Ok(
        parse_description(text).map(|(symbol, condition, threshold)| Spec {
            id: id.to_owned(),
            name,
            symbol,
            condition,
            threshold,
        }),
    )
}

/// "Alert me when BTCUSDT goes above 65,000" → (BTCUSDT, above, 65000).
fn parse_description(text: &str) -> Option<(String, Condition, f64)> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let symbol = words.iter().find(|w| {
        w.len() >= 3
            && w.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    })?;
    let pos = words
        .iter()
        .position(|w| matches!(w.to_ascii_lowercase().as_str(), "above" | "below"))?;
    let condition = if words[pos].eq_ignore_ascii_case("above") {
        Condition::Above
    } else {
        Condition::Below
    };
    let threshold = words[pos + 1..].iter().find_map(|w| {
        w.trim_start_matches('$')
            .trim_end_matches(['.', '!'])
            .replace(',', "")
            .parse()
            .ok()
    })?;
    Some((symbol.to_string(), condition, threshold))
}

fn on_created(payload: &[u8]) -> Result<(), HandleError> {
    let Some(spec) = spec_from_created(payload).map_err(HandleError::Reject)? else {
        log(Level::Debug, "alerts.created is not a price alert; ignored");
        return Ok(());
    };
    let key = format!("alerts:specs:{}", spec.symbol);
    let mut specs: Vec<Spec> = load(&key)?;
    specs.retain(|s| s.id != spec.id);
    log(
        Level::Info,
        &format!(
            "alert {} armed: {} {:?} {}",
            spec.id, spec.symbol, spec.condition, spec.threshold
        ),
    );
    specs.push(spec);
    store(&key, &specs)
}

/// Where a price came from: a trade, or (without a trade id) a book's
/// mid price or a candle's close.
struct Price<'a> {
    symbol: &'a str,
    value: f64,
    trade_id: Option<u64>,
    ts: i64,
}

fn on_price(p: &Price) -> Result<(), HandleError> {
    let dynamic: Vec<Spec> = load(&format!("alerts:specs:{}", p.symbol))?;
    let specs = config_specs()?
        .iter()
        .chain(&dynamic)
        .filter(|s| s.symbol == p.symbol);
    let state_key = format!("alerts:state:{}", p.symbol);
    // Alert id → whether its condition held at the previous price.
    let mut held: BTreeMap<String, bool> = load(&state_key)?;
    let mut changed = false;
    for spec in specs {
        let now = spec.holds(p.value);
        let before = held.get(&spec.id).copied().unwrap_or(false);
        if now && !before {
            let mut alert = json!({
                "alert_id": spec.id,
                "name": spec.name,
                "symbol": p.symbol,
                "condition": spec.condition,
                "threshold": spec.threshold,
                "value": p.value,
                "trade_id": p.trade_id,
                "time": iso8601_ms(p.ts),
            });
            if p.trade_id.is_none()
                && let Some(fields) = alert.as_object_mut()
            {
                fields.remove("trade_id");
            }
            messaging::publish("alerts.triggered", alert.to_string().as_bytes(), &[])
                .map_err(host_error)?;
        }
        if now != before {
            held.insert(spec.id.clone(), now);
            changed = true;
        }
    }
    if changed {
        store(&state_key, &held)
    } else {
        Ok(())
    }
}

struct PriceAlert;

impl Strategy for PriceAlert {
    fn on_trade(trade: &Trade, _delivery: &Delivery) -> Result<(), HandleError> {
        on_price(&Price {
            symbol: &trade.symbol,
            value: trade.price,
            trade_id: Some(trade.trade_id),
            ts: trade.ts,
        })
    }

    /// A book's mid price (a book missing a side is skipped).
    fn on_depth(book: &Depth, _delivery: &Delivery) -> Result<(), HandleError> {
        let Some(mid) = book.mid() else {
            return Ok(());
        };
        on_price(&Price {
            symbol: &book.symbol,
            value: mid,
            trade_id: None,
            ts: book.ts,
        })
    }

    /// A candle's close.
    fn on_ohlcv(candle: &Ohlcv, _delivery: &Delivery) -> Result<(), HandleError> {
        on_price(&Price {
            symbol: &candle.ticker,
            value: candle.close,
            trade_id: None,
            ts: candle.ts,
        })
    }

    fn on_message(msg: Message, _delivery: Delivery) -> Result<(), HandleError> {
        if msg.subject == "alerts.created" {
            on_created(&msg.payload)
        } else {
            Err(HandleError::Reject(format!(
                "price-alert takes trades and alerts.created, not {}",
                msg.subject
            )))
        }
    }
}

weir_guest::export_strategy!(PriceAlert);
