//! Market event types shared by weir's example components.
//!
//! Plain Rust with no WIT: components parse their payloads with it, and the
//! sample data generator writes the same shape.

use serde::{Deserialize, Deserializer, Serialize};

/// One executed trade, as published on `TRADE.trade.<SYMBOL>`.
///
/// Accepts weir's own field names and Binance's short ones (`s`, `p`, `q`,
/// `T`, `t`), with prices and quantities as numbers or decimal strings.
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
    /// Parses a trade and checks that its numbers make sense.
    pub fn parse(payload: &[u8]) -> Result<Trade, String> {
        let trade: Trade =
            serde_json::from_slice(payload).map_err(|e| format!("malformed trade JSON: {e}"))?;
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

fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        N(f64),
        S(String),
    }
    match Num::deserialize(d)? {
        Num::N(n) => Ok(n),
        Num::S(s) => s.trim().parse().map_err(serde::de::Error::custom),
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

/// Simple moving averages over the newest prices of a window.
///
/// `prices` is oldest first; returns `None` until it holds `slow` prices.
pub fn sma_pair(prices: &[f64], fast: usize, slow: usize) -> Option<(f64, f64)> {
    if fast == 0 || slow == 0 || prices.len() < slow || prices.len() < fast {
        return None;
    }
    let mean = |n: usize| prices[prices.len() - n..].iter().sum::<f64>() / n as f64;
    Some((mean(fast), mean(slow)))
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
        assert!(Trade::parse(br#"{"symbol":"X","price":-1,"ts":1}"#).is_err());
        assert!(Trade::parse(br#"{"symbol":"","price":1,"ts":1}"#).is_err());
    }

    #[test]
    fn formats_iso_time() {
        assert_eq!(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_ms(1_753_865_123_123), "2025-07-30T08:45:23.123Z");
        assert_eq!(iso8601_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn sma_needs_full_window() {
        assert_eq!(sma_pair(&[1.0, 2.0], 1, 3), None);
        assert_eq!(sma_pair(&[1.0, 2.0, 3.0], 1, 3), Some((3.0, 2.0)));
    }
}
