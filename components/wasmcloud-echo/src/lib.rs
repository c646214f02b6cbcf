//! An echo service written for wasmCloud: it imports and exports only
//! wasmCloud's interfaces (`wasmcloud:messaging@0.2.0`, `wasi:logging`),
//! and weir runs it unchanged.
//!
//! A message with a reply-to is answered with its body. Without one it is
//! logged and dropped. A body of `fail` returns an error, which the host
//! treats as a passing failure (weir retries it, then dead-letters it).

#![allow(unsafe_code)] // the ABI glue that wit-bindgen generates is unsafe

wit_bindgen::generate!({ generate_all });

use exports::wasmcloud::messaging::handler::Guest;
use wasi::logging::logging::{Level, log};
use wasmcloud::messaging::{consumer, types::BrokerMessage};

struct Echo;

impl Guest for Echo {
    fn handle_message(msg: BrokerMessage) -> Result<(), String> {
        if msg.body == b"fail" {
            return Err(format!("asked to fail on {}", msg.subject));
        }
        let Some(reply_to) = msg.reply_to else {
            log(
                Level::Warn,
                "echo",
                "message without a reply-to: nothing to answer",
            );
            return Ok(());
        };
        consumer::publish(&BrokerMessage {
            subject: reply_to,
            reply_to: None,
            body: msg.body,
        })
    }
}

export!(Echo);
