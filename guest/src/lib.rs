//! The SDK for weir components: sugar over the `weir:host` WIT, which stays
//! the contract (a component written without this crate works the same).
//!
//! ```ignore
//! use weir_guest::prelude::*;
//!
//! struct Momentum;
//!
//! impl Strategy for Momentum {
//!     fn on_trade(trade: &Trade, _delivery: &Delivery) -> Result<(), HandleError> {
//!         let last: Option<f64> = cache::get_json(&format!("last:{}", trade.symbol))?;
//!         cache::set_json(&format!("last:{}", trade.symbol), &trade.price, None)?;
//!         if last.is_some_and(|p| trade.price > p * 1.01) {
//!             Outgoing::new(format!("signals.{}", trade.symbol))
//!                 .json(&serde_json::json!({ "symbol": trade.symbol, "signal": "buy" }))?
//!                 .publish()?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! weir_guest::export_strategy!(Momentum);
//! ```
//!
//! A [`Strategy`] gets trades, order books and candles decoded by the host
//! (see [`strategy`]); a [`Handler`] exported with [`export_handler!`] gets
//! every message as bytes and may parse it with [`Message::event`].
//!
//! Host errors map onto the handler's answer with `?`: `denied` and
//! `invalid` can never succeed, so they reject the message (dead letter at
//! once); `unavailable`, `timeout` and `limited` may pass, so they retry it.

#![deny(missing_docs)]
#![allow(unsafe_code)] // the ABI glue that wit-bindgen generates is unsafe

pub mod alloc;
pub mod batch;
pub mod cache;
pub mod config;
pub mod events;
pub mod messaging;
pub mod strategy;

/// Small blocks from free lists (see [`alloc`]): 6–7% fewer instructions
/// per event than dlmalloc alone.
#[cfg(all(
    feature = "small-blocks",
    target_arch = "wasm32",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: alloc::SmallBlocks<std::alloc::System> =
    alloc::SmallBlocks::new(std::alloc::System);

/// The raw bindings of the `weir:host/batch-strategy` world (a strategy
/// that also takes runs of messages), for what the helpers do not cover.
/// Generated: the WIT's comments are their documentation.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "weir:host/batch-strategy",
        pub_export_macro: true,
        default_bindings_module: "weir_guest::bindings",
    });
}

/// The raw bindings of the `weir:host/market-events` world (market events
/// decoded by the host): its export only, its imports are [`bindings`]'.
/// [`export_strategy!`] exports it beside [`bindings`]' handlers.
#[allow(missing_docs)]
pub mod market_bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "weir:host/market-events",
        pub_export_macro: true,
        default_bindings_module: "weir_guest::market_bindings",
        with: {
            "weir:host/types@0.1.0": crate::bindings::weir::host::types,
            "weir:host/cache@0.1.0": crate::bindings::weir::host::cache,
            "weir:host/messaging@0.1.0": crate::bindings::weir::host::messaging,
            "weir:host/config@0.1.0": crate::bindings::weir::host::config,
            "weir:host/logging@0.1.0": crate::bindings::weir::host::logging,
            "weir:host/market@0.1.0": crate::bindings::weir::host::market,
        },
    });
}

pub use bindings::weir::host::logging::{Level, log};
/// The latest trade, order book and candle per symbol the host saw
/// (`last_trade`, `last_depth`, `last_ohlcv`); needs `grants.market`.
pub use bindings::weir::host::market;
pub use bindings::weir::host::messaging::Message;
pub use bindings::weir::host::types::Error;
pub use bindings::weir::host::types::{Delivery, HandleError};
pub use events::Event;
pub use messaging::Outgoing;
pub use strategy::{Strategy, TradeRef, Trades};

/// What a component implements: one call per delivered message. `Ok`
/// acknowledges it; see [`HandleError`] for retry and reject.
pub trait Handler {
    /// Handles one message.
    fn handle(msg: Message, delivery: Delivery) -> Result<(), HandleError>;
}

