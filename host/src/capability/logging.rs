//! `weir:host/logging`: guest log lines into `tracing`, tagged with the
//! component's name and rate-limited so a chatty guest cannot flood logs.

use super::Capabilities;
use super::bindings::weir::host::logging::{Host, Level};
use crate::stats::ComponentStats;

/// Longest log line kept; the rest is cut.
const MAX_LINE: usize = 4096;

impl Host for Capabilities {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let allowed = self
            .ctx
            .log_budget
            .lock()
            .map(|mut b| b.take())
            .unwrap_or(false);
        if !allowed {
            ComponentStats::bump(&self.ctx.stats.log_dropped);
            return Ok(());
        }
        ComponentStats::bump(&self.ctx.stats.log_lines);
        let mut message = message;
        if message.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let component = self.ctx.name.as_str();
        match level {
            Level::Trace => tracing::trace!(target: "weir::guest", component, "{message}"),
            Level::Debug => tracing::debug!(target: "weir::guest", component, "{message}"),
            Level::Info => tracing::info!(target: "weir::guest", component, "{message}"),
            Level::Warn => tracing::warn!(target: "weir::guest", component, "{message}"),
            Level::Error => tracing::error!(target: "weir::guest", component, "{message}"),
        }
        Ok(())
    }
}
