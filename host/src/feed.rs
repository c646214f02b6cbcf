//! Replays a file of market events onto the bus.
//!
//! Each line of the NDJSON file is either a trade (`{"symbol": ..}`),
//! published on `TRADE.trade.<SYMBOL>`, or an envelope
//! `{"subject": "...", "data": {...}}` published as is. Bad lines are
//! reported with their line number and skipped.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::bus::{Bus, BusMessage};

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedReport {
    /// Messages published.
    pub published: u64,
    /// Lines skipped, with the reason (first 20 kept).
    pub skipped: Vec<String>,
    /// Lines skipped in total.
    pub skipped_total: u64,
}

/// How fast to replay.
#[derive(Debug, Clone, Copy)]
pub struct FeedPace {
    /// Messages per second; `None` is as fast as the host keeps up.
    pub rate: Option<f64>,
    /// Pause while the host has more than this many messages queued.
    pub max_backlog: u64,
}

impl Default for FeedPace {
    fn default() -> Self {
        FeedPace {
            rate: None,
            max_backlog: 4096,
        }
    }
}

/// Turns one line into a message.
pub fn parse_line(line: &str) -> Result<BusMessage, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if let (Some(subject), Some(data)) = (v.get("subject").and_then(Value::as_str), v.get("data")) {
        return Ok(BusMessage::new(subject, data.to_string()));
    }
    let symbol = v
        .get("symbol")
        .or_else(|| v.get("s"))
        .and_then(Value::as_str)
        .ok_or("neither a trade with a `symbol` nor a `{subject, data}` envelope")?;
    Ok(BusMessage::new(
        format!("TRADE.trade.{symbol}"),
        line.trim().to_owned(),
    ))
}

/// Publishes every line of `path`; `backlog` reports the host's queue.
pub async fn replay(
    bus: &dyn Bus,
    path: &Path,
    pace: FeedPace,
    backlog: impl Fn() -> u64,
) -> anyhow::Result<FeedReport> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut lines = BufReader::new(file).lines();
    let mut report = FeedReport::default();
    let start = Instant::now();
    let mut n = 0u64;
    while let Some(line) = lines
        .next_line()
        .await
        .with_context(|| format!("cannot read {}", path.display()))?
    {
        n += 1;
        if line.trim().is_empty() {
            continue;
        }
        let msg = match parse_line(&line) {
            Ok(m) => m,
            Err(e) => {
                report.skipped_total += 1;
                if report.skipped.len() < 20 {
                    report.skipped.push(format!("{}:{n}: {e}", path.display()));
                }
                continue;
            }
        };
        while backlog() > pace.max_backlog {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if let Some(rate) = pace.rate {
            let due = start + Duration::from_secs_f64(report.published as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        bus.publish(msg)
            .await
            .with_context(|| format!("{}:{n}: publish failed", path.display()))?;
        report.published += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::parse_line;

    #[test]
    fn trades_and_envelopes() {
        let m = parse_line(r#"{"symbol":"BTCUSDT","price":1,"ts":1}"#).unwrap();
        assert_eq!(m.subject, "TRADE.trade.BTCUSDT");
        let m = parse_line(r#"{"subject":"alerts.created","data":{"alert":{"id":"a"}}}"#).unwrap();
        assert_eq!(m.subject, "alerts.created");
        assert_eq!(&m.payload[..], br#"{"alert":{"id":"a"}}"#);
        assert!(parse_line("{").unwrap_err().contains("not JSON"));
        assert!(parse_line(r#"{"x":1}"#).is_err());
    }
}
