//! Typed market events in the seeds' formats, with the subjects they
//! travel on:
//!
//! | subject | type |
//! |---|---|
//! | `TRADE.trade.<SYMBOL>` | [`Trade`] |
//! | `TRADE.depth.<SYMBOL>` | [`Depth`] |
//! | `market.data.ohlcv.<TICKER>` | [`Ohlcv`] |
//! | `predictions.<kind>.<TICKER>` | [`Prediction`] |
//!
//! Field names follow weir's sample data and accept Binance's short names;
//! prices and quantities may be numbers or decimal strings.

use serde::{Deserialize, Deserializer, Serialize};

mod trade_scan;

/// Decodes JSON from bytes, checking the UTF-8 once for the whole input.
/// `serde_json::from_slice` checks it again for every string it meets
/// (keys included), which for a trade's six short strings costs more in
/// wasm than the whole check over the payload; the inputs accepted and
/// refused are the same.
pub fn from_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, serde_json::Error> {
    utf8(bytes).and_then(serde_json::from_str)
}

/// The text of a JSON payload, or the error serde's would be worded as.
fn utf8(bytes: &[u8]) -> Result<&str, serde_json::Error> {
    std::str::from_utf8(bytes).map_err(|e| serde::de::Error::custom(format_args!("not UTF-8: {e}")))
}

/// One executed trade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trade {
    /// Instrument, e.g. `BTCUSDT`.
    #[serde(alias = "s")]
    pub symbol: String,
    /// Execution price.
    #[serde(alias = "p", deserialize_with = "number_or_string")]
    pub price: f64,
    /// Executed quantity.
    #[serde(alias = "q", deserialize_with = "number_or_string", default)]
    pub qty: f64,
    /// Trade time, milliseconds since the Unix epoch.
    #[serde(alias = "T")]
    pub ts: i64,
    /// Exchange trade id, increasing per symbol.
    #[serde(alias = "t", default)]
    pub trade_id: u64,
}

impl Trade {
    /// Parses a trade and checks that its numbers make sense. A trade in
    /// the usual shape takes a quick scan; any other goes through serde
    /// (same answers, and serde's words for what is wrong).
    pub fn parse(payload: &[u8]) -> Result<Trade, String> {
        let malformed = |e| format!("malformed trade JSON: {e}");
        let trade = match trade_scan::trade(payload) {
            Some(trade) => trade,
            None => from_json(payload).map_err(malformed)?,
        };
        if trade.symbol.is_empty() {
            return Err("trade has an empty symbol".into());
        }
        if !trade.price.is_finite() || trade.price <= 0.0 {
            return Err(format!(
                "trade price {} is not a positive number",
                trade.price
            ));
        }
        Ok(trade)
    }
}

/// An order book snapshot: price levels, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Depth {
    /// Instrument.
    #[serde(alias = "s")]
    pub symbol: String,
    /// Bids as `[price, quantity]`, highest first.
    #[serde(alias = "b", deserialize_with = "levels")]
    pub bids: Vec<(f64, f64)>,
    /// Asks as `[price, quantity]`, lowest first.
    #[serde(alias = "a", deserialize_with = "levels")]
    pub asks: Vec<(f64, f64)>,
    /// Snapshot time, milliseconds since the Unix epoch.
    #[serde(alias = "E", default)]
    pub ts: i64,
}

impl Depth {
    /// Midpoint of the best bid and ask, when both sides have a level.
    pub fn mid(&self) -> Option<f64> {
        Some((self.bids.first()?.0 + self.asks.first()?.0) / 2.0)
    }
}

/// One candle of `market.data.ohlcv.<TICKER>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ohlcv {
    /// Ticker, e.g. `AAPL`.
    #[serde(alias = "symbol")]
    pub ticker: String,
    /// Opening price.
    #[serde(deserialize_with = "number_or_string")]
    pub open: f64,
    /// Highest price.
    #[serde(deserialize_with = "number_or_string")]
    pub high: f64,
    /// Lowest price.
    #[serde(deserialize_with = "number_or_string")]
    pub low: f64,
    /// Closing price.
    #[serde(deserialize_with = "number_or_string")]
    pub close: f64,
    /// Traded volume.
    #[serde(deserialize_with = "number_or_string", default)]
    pub volume: f64,
    /// Candle open time, milliseconds since the Unix epoch.
    #[serde(alias = "timestamp", alias = "t")]
    pub ts: i64,
}

/// A model's prediction, as seed 003 publishes it on
/// `predictions.<kind>.<TICKER>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Always `prediction`.
    #[serde(rename = "type", default = "prediction")]
    pub kind: String,
    /// Ticker.
    pub ticker: String,
    /// The predicted figures.
    pub data: PredictionData,
    /// Which model, and when.
    pub metadata: PredictionMetadata,
}

fn prediction() -> String {
    "prediction".to_owned()
}

/// What a prediction says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionData {
    /// The predicted price.
    pub predicted_price: f64,
    /// Between 0 and 1.
    pub confidence: f64,
}

/// Where a prediction comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionMetadata {
    /// The model's version, e.g. `v1.0`.
    pub model_version: String,
    /// RFC 3339 time it was made.
    pub timestamp: String,
}

