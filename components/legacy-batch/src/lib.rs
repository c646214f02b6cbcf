//! A component built against the earlier `batch-handler` shape
//! (`handle-batch(events: list<event>)`), for weir's tests: weir must still
//! run it, one message per `handle` call, and never call its batch export.
//! `handle` acknowledges every message; `handle-batch` traps, so a batch
//! that reached it would show as a trap.

#![allow(unsafe_code)] // the ABI glue that wit-bindgen generates is unsafe

wit_bindgen::generate!({
    path: "wit",
    world: "weir:host/legacy",
});

use exports::weir::host::batch_handler::{Event, Guest as BatchGuest};
use exports::weir::host::handler::{Delivery, Guest, HandleError};
use weir::host::messaging::Message;

struct Legacy;

impl Guest for Legacy {
    fn handle(_msg: Message, _delivery: Delivery) -> Result<(), HandleError> {
        Ok(())
    }
}

impl BatchGuest for Legacy {
    fn handle_batch(_events: Vec<Event>) -> Vec<Result<(), HandleError>> {
        core::arch::wasm32::unreachable()
    }
}

export!(Legacy);
