//! `weir:host/logging` and `wasi:logging/logging@0.1.0-draft`: guest log
//! lines into `tracing`, tagged with the component's name (and wasi's
//! context), rate-limited so a chatty guest cannot flood logs.

use std::sync::{Arc, Mutex};

use super::bindings::wasi::logging::logging as wasi;
use super::bindings::weir::host::logging::{Host, Level};
use super::{Capabilities, GuestOutput, TokenBucket};
use crate::clock::Clock;
use crate::stats::ComponentStats;

/// Longest log line kept; the rest is cut.
const MAX_LINE: usize = 4096;

/// The logging capability of one component: the budget its log lines and
/// stdout/stderr lines share (all its instances together).
pub struct LoggingCapability {
    /// Lines allowed per second, shared by the component's instances.
    budget: Arc<Mutex<TokenBucket>>,
}

impl LoggingCapability {
    /// 200 lines a second, bursts of 400, counted on `clock`.
    pub fn new(clock: &Clock) -> Self {
        LoggingCapability {
            budget: Arc::new(Mutex::new(TokenBucket::new(200.0, 400.0, clock.clone()))),
        }
    }

    /// The component's stdout or stderr, within the same budget.
    pub(super) fn output(
        &self,
        component: &str,
        stream: &'static str,
        stats: &Arc<ComponentStats>,
    ) -> GuestOutput {
        GuestOutput::new(
            Arc::from(component),
            stream,
            self.budget.clone(),
            stats.clone(),
        )
    }
}

impl Capabilities {
    /// One guest log line, within the component's log budget.
    fn emit(&mut self, level: Level, context: &str, mut message: String) {
        let allowed = self
            .ctx
            .logging
            .budget
            .lock()
            .map(|mut b| b.take())
            .unwrap_or(false);
        if !allowed {
            ComponentStats::bump(&self.ctx.stats.log_dropped);
            return;
        }
        ComponentStats::bump(&self.ctx.stats.log_lines);
        if message.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        // Recorded only when there is one (weir's own log has none).
        let context = (!context.is_empty()).then(|| &context[..context.floor_char_boundary(256)]);
        let component = self.ctx.name.as_str();
        match level {
            Level::Trace => tracing::trace!(target: "weir::guest", component, context, "{message}"),
            Level::Debug => tracing::debug!(target: "weir::guest", component, context, "{message}"),
            Level::Info => tracing::info!(target: "weir::guest", component, context, "{message}"),
            Level::Warn => tracing::warn!(target: "weir::guest", component, context, "{message}"),
            Level::Error => tracing::error!(target: "weir::guest", component, context, "{message}"),
        }
    }
}

impl Host for Capabilities {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.emit(level, "", message);
        Ok(())
    }
}

impl wasi::Host for Capabilities {
    fn log(
        &mut self,
        level: wasi::Level,
        context: String,
        message: String,
    ) -> wasmtime::Result<()> {
        let level = match level {
            wasi::Level::Trace => Level::Trace,
            wasi::Level::Debug => Level::Debug,
            wasi::Level::Info => Level::Info,
            wasi::Level::Warn => Level::Warn,
            // tracing has no level above error.
            wasi::Level::Error | wasi::Level::Critical => Level::Error,
        };
        self.emit(level, &context, message);
        Ok(())
    }
}

/// Adds `weir:host/logging` and `wasi:logging` to a linker.
pub(super) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut Capabilities,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    super::bindings::weir::host::logging::add_to_linker::<T, HasSelf<Capabilities>>(linker, get)?;
    super::bindings::wasi::logging::logging::add_to_linker::<T, HasSelf<Capabilities>>(
        linker, get,
    )?;
    Ok(())
}
