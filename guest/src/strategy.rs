//! Strategies over market data the host decoded: implement [`Strategy`]
//! and export it with [`export_strategy!`](crate::export_strategy).
//!
//! weir decodes each trade, order book and candle once, natively, and
//! hands the component typed records (the `weir:host/market-handler`
//! interface): no JSON is parsed in the sandbox. Trades come many per
//! call, as columns ([`Trades`]); [`Strategy::on_trade`] sees them one at
//! a time, [`Strategy::on_trades`] all of a call's at once (to read and
//! write the state of all its symbols in one cache call). Every other
//! message reaches [`Strategy::on_message`] as bytes.
//!
//! ```ignore
//! use weir_guest::prelude::*;
//!
//! struct Breakout;
//!
//! impl Strategy for Breakout {
//!     fn on_trade(trade: &Trade, _delivery: &Delivery) -> Result<(), HandleError> {
//!         if trade.price > 65_000.0 {
//!             Outgoing::new(format!("signals.{}", trade.symbol))
//!                 .json(&serde_json::json!({ "symbol": trade.symbol, "signal": "buy" }))?
//!                 .publish()?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! weir_guest::export_strategy!(Breakout);
//! ```

use crate::events::{Depth, Ohlcv, Trade};
use crate::market_bindings::exports::weir::host::market_handler;
use crate::{Delivery, HandleError, Message, market};

/// What a strategy implements; every method has a default, so it
/// implements only what it subscribes to. By default a market event it
/// does not handle is acknowledged and ignored, and so is any other
/// message.
pub trait Strategy {
    /// One trade.
    fn on_trade(trade: &Trade, delivery: &Delivery) -> Result<(), HandleError> {
        let _ = (trade, delivery);
        Ok(())
    }

    /// The trades of one call, in arrival order: one result per trade
    /// handled, stopping after the first retry (weir retries it in place
    /// and delivers the ones after it again); a rejected trade is
    /// dead-lettered and the rest go on. By default
    /// [`on_trade`](Strategy::on_trade) for each.
    fn on_trades(trades: &Trades) -> Vec<Result<(), HandleError>> {
        trades.each(Self::on_trade)
    }

    /// One order book snapshot.
    fn on_depth(book: &Depth, delivery: &Delivery) -> Result<(), HandleError> {
        let _ = (book, delivery);
        Ok(())
    }

    /// One OHLCV candle.
    fn on_ohlcv(candle: &Ohlcv, delivery: &Delivery) -> Result<(), HandleError> {
        let _ = (candle, delivery);
        Ok(())
    }

    /// Any message that is not market data (or that has a reply-to), as bytes.
    fn on_message(msg: Message, delivery: Delivery) -> Result<(), HandleError> {
        let _ = (msg, delivery);
        Ok(())
    }
}

/// The trades of one call, as the host packed them (`wit/handler.wit`,
/// `market-handler`): [`Trades::iter`] reads them one by one.
pub struct Trades {
    /// Every symbol, each once, one after another.
    symbols: String,
    /// Price and quantity per trade.
    prices: Vec<f64>,
    /// [`TRADE_WORDS`] per trade.
    words: Vec<u64>,
    /// The stream they came from.
    stream: Option<String>,
    /// Each distinct symbol: start and end in `symbols`, in order.
    names: Vec<(usize, usize)>,
    /// Each trade's symbol, as an index into `names`.
    index: Vec<u32>,
}

/// Numbers per trade in the packed `words`.
pub const TRADE_WORDS: usize = 5;

/// One trade of a [`Trades`], borrowed from its lists.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TradeRef<'a> {
    /// Instrument, e.g. `BTCUSDT`.
    pub symbol: &'a str,
    /// Where `symbol` is among [`Trades::symbols`]: an index for state
    /// kept per symbol through a call.
    pub symbol_index: usize,
    /// Execution price.
    pub price: f64,
    /// Executed quantity.
    pub qty: f64,
    /// Trade time, milliseconds since the Unix epoch.
    pub ts: i64,
    /// Exchange trade id (0 when the message had none).
    pub trade_id: u64,
    /// Its stream sequence, when it came from a stream.
    pub sequence: Option<u64>,
    /// 1 on first delivery, then 2, 3, … on redelivery.
    pub attempt: u32,
}

impl TradeRef<'_> {
    /// The trade as an owned [`Trade`].
    pub fn to_trade(&self) -> Trade {
        Trade {
            symbol: self.symbol.to_owned(),
            price: self.price,
            qty: self.qty,
            ts: self.ts,
            trade_id: self.trade_id,
        }
    }
}

impl Trades {
    fn new(raw: market_handler::Trades) -> Result<Trades, HandleError> {
        Trades::from_parts(raw.symbols, raw.prices, raw.words, raw.stream)
    }

