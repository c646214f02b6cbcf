//! Native Rust versions of the demo components' logic: the oracle the
//! integration tests compare the components' output with.

use std::collections::{BTreeMap, HashMap};

use market::{Trade, sma_pair};
use serde_json::Value;
use weir::bus::BusMessage;

/// A signal as the oracle expects it.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    /// Instrument.
    pub symbol: String,
    /// `buy` or `sell`.
    pub signal: String,
    /// Trade that caused it.
    pub trade_id: u64,
}

/// Expected signals, per symbol in order, for fast/slow windows.
pub fn sma_signals(msgs: &[BusMessage], fast: usize, slow: usize) -> BTreeMap<String, Vec<Signal>> {
    let mut windows: HashMap<String, (Vec<f64>, i8)> = HashMap::new();
    let mut out: BTreeMap<String, Vec<Signal>> = BTreeMap::new();
    for m in msgs
        .iter()
        .filter(|m| m.subject.starts_with("TRADE.trade."))
    {
        let Ok(t) = Trade::parse(&m.payload) else {
            continue;
        };
        let (prices, side) = windows.entry(t.symbol.clone()).or_default();
        prices.push(t.price);
        if prices.len() > slow {
            prices.remove(0);
        }
        let Some((f, s)) = sma_pair(prices, fast, slow) else {
            continue;
        };
        let new = if f > s {
            1
        } else if f < s {
            -1
        } else {
            *side
        };
        if *side != 0 && new != *side {
            out.entry(t.symbol.clone()).or_default().push(Signal {
                symbol: t.symbol.clone(),
                signal: if new == 1 { "buy" } else { "sell" }.into(),
                trade_id: t.trade_id,
            });
        }
        *side = new;
    }
    out
}

/// Signals as the component published them, per symbol in arrival order.
pub fn published_signals(msgs: &[BusMessage]) -> BTreeMap<String, Vec<Signal>> {
    let mut out: BTreeMap<String, Vec<Signal>> = BTreeMap::new();
    for m in msgs {
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        let s = Signal {
            symbol: v["symbol"].as_str().unwrap_or_default().into(),
            signal: v["signal"].as_str().unwrap_or_default().into(),
            trade_id: v["trade_id"].as_u64().unwrap_or_default(),
        };
        assert_eq!(m.subject, format!("signals.{}", s.symbol));
        out.entry(s.symbol.clone()).or_default().push(s);
    }
    out
}

/// A price alert spec for the oracle.
#[derive(Debug, Clone)]
pub struct AlertSpec {
    /// Id.
    pub id: String,
    /// Instrument.
    pub symbol: String,
    /// True for `above`.
    pub above: bool,
    /// Threshold.
    pub threshold: f64,
}

/// Expected `(alert_id, trade_id)` pairs in trade order, given the config
/// specs and the `(alert id, symbol, above, threshold)` of alerts.created
/// messages as they appear in the stream.
pub fn triggered_alerts(
    msgs: &[BusMessage],
    config: &[AlertSpec],
    created: &[AlertSpec],
) -> Vec<(String, u64)> {
    let mut specs: Vec<AlertSpec> = config.to_vec();
    let mut created = created.iter();
    let mut held: HashMap<String, bool> = HashMap::new();
    let mut out = Vec::new();
    for m in msgs {
        if m.subject == "alerts.created" {
            specs.extend(created.next().cloned());
            continue;
        }
        let Ok(t) = Trade::parse(&m.payload) else {
            continue;
        };
        for s in specs.iter().filter(|s| s.symbol == t.symbol) {
            let now = if s.above {
                t.price > s.threshold
            } else {
                t.price < s.threshold
            };
            let before = held.insert(s.id.clone(), now).unwrap_or(false);
            if now && !before {
                out.push((s.id.clone(), t.trade_id));
            }
        }
    }
    out
}
