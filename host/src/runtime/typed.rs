//! Market events decoded by the host, handed to a component's
//! `market-handler`: trades packed (`on-trades`, many per call), order
//! books and candles one per call. The decode is the message's own
//! ([`BusMessage::market_event`](crate::bus::BusMessage::market_event)),
//! shared with every subscriber of the same message; a message the
//! decoder refuses is rejected here, without calling the component, and
//! so dead-lettered with the decoder's reason.

use weir_guest::events::{Ohlcv, Trade};

use super::ComponentTemplate;
use super::handler::Handler;
use super::instance::{
    BatchItem, Failure, HandleOutcome, Instance, answered, finished, missing, outcomes, within,
};
use crate::bus::{MarketEvent, MarketKind};
use crate::capability::bindings::exports::weir::host::market_handler::Trades;
use crate::capability::bindings::weir::host::market as wit;
use crate::capability::bindings::weir::host::types::Delivery as DeliveryRecord;
use crate::capability::levels;

/// The reason a message the decoder refused is dead-lettered with.
pub fn undecodable(reason: &str) -> String {
    format!("weir could not decode it: {reason}")
}

/// Numbers per trade in a call's `words` (`wit/handler.wit` lays them out).
pub(crate) const TRADE_WORDS: usize = 5;

/// The buffers one instance packs trades into, kept between calls so that
/// a call allocates nothing once they have grown.
#[derive(Default)]
pub(crate) struct TradePacker {
    /// The call's symbols, each once, one after another.
    symbols: String,
    /// Price and quantity of each trade.
    prices: Vec<f64>,
    /// [`TRADE_WORDS`] per trade.
    words: Vec<u64>,
    /// Each symbol laid out so far and its word 0 (start and length).
    seen: Vec<(u32, u64)>,
}

/// One trade of a call, with its delivery.
struct TradeItem<'a> {
    trade: &'a Trade,
    sequence: Option<u64>,
    attempt: u32,
}

/// Largest symbol text one call carries: offsets stay in 32 bits.
const MAX_SYMBOL_BYTES: usize = u32::MAX as usize;

impl TradePacker {
    /// Packs `trades` as one call's record.
    fn fill<'a>(&'a mut self, trades: &[TradeItem<'_>], stream: Option<&'a str>) -> Trades<'a> {
        self.symbols.clear();
        self.prices.clear();
        self.words.clear();
        self.seen.clear();
        self.prices.reserve(trades.len() * 2);
        self.words.reserve(trades.len() * TRADE_WORDS);
        for item in trades {
            let t = item.trade;
            // A call names a handful of symbols: a scan beats a map.
            let known = self.seen.iter().find(|&&(start, word)| {
                let len = (word & u64::from(u32::MAX)) as usize;
                self.symbols.get(start as usize..start as usize + len) == Some(t.symbol.as_str())
            });
            let symbol = match known {
                Some(&(_, word)) => word,
                None if self.symbols.len() + t.symbol.len() <= MAX_SYMBOL_BYTES => {
                    let start = self.symbols.len() as u32;
                    self.symbols.push_str(&t.symbol);
                    let word = (u64::from(start) << 32) | t.symbol.len() as u64;
                    self.seen.push((start, word));
                    word
                }
                // Not reached: a call holds at most 64 trades of 64 KiB.
                None => 0,
            };
            self.prices.extend_from_slice(&[t.price, t.qty]);
            self.words.extend_from_slice(&[
                symbol,
                t.ts as u64,
                t.trade_id,
                item.sequence.unwrap_or(0),
                u64::from(item.attempt),
            ]);
        }
        Trades {
            symbols: &self.symbols,
            prices: &self.prices,
            words: &self.words,
            stream,
        }
    }
}

/// How many items at the front of `items` go in one `on-trades` call:
/// trades (decodable or not) of one stream, none with a reply-to.
pub(crate) fn trade_run(items: &[BatchItem<'_>]) -> usize {
    let Some(first) = items.first() else { return 0 };
    items
        .iter()
        .take_while(|i| {
            i.msg.reply_to.is_none()
                && MarketKind::of(&i.msg.subject) == Some(MarketKind::Trade)
                && i.msg.market_event().is_some()
                && i.stream == first.stream
        })
        .count()
}

fn ohlcv_record(c: &Ohlcv) -> wit::OhlcvParam<'_> {
    wit::OhlcvParam {
        ticker: &c.ticker,
        open: c.open,
        high: c.high,
        low: c.low,
        close: c.close,
        volume: c.volume,
        ts: c.ts,
    }
}

