//! The prediction half of the seeds' pipeline (seed 003).
//!
//! Consumes OHLCV candles on `market.data.ohlcv.<TICKER>` and publishes one
//! prediction per candle on `predictions.<kind>.<TICKER>`, in seed 003's
//! format. `kind` is `earnings` for the tickers listed in config `earnings`,
//! else `normal`. The model is deliberately small: the next close is this
//! close moved by the mean return of the last `window` candles, and the
//! confidence falls as those returns scatter.
//!
//! With `publish = "jetstream"` (the default) each prediction is stored in
//! the PREDICTIONS stream with `Nats-Msg-Id` `pred-<TICKER>-<ts>`, so a
//! redelivered candle stores its prediction once; `publish = "core"` is for
//! the embedded bus, which has no JetStream. The newest prediction per
//! ticker is also cached as `prediction:<TICKER>` for the explainer.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_guest::events::{PredictionData, PredictionMetadata, iso8601_ms};
use weir_guest::prelude::*;

/// Closes remembered per ticker.
#[derive(Default, Serialize, Deserialize)]
struct History {
    closes: Vec<f64>,
    /// Open time of the newest candle handled (redeliveries are skipped).
    last_ts: i64,
}

struct Predictor;

impl Handler for Predictor {
    fn handle(msg: Message, _delivery: Delivery) -> Result<(), HandleError> {
        let Event::Ohlcv(candle) = msg.event()? else {
            return Err(reject(format!("not a candle subject: {}", msg.subject)));
        };
        let window = config::get_or("window", 10usize).max(2);
        let key = format!("history:{}", candle.ticker);
        let mut history: History = cache::get_json(&key)?.unwrap_or_default();
        if candle.ts <= history.last_ts {
            return Ok(()); // already predicted from this candle
        }
        history.last_ts = candle.ts;
        history.closes.push(candle.close);
        if history.closes.len() > window + 1 {
            history.closes.remove(0);
        }
        let returns: Vec<f64> = history
            .closes
            .windows(2)
            .map(|w| (w[1] - w[0]) / w[0])
            .collect();
        let n = returns.len().max(1) as f64;
        let mean = returns.iter().sum::<f64>() / n;
        let spread = (returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
        let prediction = Prediction {
            kind: "prediction".into(),
            ticker: candle.ticker.clone(),
            data: PredictionData {
                predicted_price: round(candle.close * (1.0 + mean), 4),
                confidence: round((0.95 - spread * 20.0).clamp(0.5, 0.95), 4),
            },
            metadata: PredictionMetadata {
                model_version: "mean-return-v1".into(),
                timestamp: iso8601_ms(candle.ts),
            },
        };
        let earnings: Vec<String> = config::json("earnings")
            .map_err(reject)?
            .unwrap_or_default();
        let kind = if earnings.contains(&candle.ticker) {
            "earnings"
        } else {
            "normal"
        };
        let out =
            Outgoing::new(format!("predictions.{kind}.{}", candle.ticker)).json(&prediction)?;
        if config::get("publish").as_deref() == Some("core") {
            out.publish()?;
        } else {
            let msg_id = format!("pred-{}-{}", candle.ticker, candle.ts);
            out.jetstream(Some(&msg_id))?;
        }
        let day = Some(Duration::from_secs(24 * 3600));
        cache::set_json(&format!("prediction:{}", candle.ticker), &prediction, day)?;
        cache::set_json(&key, &history, day)?;
        Ok(())
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

weir_guest::export_handler!(Predictor);
