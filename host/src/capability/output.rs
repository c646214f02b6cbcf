//! Guest stdout and stderr, routed to `tracing` line by line with the
//! component's name, rate-limited with the component's log budget, never
//! blocking the guest.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use super::TokenBucket;
use crate::stats::ComponentStats;

/// Longest line kept; longer output is cut into lines of this size.
const MAX_LINE: usize = 4096;

/// One of a component's output streams.
#[derive(Clone)]
pub struct GuestOutput {
    /// Component name, on every line.
    component: Arc<str>,
    /// `stdout` or `stderr`.
    stream: &'static str,
    /// Shared with the component's `logging` calls.
    budget: Arc<Mutex<TokenBucket>>,
    /// Counts lines written and dropped.
    stats: Arc<ComponentStats>,
}

impl GuestOutput {
    pub(crate) fn new(
        component: Arc<str>,
        stream: &'static str,
        budget: Arc<Mutex<TokenBucket>>,
        stats: Arc<ComponentStats>,
    ) -> Self {
        GuestOutput {
            component,
            stream,
            budget,
            stats,
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            out: self.clone(),
            line: Vec::new(),
        })
    }
}

struct LineWriter {
    out: GuestOutput,
    /// The unfinished line.
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        let allowed = self
            .out
            .budget
            .lock()
            .map(|mut b| b.take())
            .unwrap_or(false);
        let counter = if allowed {
            &self.out.stats.log_lines
        } else {
            &self.out.stats.log_dropped
        };
        ComponentStats::bump(counter);
        if allowed {
            let text = String::from_utf8_lossy(&self.line);
            let text = text.trim_end();
            tracing::info!(target: "weir::guest", component = %self.out.component, stream = self.out.stream, "{text}");
        }
        self.line.clear();
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        for &b in buf {
            if b == b'\n' {
                self.emit();
            } else {
                self.line.push(b);
                if self.line.len() >= MAX_LINE {
                    self.emit();
                }
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.line.is_empty() {
            self.emit();
        }
        Poll::Ready(Ok(()))
    }
}