impl Instance {
    /// Hands one decoded market message to `market-handler` (or rejects
    /// it with the decoder's reason).
    pub(super) async fn handle_event(
        &mut self,
        template: &ComponentTemplate,
        event: &Result<MarketEvent, String>,
        stream: Option<&str>,
        sequence: Option<u64>,
        attempt: u32,
    ) -> HandleOutcome {
        let event = match event {
            Ok(event) => event,
            Err(reason) => return HandleOutcome::Reject(undecodable(reason)),
        };
        if let MarketEvent::Trade(trade) = event {
            let item = TradeItem {
                trade,
                sequence,
                attempt,
            };
            return match self.call_trades(template, &[item], stream).await {
                Ok(mut answers) => answers.pop().unwrap_or_else(|| {
                    HandleOutcome::Retry("on-trades answered for none of its trades".into())
                }),
                Err(failure) => HandleOutcome::Failed(failure),
            };
        }
        let Handler::Weir(_, _, Some(market)) = &self.handler else {
            return HandleOutcome::Failed(missing(template, super::handler::MARKET_HANDLER));
        };
        let market = market.clone();
        let (started, grace) = match self.begin(template, 1, None) {
            Ok(call) => call,
            Err(failure) => return HandleOutcome::Failed(failure),
        };
        let delivery = DeliveryRecord {
            stream,
            sequence,
            attempt,
        };
        let result = match event {
            MarketEvent::Depth(d) => {
                let (bids, asks) = (levels(&d.bids), levels(&d.asks));
                let book = wit::DepthParam {
                    symbol: &d.symbol,
                    bids: &bids,
                    asks: &asks,
                    ts: d.ts,
                };
                let call = market.call_on_depth(&mut self.store, book, delivery);
                within(call, started, grace).await
            }
            MarketEvent::Ohlcv(c) => {
                let call = market.call_on_ohlcv(&mut self.store, ohlcv_record(c), delivery);
                within(call, started, grace).await
            }
            // Not reached: trades went to `call_trades` above.
            MarketEvent::Trade(_) => None,
        };
        match finished(template, result, 1) {
            Ok(answer) => answered(answer),
            Err(failure) => HandleOutcome::Failed(failure),
        }
    }