/// A market event, recognised by its subject.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `TRADE.trade.*`
    Trade(Trade),
    /// `TRADE.depth.*`
    Depth(Depth),
    /// `market.data.ohlcv.*`
    Ohlcv(Ohlcv),
    /// `predictions.*.*`
    Prediction(Prediction),
    /// Any other subject: the payload is the component's to read.
    Other,
}

impl Event {
    /// Parses the payload by what the subject says it is.
    pub fn parse(subject: &str, payload: &[u8]) -> Result<Event, String> {
        let json = |what: &str| format!("malformed {what} JSON on {subject}");
        if subject.starts_with("TRADE.trade.") {
            Trade::parse(payload).map(Event::Trade)
        } else if subject.starts_with("TRADE.depth.") {
            from_json(payload)
                .map(Event::Depth)
                .map_err(|e| format!("{}: {e}", json("depth")))
        } else if subject.starts_with("market.data.ohlcv.") {
            from_json(payload)
                .map(Event::Ohlcv)
                .map_err(|e| format!("{}: {e}", json("OHLCV")))
        } else if subject.starts_with("predictions.") {
            from_json(payload)
                .map(Event::Prediction)
                .map_err(|e| format!("{}: {e}", json("prediction")))
        } else {
            Ok(Event::Other)
        }
    }
}

/// Formats milliseconds since the epoch as ISO 8601 UTC, e.g.
/// `2025-07-30T08:45:23.123Z`.
pub fn iso8601_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A price or quantity: a JSON number, or a decimal string (Binance sends
/// `"64000.5"`). A visitor rather than `#[serde(untagged)]`, which buffers
/// every value into an intermediate tree before trying each variant: this
/// parses once, straight from the input.
struct Num(f64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Num, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Num;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or a decimal string")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Num, E> {
                v.trim().parse().map(Num).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Num::deserialize(d).map(|n| n.0)
}

fn levels<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(f64, f64)>, D::Error> {
    Ok(Vec::<(Num, Num)>::deserialize(d)?
        .into_iter()
        .map(|(p, q)| (p.0, q.0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_own_and_binance_fields() {
        let a =
            Trade::parse(br#"{"symbol":"BTCUSDT","price":64000.5,"qty":0.1,"ts":1,"trade_id":7}"#)
                .unwrap();
        let b = Trade::parse(br#"{"s":"BTCUSDT","p":"64000.5","q":"0.1","T":1,"t":7}"#).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn rejects_bad_trades() {
        assert!(Trade::parse(b"{").unwrap_err().contains("malformed"));
        let latin1 = Trade::parse(b"{\"symbol\":\"\xe9\",\"price\":1,\"ts\":1}").unwrap_err();
        assert!(latin1.contains("not UTF-8"), "{latin1}");
        assert!(Trade::parse(br#"{"symbol":"X","price":-1,"ts":1}"#).is_err());
        assert!(Trade::parse(br#"{"symbol":"","price":1,"ts":1}"#).is_err());
        let bad = Trade::parse(br#"{"symbol":"X","price":"12x","ts":1}"#).unwrap_err();
        assert!(bad.contains("invalid float literal"), "{bad}");
        let bad = Trade::parse(br#"{"symbol":"X","price":true,"ts":1}"#).unwrap_err();
        assert!(bad.contains("a number or a decimal string"), "{bad}");
        let whole = Trade::parse(br#"{"symbol":"X","price":64000,"qty":" 2 ","ts":1}"#).unwrap();
        assert_eq!((whole.price, whole.qty), (64000.0, 2.0));
    }

    #[test]
    fn formats_iso_time() {
        assert_eq!(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_ms(1_753_865_123_123), "2025-07-30T08:45:23.123Z");
        assert_eq!(iso8601_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn events_by_subject() {
        let depth = Event::parse(
            "TRADE.depth.BTCUSDT",
            br#"{"s":"BTCUSDT","b":[["64000.5","1.5"]],"a":[[64001.5,2]],"E":5}"#,
        )
        .unwrap();
        let Event::Depth(d) = depth else { panic!() };
        assert_eq!(d.mid(), Some(64001.0));
        let ohlcv = Event::parse(
            "market.data.ohlcv.AAPL",
            br#"{"ticker":"AAPL","open":1,"high":2,"low":0.5,"close":"1.5","volume":10,"timestamp":9}"#,
        )
        .unwrap();
        assert!(matches!(ohlcv, Event::Ohlcv(o) if o.close == 1.5 && o.ts == 9));
        let p = Event::parse(
            "predictions.normal.AAPL",
            br#"{"type":"prediction","ticker":"AAPL","data":{"predicted_price":155.5,"confidence":0.87},"metadata":{"model_version":"v1.0","timestamp":"2025-12-17T10:00:00Z"}}"#,
        )
        .unwrap();
        assert!(matches!(p, Event::Prediction(p) if p.data.confidence == 0.87));
        assert_eq!(Event::parse("x.y", b"not json").unwrap(), Event::Other);
        assert!(
            Event::parse("market.data.ohlcv.X", b"{}")
                .unwrap_err()
                .contains("malformed OHLCV")
        );
    }
}
