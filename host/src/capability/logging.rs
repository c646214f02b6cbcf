//! `weir:host/logging` and `wasi:logging/logging@0.1.0-draft`: guest log
//! lines into `tracing`, tagged with the component's name (and wasi's
//! context), rate-limited so a chatty guest cannot flood logs.

use super::Capabilities;
use super::bindings::wasi::logging::logging as wasi;
use super::bindings::weir::host::logging::{Host, Level};
use crate::stats::ComponentStats;

/// Longest log line kept; the rest is cut.
const MAX_LINE: usize = 4096;

impl Capabilities {
    /// One guest log line, within the component's log budget.
    fn emit(&mut self, level: Level, context: &str, mut message: String) {
        let allowed = self
            .ctx
            .log_budget
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
