//! Writes weir's sample market data: a few thousand trades for four symbols
//! as NDJSON, from a fixed seed, so every run and every test sees the same
//! events. Usage: `gen-trades [OUT]` (default `examples/data/trades.ndjson`).
//!
//! Prices follow a random walk whose drift changes regime every few hundred
//! trades, so moving averages cross a realistic number of times. A few
//! `alerts.created` envelopes are mixed in, as the alert service sends them.

use serde_json::json;

/// splitmix64: tiny, fast, and the same on every platform and version.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly normal (sum of uniforms), mean 0, sd 1.
    fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.unit()).sum::<f64>() - 6.0
    }
}

struct Symbol {
    name: &'static str,
    price: f64,
    /// Price decimals.
    decimals: i32,
    /// Per-trade volatility.
    vol: f64,
    drift: f64,
    next_id: u64,
}

/// 2025-07-30T08:00:00Z in milliseconds.
const START_MS: i64 = 1_753_862_400_000;
const SEED: u64 = 0x5EED_0F3E;
const TRADES: usize = 6000;

#[cfg(test)]
fn generate() -> String {
    let mut out = Vec::new();
    let _ = write_trades(&mut out, TRADES);
    String::from_utf8(out).unwrap_or_default()
}

/// Writes `trades` trades (the committed sample is the first 6000, with
/// one `alerts.created` envelope after the 150th), streaming: a million
/// trades take no more memory than six thousand.
fn write_trades(out: &mut impl std::io::Write, trades: usize) -> std::io::Result<()> {
    let mut rng = Rng(SEED);
    let mut symbols = [
        Symbol {
            name: "BTCUSDT",
            price: 64_000.0,
            decimals: 2,
            vol: 0.0006,
            drift: 0.0,
            next_id: 3_000_000_000,
        },
        Symbol {
            name: "ETHUSDT",
            price: 3_400.0,
            decimals: 2,
            vol: 0.0008,
            drift: 0.0,
            next_id: 1_500_000_000,
        },
        Symbol {
            name: "SOLUSDT",
            price: 150.0,
            decimals: 3,
            vol: 0.0012,
            drift: 0.0,
            next_id: 800_000_000,
        },
        Symbol {
            name: "BNBUSDT",
            price: 580.0,
            decimals: 2,
            vol: 0.0007,
            drift: 0.0,
            next_id: 900_000_000,
        },
    ];
    let mut ts = START_MS;
    for i in 0..trades {
        if i == 150 {
            let alert = json!({
                "subject": "alerts.created",
                "data": {
                    "id": "7d1f6c52-2f4e-4b8e-9a51-0c3f1d2a9e10",
                    "timestamp": "2025-07-30T08:00:30Z",
                    "user_id": "user-42",
                    "alert": {
                        "id": "alert-eth-dip",
                        "name": "ETH dip",
                        "nl_description": "Alert me when ETHUSDT goes below 3,380",
                        "event_type": "PRICE_EVENT",
                        "sub_event": "PRICE_THRESHOLD",
                        "template_id": null
                    },
                    "correlation_id": "req-12345"
                }
            });
            writeln!(out, "{alert}")?;
        }
        ts += 20 + (rng.unit() * 180.0) as i64;
        let s = &mut symbols[(rng.next_u64() % 4) as usize];
        if rng.unit() < 1.0 / 250.0 || i == 0 {
            // A new regime: trending up, down, or flat.
            s.drift = (rng.unit() - 0.5) * s.vol * 0.25;
        }
        s.price *= 1.0 + s.drift + s.vol * rng.normal();
        let scale = 10f64.powi(s.decimals);
        let price = (s.price * scale).round() / scale;
        let qty = ((0.001 + rng.unit() * rng.unit() * 5.0) * 1e4).round() / 1e4;
        s.next_id += 1;
        let trade =
            json!({"symbol": s.name, "price": price, "qty": qty, "ts": ts, "trade_id": s.next_id});
        writeln!(out, "{trade}")?;
    }
    out.flush()
}