    /// Reads a packed call back, checking that the lists agree on the
    /// number of trades and that every symbol lies within `symbols` (weir
    /// always sends them so; anything else is a retry).
    pub fn from_parts(
        symbols: String,
        prices: Vec<f64>,
        words: Vec<u64>,
        stream: Option<String>,
    ) -> Result<Trades, HandleError> {
        let n = words.len() / TRADE_WORDS;
        if !words.len().is_multiple_of(TRADE_WORDS) || prices.len() != 2 * n {
            return Err(crate::retry(
                "on-trades: its lists disagree on the number of trades",
            ));
        }
        let mut names: Vec<(usize, usize)> = Vec::new();
        let mut index = Vec::with_capacity(n);
        for w in words.chunks_exact(TRADE_WORDS) {
            let start = (w[0] >> 32) as usize;
            let end = start.checked_add((w[0] & u64::from(u32::MAX)) as usize);
            let Some(end) = end.filter(|&end| symbols.get(start..end).is_some()) else {
                return Err(crate::retry("on-trades: a symbol lies outside `symbols`"));
            };
            // Symbols are laid out in the order trades first name them.
            let at = match names.iter().position(|&(s, _)| s == start) {
                Some(at) => at,
                None => {
                    names.push((start, end));
                    names.len() - 1
                }
            };
            index.push(at as u32);
        }
        Ok(Trades {
            symbols,
            prices,
            words,
            stream,
            names,
            index,
        })
    }

    /// How many trades.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The symbols the trades name, each once, in the order they first
    /// appear (a trade's `symbol_index` counts in this order).
    pub fn symbols(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.names.iter().map(|&(s, e)| &self.symbols[s..e])
    }

    /// The JetStream stream they came from, if they did.
    pub fn stream(&self) -> Option<&str> {
        self.stream.as_deref()
    }

    /// Trade `i`.
    pub fn get(&self, i: usize) -> Option<TradeRef<'_>> {
        let w = self.words.get(i * TRADE_WORDS..(i + 1) * TRADE_WORDS)?;
        let symbol_index = *self.index.get(i)? as usize;
        let &(start, end) = self.names.get(symbol_index)?;
        Some(TradeRef {
            symbol: self.symbols.get(start..end)?,
            symbol_index,
            price: *self.prices.get(2 * i)?,
            qty: *self.prices.get(2 * i + 1)?,
            ts: w[1] as i64,
            trade_id: w[2],
            sequence: Some(w[3]).filter(|&s| s != 0),
            attempt: w[4] as u32,
        })
    }

    /// The trades in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = TradeRef<'_>> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// `handle` for each trade in order, stopping after the first retry:
    /// the contract of [`Strategy::on_trades`] over a one-trade handler.
    /// One [`Trade`] and one [`Delivery`] are reused for the whole call.
    pub fn each(
        &self,
        mut handle: impl FnMut(&Trade, &Delivery) -> Result<(), HandleError>,
    ) -> Vec<Result<(), HandleError>> {
        let mut out = Vec::with_capacity(self.len());
        let mut trade = Trade {
            symbol: String::new(),
            price: 0.0,
            qty: 0.0,
            ts: 0,
            trade_id: 0,
        };
        let mut delivery = Delivery {
            stream: self.stream.clone(),
            sequence: None,
            attempt: 1,
        };
        for t in self.iter() {
            trade.symbol.clear();
            trade.symbol.push_str(t.symbol);
            trade.price = t.price;
            trade.qty = t.qty;
            trade.ts = t.ts;
            trade.trade_id = t.trade_id;
            delivery.sequence = t.sequence;
            delivery.attempt = t.attempt;
            let result = handle(&trade, &delivery);
            let retry = matches!(result, Err(HandleError::Retry(_)));
            out.push(result);
            if retry {
                break;
            }
        }
        out
    }
}

/// `handler.handle` of a strategy.
#[doc(hidden)]
pub fn handle<S: Strategy>(msg: Message, delivery: Delivery) -> Result<(), HandleError> {
    S::on_message(msg, delivery)
}

/// `batch-handler.handle-batch` of a strategy: its messages one by one.
#[doc(hidden)]
pub fn handle_batch<S: Strategy>(batch: crate::batch::Batch) -> Vec<Result<(), HandleError>> {
    crate::handle_each(&batch, S::on_message)
}

/// `market-handler.on-trades` of a strategy.
#[doc(hidden)]
pub fn on_trades<S: Strategy>(raw: market_handler::Trades) -> Vec<Result<(), HandleError>> {
    match Trades::new(raw) {
        Ok(trades) => S::on_trades(&trades),
        Err(e) => vec![Err(e)],
    }
}

/// `market-handler.on-depth` of a strategy.
#[doc(hidden)]
pub fn on_depth<S: Strategy>(book: market::Depth, delivery: Delivery) -> Result<(), HandleError> {
    let levels = |side: Vec<market::Level>| side.into_iter().map(|l| (l.price, l.qty)).collect();
    let book = Depth {
        symbol: book.symbol,
        bids: levels(book.bids),
        asks: levels(book.asks),
        ts: book.ts,
    };
    S::on_depth(&book, &delivery)
}

