//! The latest-value cache for market data: the newest trade, order book
//! and OHLCV candle per symbol, from the subjects the manifest's `[market]`
//! table names. Each message is decoded once, here, for every component;
//! `weir:host/market` reads it with a map lookup.
//!
//! A value replaces the stored one only if it is not older (by its own
//! time, then trade id), so hosts fed the same messages hold the same
//! values whatever order the messages reached them in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use weir_guest::events::{Depth, Ohlcv, Trade};

use crate::bus::decoded::decode;
use crate::bus::{Bus, BusMessage, MarketEvent};
use crate::shutdown::Shutdown;

/// A cheap-to-clone handle to the host's latest values.
#[derive(Clone, Default)]
pub struct MarketStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    trades: RwLock<HashMap<String, Arc<Trade>>>,
    depth: RwLock<HashMap<String, Arc<Depth>>>,
    ohlcv: RwLock<HashMap<String, Arc<Ohlcv>>>,
    /// Values stored.
    updates: AtomicU64,
    /// Values older than the one held, ignored.
    stale: AtomicU64,
    /// Messages that did not decode (logged, then ignored).
    malformed: AtomicU64,
}

/// Counters of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarketStats {
    /// Values stored.
    pub updates: u64,
    /// Older values ignored.
    pub stale: u64,
    /// Messages that did not decode.
    pub malformed: u64,
}

/// Stores `value` under `key` unless what is there is newer.
fn keep<T: Clone>(
    map: &RwLock<HashMap<String, Arc<T>>>,
    key: &str,
    value: &T,
    newer: impl Fn(&T, &T) -> bool,
) -> bool {
    let mut map = map.write().unwrap_or_else(|e| e.into_inner());
    match map.get(key) {
        Some(old) if newer(old, value) => false,
        _ => {
            map.insert(key.to_owned(), Arc::new(value.clone()));
            true
        }
    }
}

fn get<T>(map: &RwLock<HashMap<String, Arc<T>>>, key: &str) -> Option<Arc<T>> {
    map.read()
        .unwrap_or_else(|e| e.into_inner())
        .get(key)
        .cloned()
}

impl MarketStore {
    /// Takes one market message: whether it changed a latest value. A
    /// subject that carries no market event is ignored.
    pub fn update(&self, subject: &str, payload: &[u8]) -> Result<bool, String> {
        match decode(subject, payload) {
            None => Ok(false),
            Some(event) => self.keep(&event),
        }
    }

    /// Takes one decoded market message (or the decoder's refusal).
    fn keep(&self, event: &Result<MarketEvent, String>) -> Result<bool, String> {
        let inner = &self.inner;
        let kept = match event {
            Err(e) => {
                inner.malformed.fetch_add(1, Ordering::Relaxed);
                return Err(e.clone());
            }
            Ok(MarketEvent::Trade(t)) => keep(&inner.trades, &t.symbol, t, |old, new| {
                (old.ts, old.trade_id) > (new.ts, new.trade_id)
            }),
            Ok(MarketEvent::Depth(d)) => {
                keep(&inner.depth, &d.symbol, d, |old, new| old.ts > new.ts)
            }
            Ok(MarketEvent::Ohlcv(c)) => {
                keep(&inner.ohlcv, &c.ticker, c, |old, new| old.ts > new.ts)
            }
        };
        let counter = if kept { &inner.updates } else { &inner.stale };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(kept)
    }

    /// The last trade of a symbol.
    pub fn last_trade(&self, symbol: &str) -> Option<Arc<Trade>> {
        get(&self.inner.trades, symbol)
    }

    /// The last order book of a symbol.
    pub fn last_depth(&self, symbol: &str) -> Option<Arc<Depth>> {
        get(&self.inner.depth, symbol)
    }

    /// The last candle of a ticker.
    pub fn last_ohlcv(&self, ticker: &str) -> Option<Arc<Ohlcv>> {
        get(&self.inner.ohlcv, ticker)
    }