/// Exports a [`Handler`] as the component's `weir:host/handler`, and as
/// its batch form `weir:host/batch-handler` (the same `handle` for each
/// message of a run, stopping at the first retry: one call into the
/// component for many messages).
#[macro_export]
macro_rules! export_handler {
    ($handler:ty) => {
        #[doc(hidden)]
        pub struct __WeirGuestExport;
        impl $crate::bindings::exports::weir::host::handler::Guest for __WeirGuestExport {
            fn handle(
                msg: $crate::Message,
                delivery: $crate::Delivery,
            ) -> ::core::result::Result<(), $crate::HandleError> {
                <$handler as $crate::Handler>::handle(msg, delivery)
            }
        }
        impl $crate::bindings::exports::weir::host::batch_handler::Guest for __WeirGuestExport {
            fn handle_batch(
                batch: $crate::batch::Batch,
            ) -> ::std::vec::Vec<::core::result::Result<(), $crate::HandleError>> {
                $crate::handle_each(&batch, <$handler as $crate::Handler>::handle)
            }
        }
        $crate::bindings::export!(__WeirGuestExport with_types_in $crate::bindings);
    };
}

/// The batch contract over a one-message handler: `handle` each event in
/// order, stop after the first retry (weir retries it in place and
/// delivers the rest again); a rejected event is dead-lettered and the
/// batch goes on.
#[doc(hidden)]
pub fn handle_each(
    batch: &batch::Batch,
    handle: impl Fn(Message, Delivery) -> Result<(), HandleError>,
) -> Vec<Result<(), HandleError>> {
    let mut out = Vec::with_capacity(batch.len());
    for event in batch.events() {
        let result = event.and_then(|e| handle(e.to_message(), e.delivery()));
        let retry = matches!(result, Err(HandleError::Retry(_)));
        out.push(result);
        if retry {
            break;
        }
    }
    out
}

/// Everything a handler usually needs, in one `use`.
pub mod prelude {
    pub use crate::events::{Depth, Event, Ohlcv, Prediction, Trade};
    pub use crate::messaging::{Outgoing, reply_json, request_json};
    pub use crate::strategy::{Strategy, TradeRef, Trades};
    pub use crate::{
        Delivery, Error, HandleError, Handler, Level, Message, cache, config, log, market,
    };
    pub use crate::{reject, retry};
}

/// A passing failure: deliver the message again later, with backoff.
pub fn retry(reason: impl Into<String>) -> HandleError {
    HandleError::Retry(reason.into())
}

/// A message that can never be handled: dead-letter it now.
pub fn reject(reason: impl Into<String>) -> HandleError {
    HandleError::Reject(reason.into())
}

impl From<Error> for HandleError {
    fn from(e: Error) -> Self {
        match e {
            Error::Denied(m) => reject(format!("denied: {m}")),
            Error::Invalid(m) => reject(format!("invalid: {m}")),
            Error::Unavailable(m) => retry(format!("unavailable: {m}")),
            Error::Timeout(m) => retry(format!("timeout: {m}")),
            Error::Limited(m) => retry(format!("limited: {m}")),
        }
    }
}

impl Message {
    /// The payload as JSON; malformed JSON rejects the message.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandleError> {
        events::from_json(&self.payload)
            .map_err(|e| reject(format!("malformed JSON on {}: {e}", self.subject)))
    }

    /// The market event the subject and payload carry (see [`Event`]);
    /// a malformed one rejects the message.
    pub fn event(&self) -> Result<Event, HandleError> {
        Event::parse(&self.subject, &self.payload).map_err(reject)
    }

    /// The first header of that name (case-insensitive, as NATS headers).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The last token of the subject: the symbol of `TRADE.trade.BTCUSDT`.
    pub fn last_token(&self) -> &str {
        self.subject.rsplit('.').next().unwrap_or_default()
    }
}