/// `market-handler.on-ohlcv` of a strategy.
#[doc(hidden)]
pub fn on_ohlcv<S: Strategy>(c: market::Ohlcv, delivery: Delivery) -> Result<(), HandleError> {
    let candle = Ohlcv {
        ticker: c.ticker,
        open: c.open,
        high: c.high,
        low: c.low,
        close: c.close,
        volume: c.volume,
        ts: c.ts,
    };
    S::on_ohlcv(&candle, &delivery)
}

/// Exports a [`Strategy`] as the component's `weir:host/market-handler`
/// (trades, books and candles the host decoded), `handler` and
/// `batch-handler` (every other message, as bytes): the
/// `weir:host/market-strategy` world.
#[macro_export]
macro_rules! export_strategy {
    ($strategy:ty) => {
        #[doc(hidden)]
        pub struct __WeirGuestStrategy;
        impl $crate::bindings::exports::weir::host::handler::Guest for __WeirGuestStrategy {
            fn handle(
                msg: $crate::Message,
                delivery: $crate::Delivery,
            ) -> ::core::result::Result<(), $crate::HandleError> {
                $crate::strategy::handle::<$strategy>(msg, delivery)
            }
        }
        impl $crate::bindings::exports::weir::host::batch_handler::Guest for __WeirGuestStrategy {
            fn handle_batch(
                batch: $crate::batch::Batch,
            ) -> ::std::vec::Vec<::core::result::Result<(), $crate::HandleError>> {
                $crate::strategy::handle_batch::<$strategy>(batch)
            }
        }
        impl $crate::market_bindings::exports::weir::host::market_handler::Guest
            for __WeirGuestStrategy
        {
            fn on_trades(
                trades: $crate::market_bindings::exports::weir::host::market_handler::Trades,
            ) -> ::std::vec::Vec<::core::result::Result<(), $crate::HandleError>> {
                $crate::strategy::on_trades::<$strategy>(trades)
            }
            fn on_depth(
                book: $crate::market::Depth,
                delivery: $crate::Delivery,
            ) -> ::core::result::Result<(), $crate::HandleError> {
                $crate::strategy::on_depth::<$strategy>(book, delivery)
            }
            fn on_ohlcv(
                candle: $crate::market::Ohlcv,
                delivery: $crate::Delivery,
            ) -> ::core::result::Result<(), $crate::HandleError> {
                $crate::strategy::on_ohlcv::<$strategy>(candle, delivery)
            }
        }
        $crate::bindings::export!(__WeirGuestStrategy with_types_in $crate::bindings);
        $crate::market_bindings::export!(__WeirGuestStrategy with_types_in $crate::market_bindings);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(trades: &[(u64, u64, i64, u64)]) -> Vec<u64> {
        trades
            .iter()
            .flat_map(|&(start, len, ts, id)| [start << 32 | len, ts as u64, id, 0, 1])
            .collect()
    }

    #[test]
    fn a_packing_that_does_not_add_up_is_a_retry_not_a_panic() {
        let ok = Trades::from_parts(
            "BTCETH".into(),
            vec![1.0, 2.0, 3.0, 4.0],
            words(&[(0, 3, 5, 1), (3, 3, 6, 2)]),
            None,
        )
        .unwrap();
        assert_eq!(ok.symbols().collect::<Vec<_>>(), ["BTC", "ETH"]);
        assert_eq!(
            ok.get(1).map(|t| (t.symbol, t.qty, t.ts)),
            Some(("ETH", 4.0, 6))
        );
        assert_eq!(ok.get(2), None);
        let retry = |r: Result<Trades, HandleError>| match r {
            Err(HandleError::Retry(why)) => why,
            other => panic!("not a retry: {:?}", other.map(|t| t.len())),
        };
        // One price pair for two trades.
        let why = retry(Trades::from_parts(
            "BTC".into(),
            vec![1.0, 2.0],
            words(&[(0, 3, 5, 1), (0, 3, 6, 2)]),
            None,
        ));
        assert!(why.contains("disagree"), "{why}");
        // A word missing.
        let mut short = words(&[(0, 3, 5, 1)]);
        short.pop();
        assert!(
            retry(Trades::from_parts(
                "BTC".into(),
                vec![1.0, 2.0],
                short,
                None
            ))
            .contains("disagree")
        );
        // A symbol past the end of `symbols`, and one inside a character.
        let why = retry(Trades::from_parts(
            "BTC".into(),
            vec![1.0, 2.0],
            words(&[(1, 3, 5, 1)]),
            None,
        ));
        assert!(why.contains("outside"), "{why}");
        let why = retry(Trades::from_parts(
            "é".into(),
            vec![1.0, 2.0],
            words(&[(0, 1, 5, 1)]),
            None,
        ));
        assert!(why.contains("outside"), "{why}");
    }
}
