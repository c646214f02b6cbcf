//! `weir:host/market`: the latest trade, order book and candle per symbol
//! from [`MarketStore`](crate::market::MarketStore), for components granted
//! `grants.market`. Synchronous: a lookup never waits.

use super::bindings::weir::host::market::{
    DepthResult as Depth, Host, Level, OhlcvResult as Ohlcv, Trade,
};
use super::{Capabilities, GuestError};
use crate::market::MarketStore;

type Answer<T> = wasmtime::Result<Result<T, GuestError>>;

/// The market capability of one component: the host's latest market data,
/// when the host keeps it.
#[derive(Default)]
pub struct MarketCapability {
    /// The store; `None` when the host has no `[market]` subjects.
    store: Option<MarketStore>,
}

impl MarketCapability {
    /// Over `store`.
    pub fn new(store: Option<MarketStore>) -> Self {
        MarketCapability { store }
    }
}

impl Capabilities {
    /// The store, after spending a host call and checking the grant.
    fn market(&mut self) -> Result<MarketStore, GuestError> {
        self.spend()?;
        if !self.ctx.grants.market {
            return Err(self.denied(format!(
                "component {} may not read market data: set grants.market = true in the manifest",
                self.ctx.name
            )));
        }
        self.ctx.market.store.clone().ok_or_else(|| {
            GuestError::Unavailable(
                "this host keeps no market data: name its subjects in [market] subjects".into(),
            )
        })
    }
}

/// A book side's `(price, qty)` levels as the WIT's (`last-depth` and the
/// typed `on-depth` both hand books over).
pub(crate) fn levels(side: &[(f64, f64)]) -> Vec<Level> {
    side.iter()
        .map(|&(price, qty)| Level { price, qty })
        .collect()
}

impl Host for Capabilities {
    fn last_trade(&mut self, symbol: String) -> Answer<Option<Trade>> {
        Ok(self.market().map(|m| {
            m.last_trade(&symbol).map(|t| Trade {
                symbol: t.symbol.clone(),
                price: t.price,
                qty: t.qty,
                ts: t.ts,
                trade_id: t.trade_id,
            })
        }))
    }

    fn last_depth(&mut self, symbol: String) -> Answer<Option<Depth>> {
        Ok(self.market().map(|m| {
            m.last_depth(&symbol).map(|d| Depth {
                symbol: d.symbol.clone(),
                bids: levels(&d.bids),
                asks: levels(&d.asks),
                ts: d.ts,
            })
        }))
    }

    fn last_ohlcv(&mut self, ticker: String) -> Answer<Option<Ohlcv>> {
        Ok(self.market().map(|m| {
            m.last_ohlcv(&ticker).map(|c| Ohlcv {
                ticker: c.ticker.clone(),
                open: c.open,
                high: c.high,
                low: c.low,
                close: c.close,
                volume: c.volume,
                ts: c.ts,
            })
        }))
    }
}

/// Adds `weir:host/market` to a linker.
pub(super) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut Capabilities,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    super::bindings::weir::host::market::add_to_linker::<T, HasSelf<Capabilities>>(linker, get)?;
    Ok(())
}