    /// Its counters.
    pub fn stats(&self) -> MarketStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MarketStats {
            updates: load(&self.inner.updates),
            stale: load(&self.inner.stale),
            malformed: load(&self.inner.malformed),
        }
    }

    /// Follows `filters` in a JetStream stream until shutdown: first the
    /// last message of every subject the stream holds (so a host that
    /// starts late holds what its peers hold), then every new one, with an
    /// ordered consumer that recreates itself after a gap or a reconnect.
    pub async fn follow_stream(
        &self,
        js: &async_nats::jetstream::Context,
        stream: &str,
        filters: &[String],
        shutdown: Shutdown,
    ) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
        use anyhow::Context as _;
        use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
        let consumer = js
            .get_stream(stream)
            .await
            .with_context(|| format!("market: cannot open stream {stream}"))?
            .create_consumer(OrderedConfig {
                filter_subjects: filters.to_vec(),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .with_context(|| format!("market: cannot read stream {stream}"))?;
        let mut messages = consumer
            .messages()
            .await
            .with_context(|| format!("market: cannot read stream {stream}"))?;
        let store = self.clone();
        let stream = stream.to_owned();
        Ok(async move {
            // One shutdown future for the run, not one per message.
            let stop = shutdown.wait();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    next = messages.next() => match next {
                        None => return,
                        Some(Ok(m)) => store.take(&m.subject, &m.payload),
                        Some(Err(e)) => tracing::warn!(stream = %stream, "market data: {e}"),
                    },
                }
            }
        })
    }

    /// Updates from one message, logging (sparsely) what does not decode.
    fn take(&self, subject: &str, payload: &[u8]) {
        self.log_refusal(subject, self.update(subject, payload));
    }

    /// Updates from one bus message, sharing its decode with the
    /// components that received the same message.
    fn take_message(&self, m: &BusMessage) {
        if let Some(event) = m.market_event() {
            self.log_refusal(&m.subject, self.keep(event));
        }
    }

    fn log_refusal(&self, subject: &str, result: Result<bool, String>) {
        if let Err(e) = result {
            let n = self.inner.malformed.load(Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(subject, malformed = n, "market data ignored: {e}");
            }
        }
    }

    /// Follows `filters` on the bus until shutdown; subscribing happens
    /// before this returns, so nothing published afterwards is missed.
    pub async fn follow(
        &self,
        bus: &Arc<dyn Bus>,
        filters: &[String],
        shutdown: Shutdown,
    ) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
        let mut subs = Vec::new();
        for f in filters {
            let sub = bus
                .subscribe(f, None)
                .await
                .map_err(|e| anyhow::anyhow!("market: cannot subscribe to {f}: {e}"))?;
            subs.push(sub);
        }
        let store = self.clone();
        Ok(async move {
            let mut all = futures::stream::select_all(subs);
            let stop = shutdown.wait();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    next = all.next() => match next {
                        None => return,
                        Some(m) => store.take_message(&m),
                    },
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trade(ts: i64, id: u64, price: f64) -> Vec<u8> {
        format!(r#"{{"symbol":"BTCUSDT","price":{price},"qty":1,"ts":{ts},"trade_id":{id}}}"#)
            .into_bytes()
    }

    #[test]
    fn the_newest_value_wins_whatever_the_arrival_order() {
        let s = MarketStore::default();
        let msgs = [
            trade(10, 1, 100.0),
            trade(30, 3, 300.0),
            trade(20, 2, 200.0),
        ];
        for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2]] {
            let s2 = MarketStore::default();
            for i in order {
                s2.update("TRADE.trade.BTCUSDT", &msgs[i]).unwrap();
            }
            assert_eq!(s2.last_trade("BTCUSDT").unwrap().price, 300.0);
        }
        assert!(s.update("TRADE.trade.BTCUSDT", &msgs[0]).unwrap());
        assert!(!s.update("TRADE.trade.BTCUSDT", &trade(5, 0, 1.0)).unwrap());
        assert!(s.update("TRADE.trade.BTCUSDT", b"{oops").is_err());
        assert!(!s.update("signals.BTCUSDT", b"{}").unwrap());
        s.update(
            "TRADE.depth.BTCUSDT",
            br#"{"s":"BTCUSDT","b":[["1","2"]],"a":[],"E":7}"#,
        )
        .unwrap();
        s.update(
            "market.data.ohlcv.AAPL",
            br#"{"ticker":"AAPL","open":1,"high":2,"low":0.5,"close":1.5,"volume":9,"timestamp":3}"#,
        )
        .unwrap();
        assert_eq!(s.last_depth("BTCUSDT").unwrap().bids, [(1.0, 2.0)]);
        assert_eq!(s.last_ohlcv("AAPL").unwrap().close, 1.5);
        assert_eq!(s.last_trade("ETHUSDT"), None);
        assert_eq!(
            s.stats(),
            MarketStats {
                updates: 3,
                stale: 1,
                malformed: 1
            }
        );
    }
}