    /// A batch for a component with `market-handler`: a run of trades
    /// goes to `on-trades`, a run of other messages to `handle-batch`.
    /// Outcomes cover the run at the front; the rest is delivered again.
    pub(super) async fn handle_market_batch(
        &mut self,
        template: &ComponentTemplate,
        items: &[BatchItem<'_>],
    ) -> Result<Vec<HandleOutcome>, Failure> {
        let run = trade_run(items);
        if run == 0 {
            let Some(first) = items.first() else {
                return Ok(Vec::new());
            };
            // A book or a candle: alone, as the dispatcher sends them.
            if first.msg.reply_to.is_none()
                && let Some(event) = first.msg.market_event()
            {
                let (stream, sequence, attempt) = (first.stream, first.sequence, first.attempt);
                return match self
                    .handle_event(template, event, stream, sequence, attempt)
                    .await
                {
                    HandleOutcome::Failed(failure) => Err(failure),
                    outcome => Ok(vec![outcome]),
                };
            }
            let bytes = items
                .iter()
                .take_while(|i| MarketKind::of(&i.msg.subject).is_none())
                .count()
                .max(1);
            return self.handle_bytes_batch(template, &items[..bytes]).await;
        }
        let run = &items[..run];
        // What the decoder refused is rejected in place; the rest is called.
        let mut trades = Vec::with_capacity(run.len());
        let mut refused: Vec<Option<String>> = Vec::with_capacity(run.len());
        for item in run {
            match item.msg.market_event() {
                Some(Ok(MarketEvent::Trade(trade))) => {
                    trades.push(TradeItem {
                        trade,
                        sequence: item.sequence,
                        attempt: item.attempt,
                    });
                    refused.push(None);
                }
                Some(Err(reason)) => refused.push(Some(undecodable(reason))),
                // Not reached: `trade_run` took trades only.
                Some(Ok(_)) | None => {
                    refused.push(Some(format!("{} holds no trade", item.msg.subject)))
                }
            }
        }
        let mut answers = if trades.is_empty() {
            Vec::new()
        } else {
            self.call_trades(template, &trades, run[0].stream).await?
        }
        .into_iter();
        let mut out = Vec::with_capacity(run.len());
        for reason in refused {
            if let Some(reason) = reason {
                out.push(HandleOutcome::Reject(reason));
                continue;
            }
            // The component stopped short: the rest is delivered again.
            let Some(outcome) = answers.next() else {
                break;
            };
            let stop = matches!(outcome, HandleOutcome::Retry(_));
            out.push(outcome);
            if stop {
                break;
            }
        }
        Ok(out)
    }

    /// Calls `on-trades` with `trades`, the deadline, fuel and host-call
    /// budget the per-event ones times their number.
    async fn call_trades(
        &mut self,
        template: &ComponentTemplate,
        trades: &[TradeItem<'_>],
        stream: Option<&str>,
    ) -> Result<Vec<HandleOutcome>, Failure> {
        let Handler::Weir(_, _, Some(market)) = &self.handler else {
            return Err(missing(template, super::handler::MARKET_HANDLER));
        };
        let market = market.clone();
        let n = u32::try_from(trades.len()).unwrap_or(u32::MAX);
        let (started, grace) = self.begin(template, trades.len(), None)?;
        let packed = self.trades.fill(trades, stream);
        let call = market.call_on_trades(&mut self.store, packed);
        let answers = finished(template, within(call, started, grace).await, n)?;
        Ok(outcomes(answers, trades.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusMessage;

    fn trade(symbol: &str, price: f64, id: u64) -> Trade {
        Trade {
            symbol: symbol.into(),
            price,
            qty: 1.5,
            ts: 1_700_000_000_000 + id as i64,
            trade_id: id,
        }
    }

    #[test]
    fn trades_are_packed_with_each_symbol_once() {
        let (a, b, c) = (
            trade("BTC", 1.0, 1),
            trade("ETHUSDT", 2.0, 2),
            trade("BTC", 3.0, 3),
        );
        let item = |trade, sequence, attempt| TradeItem {
            trade,
            sequence,
            attempt,
        };
        let items = [
            item(&a, Some(10), 1),
            item(&b, None, 2),
            item(&c, Some(12), 1),
        ];
        let mut packer = TradePacker::default();
        for _ in 0..2 {
            // Reused: nothing of the first call stays.
            let t = packer.fill(&items, Some("TRADE"));
            assert_eq!(t.symbols, "BTCETHUSDT");
            assert_eq!(t.prices, [1.0, 1.5, 2.0, 1.5, 3.0, 1.5]);
            assert_eq!(t.words.len(), 3 * TRADE_WORDS);
            let word = |i: usize, w: usize| t.words[i * TRADE_WORDS + w];
            assert_eq!([word(0, 0), word(1, 0), word(2, 0)], [3, 3 << 32 | 7, 3]);
            assert_eq!(word(2, 1) as i64, 1_700_000_000_003);
            assert_eq!([word(0, 2), word(1, 2), word(2, 2)], [1, 2, 3]);
            assert_eq!([word(0, 3), word(1, 3), word(2, 3)], [10, 0, 12]);
            assert_eq!([word(0, 4), word(1, 4), word(2, 4)], [1, 2, 1]);
            assert_eq!(t.stream, Some("TRADE"));
        }
    }

    /// What the host packs, the SDK reads back.
    #[test]
    fn the_sdk_reads_back_what_the_host_packs() {
        let trades = [
            trade("BTC", 64000.5, 1),
            trade("ETH", 3000.25, 2),
            trade("BTC", 64001.0, 3),
        ];
        let items: Vec<TradeItem<'_>> = trades
            .iter()
            .enumerate()
            .map(|(i, trade)| TradeItem {
                trade,
                sequence: Some(100 + i as u64),
                attempt: 1 + i as u32,
            })
            .collect();
        let mut packer = TradePacker::default();
        let t = packer.fill(&items, None);
        let read = weir_guest::strategy::Trades::from_parts(
            t.symbols.to_owned(),
            t.prices.to_vec(),
            t.words.to_vec(),
            None,
        )
        .unwrap();
        assert_eq!(read.symbols().collect::<Vec<_>>(), ["BTC", "ETH"]);
        let back: Vec<_> = read
            .iter()
            .map(|r| (r.to_trade(), r.symbol_index, r.sequence, r.attempt))
            .collect();
        for (i, (t, index, sequence, attempt)) in back.into_iter().enumerate() {
            assert_eq!(t, trades[i]);
            assert_eq!(index, [0, 1, 0][i]);
            assert_eq!((sequence, attempt), (Some(100 + i as u64), 1 + i as u32));
        }
    }

    #[test]
    fn a_trade_run_stops_at_another_kind_a_reply_or_another_stream() {
        let msg = |s: &str| BusMessage::new(s, "{}");
        let mut reply = msg("TRADE.trade.C");
        reply.reply_to = Some("_INBOX.1".into());
        let msgs = [
            msg("TRADE.trade.A"),
            msg("TRADE.trade.B"),
            msg("TRADE.depth.A"),
            reply,
        ];
        let item = |i: usize, stream| BatchItem {
            msg: &msgs[i],
            stream,
            sequence: None,
            attempt: 1,
        };
        assert_eq!(trade_run(&[item(0, None), item(1, None), item(2, None)]), 2);
        assert_eq!(trade_run(&[item(0, None), item(3, None)]), 1);
        assert_eq!(trade_run(&[item(0, Some("T")), item(1, Some("U"))]), 1);
        assert_eq!(trade_run(&[item(2, None), item(0, None)]), 0);
    }
}
