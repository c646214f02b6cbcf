//! weir: a WebAssembly component host for event-driven trading code.
//!
//! Components (strategies, alert rules) are sandboxed `.wasm` files that
//! export `weir:host/handler` and import `cache`, `messaging`, `config`,
//! `logging` and `market`; components written for wasmCloud's messaging
//! world run unchanged (see [`runtime::World`]). The host feeds them
//! messages from its bus, with limits, deadlines and dead letters. See the
//! README for the flow.

#![deny(missing_docs)]

pub mod bus;
pub mod cache;
pub mod capability;
pub mod clock;
pub mod digest;
pub mod dispatch;
pub mod failure_log;
pub mod feed;
pub mod host;
pub mod latency;
pub mod manifest;
pub mod market;
pub mod observe;
pub mod registry;
pub mod replay;
pub mod runtime;
pub mod shutdown;
pub mod signature;
pub mod stats;
pub mod subject;
pub mod telemetry;
pub mod testing;
pub mod update;

pub use bus::dlq;
pub use bus::nats::streams;
pub use host::Host;
pub use manifest::{EnvOverrides, Manifest};
