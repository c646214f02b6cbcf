//! The explanation half of the seeds' pipeline: answers requests on
//! `explanations.request` (request-reply, seed 004's template match flow).
//!
//! A request is `{"ticker": "AAPL", "correlation_id": "req-1"}`; the answer
//! goes to its reply-to and carries the same `correlation_id`, with the
//! newest prediction the predictor cached for the ticker and a sentence
//! about it, or an `error` when there is none yet. Answers are also kept
//! on `explanations.response` for whoever audits them.

use serde::Deserialize;
use weir_guest::messaging::reply_json;
use weir_guest::prelude::*;

#[derive(Deserialize)]
struct Request {
    ticker: String,
}

struct Explainer;

impl Handler for Explainer {
    fn handle(msg: Message, _delivery: Delivery) -> Result<(), HandleError> {
        let request: Request = msg.json()?;
        let answer = match cache::get_json::<Prediction>(&format!("prediction:{}", request.ticker))?
        {
            Some(p) => {
                let trend = if p.data.confidence >= 0.8 {
                    "steady"
                } else {
                    "choppy"
                };
                serde_json::json!({
                    "ticker": p.ticker,
                    "prediction": p,
                    "explanation": format!(
                        "{}: the model expects {:.4} next, with confidence {:.2}, from the mean return of recent candles; the recent moves look {trend}.",
                        p.ticker, p.data.predicted_price, p.data.confidence
                    ),
                })
            }
            None => serde_json::json!({
                "ticker": request.ticker,
                "error": format!("no prediction for {} yet", request.ticker),
            }),
        };
        reply_json(&msg, &answer)?;
        if config::get("audit").as_deref() != Some("off") {
            Outgoing::new("explanations.response")
                .json(&answer)?
                .publish()?;
        }
        Ok(())
    }
}

weir_guest::export_handler!(Explainer);
