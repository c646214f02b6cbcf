//! The market event a message carries, decoded at most once however many
//! subscribers receive the message: the subscribers of one publish on the
//! embedded bus share it with the message's payload, so two components on
//! `TRADE.trade.>` and the latest-value cache parse each trade once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use weir_guest::events::{Depth, Event, Ohlcv, Trade};

/// What the decoder made of a market message.
#[derive(Debug, Clone, PartialEq)]
pub enum MarketEvent {
    /// From `TRADE.trade.*`.
    Trade(Trade),
    /// From `TRADE.depth.*`.
    Depth(Depth),
    /// From `market.data.ohlcv.*`.
    Ohlcv(Ohlcv),
}

/// Which kind of market data a subject carries, by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarketKind {
    /// `TRADE.trade.*`
    Trade,
    /// `TRADE.depth.*`
    Depth,
    /// `market.data.ohlcv.*`
    Ohlcv,
}

impl MarketKind {
    /// The kind of market data on `subject`, if it carries any.
    pub fn of(subject: &str) -> Option<MarketKind> {
        if subject.starts_with("TRADE.trade.") {
            Some(MarketKind::Trade)
        } else if subject.starts_with("TRADE.depth.") {
            Some(MarketKind::Depth)
        } else if subject.starts_with("market.data.ohlcv.") {
            Some(MarketKind::Ohlcv)
        } else {
            None
        }
    }
}

/// Market messages decoded in this process.
static DECODES: AtomicU64 = AtomicU64::new(0);

/// How many market messages this process has decoded (each once however
/// many subscribers it reached on the embedded bus).
pub fn decodes() -> u64 {
    DECODES.load(Ordering::Relaxed)
}

/// Decodes a market message: `None` when the subject carries no market
/// data, else the event or the decoder's reason for refusing it.
pub fn decode(subject: &str, payload: &[u8]) -> Option<Result<MarketEvent, String>> {
    MarketKind::of(subject)?;
    DECODES.fetch_add(1, Ordering::Relaxed);
    Some(match Event::parse(subject, payload) {
        Ok(Event::Trade(t)) => Ok(MarketEvent::Trade(t)),
        Ok(Event::Depth(d)) => Ok(MarketEvent::Depth(d)),
        Ok(Event::Ohlcv(c)) => Ok(MarketEvent::Ohlcv(c)),
        // Not reached: the prefixes above are the parser's.
        Ok(_) => Err(format!("{subject} carries no market event")),
        Err(e) => Err(e),
    })
}

/// The shared slot for a message's decoded event: empty (and free) for
/// a subject that carries no market data. Clones share the slot; the
/// default one is a slot (for a message built field by field).
#[derive(Clone)]
pub struct Decoded(Option<Arc<OnceLock<Result<MarketEvent, String>>>>);

impl Default for Decoded {
    fn default() -> Decoded {
        Decoded(Some(Arc::default()))
    }
}

impl Decoded {
    /// A slot for a message on `subject`.
    pub fn for_subject(subject: &str) -> Decoded {
        Decoded(MarketKind::of(subject).map(|_| Arc::default()))
    }

    /// The event, decoding it on the first call; `None` when the slot
    /// is empty.
    pub(crate) fn get(
        &self,
        subject: &str,
        payload: &[u8],
    ) -> Option<&Result<MarketEvent, String>> {
        let cell = self.0.as_ref()?;
        Some(cell.get_or_init(|| {
            decode(subject, payload)
                .unwrap_or_else(|| Err(format!("{subject} carries no market event")))
        }))
    }

    /// Whether the event has been decoded already (tests count decodes).
    pub fn is_decoded(&self) -> bool {
        self.0.as_ref().is_some_and(|c| c.get().is_some())
    }
}

impl std::fmt::Debug for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_decoded() {
            "Decoded(yes)"
        } else {
            "Decoded(no)"
        })
    }
}

/// The slot is derived from the subject and payload: messages compare by those.
impl PartialEq for Decoded {
    fn eq(&self, _: &Decoded) -> bool {
        true
    }
}

impl Eq for Decoded {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_decode_and_other_subjects_have_no_slot() {
        let payload = br#"{"symbol":"BTCUSDT","price":64000.5,"qty":0.1,"ts":1,"trade_id":7}"#;
        let a = Decoded::for_subject("TRADE.trade.BTCUSDT");
        let b = a.clone();
        assert!(!b.is_decoded());
        let Some(Ok(MarketEvent::Trade(t))) = a.get("TRADE.trade.BTCUSDT", payload) else {
            panic!("a trade")
        };
        assert_eq!(t.price, 64000.5);
        assert!(b.is_decoded(), "the clone sees the first decode");
        assert!(
            Decoded::for_subject("signals.BTCUSDT")
                .get("signals.BTCUSDT", payload)
                .is_none()
        );
        let bad = Decoded::for_subject("TRADE.depth.X");
        let reason = bad
            .get("TRADE.depth.X", b"{")
            .unwrap()
            .as_ref()
            .unwrap_err();
        assert!(reason.contains("malformed depth JSON"), "{reason}");
        assert_eq!(
            decode("market.data.ohlcv.AAPL", b"[]").map(|r| r.is_err()),
            Some(true)
        );
        assert_eq!(decode("predictions.normal.AAPL", b"{}"), None);
    }
}
