//! Market events decoded by the host, handed to a component's
//! `market-handler`: trades as columns (`on-trades`, many per call), order
//! books and candles one per call. The decode is the message's own
//! ([`BusMessage::market_event`](crate::bus::BusMessage::market_event)),
//! shared with every subscriber of the same message; a message the
//! decoder refuses is rejected here, without calling the component, and
//! so dead-lettered with the decoder's reason.

use weir_guest::events::{Ohlcv, Trade};

use super::ComponentTemplate;
use super::handler::Handler;
use super::instance::{
    BatchItem, Failure, HandleOutcome, Instance, answered, finished, outcomes, within,
};
use crate::bus::{MarketEvent, MarketKind};
use crate::capability::bindings::exports::weir::host::market_handler::Trades;
use crate::capability::bindings::weir::host::market as wit;
use crate::capability::bindings::weir::host::types::Delivery as DeliveryRecord;

/// The reason a message the decoder refused is dead-lettered with.
pub fn undecodable(reason: &str) -> String {
    format!("weir could not decode it: {reason}")
}

/// The columns one instance lays trades out in, kept between calls so
/// that a call allocates nothing once they have grown.
#[derive(Default)]
pub(crate) struct TradeColumns {
    /// Each trade's symbol, as an index into the call's symbols.
    symbol: Vec<u32>,
    /// Prices.
    price: Vec<f64>,
    /// Quantities.
    qty: Vec<f64>,
    /// Trade times.
    ts: Vec<i64>,
    /// Trade ids.
    trade_id: Vec<u64>,
    /// Stream sequences (0: none).
    sequence: Vec<u64>,
    /// Delivery attempts.
    attempt: Vec<u32>,
}

/// One trade of a call, with its delivery.
struct TradeItem<'a> {
    trade: &'a Trade,
    sequence: Option<u64>,
    attempt: u32,
}

impl TradeColumns {
    /// Lays `trades` out as one call's columns; `symbols` gets each
    /// symbol once (the caller owns it: it borrows from the trades).
    fn fill<'a>(
        &'a mut self,
        trades: &[TradeItem<'a>],
        symbols: &'a mut Vec<&'a str>,
        stream: Option<&'a str>,
    ) -> Trades<'a> {
        for column in [&mut self.price, &mut self.qty] {
            column.clear();
        }
        self.symbol.clear();
        self.ts.clear();
        self.trade_id.clear();
        self.sequence.clear();
        self.attempt.clear();
        symbols.clear();
        for item in trades {
            let t = item.trade;
            // A call names a handful of symbols: a scan beats a map.
            let at = match symbols.iter().position(|s| *s == t.symbol) {
                Some(at) => at,
                None => {
                    symbols.push(&t.symbol);
                    symbols.len() - 1
                }
            };
            self.symbol.push(u32::try_from(at).unwrap_or(u32::MAX));
            self.price.push(t.price);
            self.qty.push(t.qty);
            self.ts.push(t.ts);
            self.trade_id.push(t.trade_id);
            self.sequence.push(item.sequence.unwrap_or(0));
            self.attempt.push(item.attempt);
        }
        Trades {
            symbols,
            symbol: &self.symbol,
            price: &self.price,
            qty: &self.qty,
            ts: &self.ts,
            trade_id: &self.trade_id,
            stream,
            sequence: &self.sequence,
            attempt: &self.attempt,
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
                && i.stream == first.stream
        })
        .count()
}

/// The book's levels as the WIT's, for one call.
fn levels(side: &[(f64, f64)]) -> Vec<wit::Level> {
    side.iter()
        .map(|&(price, qty)| wit::Level { price, qty })
        .collect()
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
            return HandleOutcome::Retry("the component has no market-handler".into());
        };
        let market = market.clone();
        self.store.data_mut().caps.begin_event(None);
        if let Err(failure) = self.arm(template, 1) {
            return HandleOutcome::Failed(failure);
        }
        let started = tokio::time::Instant::now();
        let grace = self.grace(1);
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
        let called = trades.len();
        let mut out = Vec::with_capacity(run.len());
        let mut answered_all = true;
        for reason in refused {
            if let Some(reason) = reason {
                out.push(HandleOutcome::Reject(reason));
                continue;
            }
            match answers.next() {
                Some(outcome) => {
                    let stop = matches!(outcome, HandleOutcome::Retry(_));
                    out.push(outcome);
                    if stop {
                        break;
                    }
                }
                // The component stopped short: the rest is delivered again.
                None => {
                    answered_all = false;
                    break;
                }
            }
        }
        if !answered_all && out.is_empty() && called > 0 {
            tracing::debug!(
                component = template.name(),
                "on-trades answered for none of its {called} trades"
            );
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
            return Err(Failure {
                component: template.ctx.name.clone(),
                kind: super::FailureKind::Trap,
                detail: format!("it exports no {}", super::handler::MARKET_HANDLER),
            });
        };
        let market = market.clone();
        let n = u32::try_from(trades.len()).unwrap_or(u32::MAX);
        self.store.data_mut().caps.begin_batch(trades.len());
        self.arm(template, n)?;
        let started = tokio::time::Instant::now();
        let grace = self.grace(n);
        let mut symbols = Vec::new();
        let columns = self.columns.fill(trades, &mut symbols, stream);
        let call = market.call_on_trades(&mut self.store, columns);
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
    fn trades_become_columns_with_each_symbol_once() {
        let (a, b, c) = (
            trade("BTC", 1.0, 1),
            trade("ETH", 2.0, 2),
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
        let mut columns = TradeColumns::default();
        for _ in 0..2 {
            // Reused: nothing of the first call stays.
            let mut symbols = Vec::new();
            let t = columns.fill(&items, &mut symbols, Some("TRADE"));
            assert_eq!(t.symbols, ["BTC", "ETH"]);
            assert_eq!(t.symbol, [0, 1, 0]);
            assert_eq!(t.price, [1.0, 2.0, 3.0]);
            assert_eq!(t.qty, [1.5; 3]);
            assert_eq!(t.trade_id, [1, 2, 3]);
            assert_eq!(t.ts[2], 1_700_000_000_003);
            assert_eq!(t.sequence, [10, 0, 12]);
            assert_eq!(t.attempt, [1, 2, 1]);
            assert_eq!(t.stream, Some("TRADE"));
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