/// Candles per ticker in the OHLCV sample.
const CANDLES: usize = 120;

/// One-minute OHLCV candles for three tickers, interleaved by time, as
/// `{subject, data}` envelopes on `market.data.ohlcv.<TICKER>` (seed 003),
/// for the prediction pipeline.
fn write_candles(out: &mut impl std::io::Write) -> std::io::Result<()> {
    let mut rng = Rng(0x0c1c_0003);
    let mut tickers = [("AAPL", 211.40), ("GOOGL", 176.20), ("MSFT", 498.80)];
    let start = 1_753_866_000_000i64; // 2025-07-30T09:00:00Z
    for i in 0..CANDLES {
        for (ticker, close) in &mut tickers {
            let open = *close;
            let path: Vec<f64> = (0..4)
                .scan(open, |p, _| {
                    *p *= 1.0 + 0.0015 * rng.normal();
                    Some(*p)
                })
                .collect();
            let hi = path.iter().copied().fold(open, f64::max);
            let lo = path.iter().copied().fold(open, f64::min);
            *close = path[3];
            let r = |x: f64| (x * 100.0).round() / 100.0;
            let candle = json!({
                "subject": format!("market.data.ohlcv.{ticker}"),
                "data": {
                    "ticker": ticker,
                    "open": r(open),
                    "high": r(hi),
                    "low": r(lo),
                    "close": r(*close),
                    "volume": (1000.0 + rng.unit() * 9000.0).round(),
                    "timestamp": start + i as i64 * 60_000,
                }
            });
            writeln!(out, "{candle}")?;
        }
    }
    out.flush()
}

/// `gen-trades [OUT] [TRADES]`: the sample data (6000 trades by default);
/// `gen-trades --ohlcv [OUT]`: the OHLCV candles of the prediction pipeline.
fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--ohlcv") {
        let out = args
            .nth(1)
            .unwrap_or_else(|| "examples/data/ohlcv.ndjson".into());
        let mut file = std::io::BufWriter::new(std::fs::File::create(&out)?);
        write_candles(&mut file)?;
        eprintln!("wrote {} candles to {out}", CANDLES * 3);
        return Ok(());
    }
    let out = args
        .next()
        .unwrap_or_else(|| "examples/data/trades.ndjson".into());
    let n = match args.next() {
        None => TRADES,
        Some(n) => n
            .parse()
            .map_err(|e| std::io::Error::other(format!("TRADES {n:?}: {e}")))?,
    };
    let mut file = std::io::BufWriter::new(std::fs::File::create(&out)?);
    write_trades(&mut file, n)?;
    eprintln!("wrote {n} trades to {out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_sample_data_is_what_the_generator_makes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/trades.ndjson");
        let committed =
            std::fs::read_to_string(path).expect("examples/data/trades.ndjson is committed");
        assert!(
            committed == super::generate(),
            "sample data differs from the generator: run `just gen-data`"
        );
    }

    #[test]
    fn committed_candles_are_what_the_generator_makes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/ohlcv.ndjson");
        let committed =
            std::fs::read_to_string(path).expect("examples/data/ohlcv.ndjson is committed");
        let mut made = Vec::new();
        super::write_candles(&mut made).unwrap();
        assert!(
            committed.as_bytes() == made,
            "OHLCV sample differs from the generator: run `just gen-data`"
        );
        assert_eq!(committed.lines().count(), super::CANDLES * 3);
    }

    #[test]
    fn covers_four_symbols_with_thousands_of_trades() {
        let data = super::generate();
        assert_eq!(
            data.lines().filter(|l| l.contains("\"trade_id\"")).count(),
            super::TRADES
        );
        for s in ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"] {
            assert!(data.lines().filter(|l| l.contains(s)).count() > 1000, "{s}");
        }
    }
}
