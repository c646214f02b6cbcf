//! Guest stdout and stderr, routed to `tracing` line by line with the
//! component's name, rate-limited with the component's log budget, never
//! blocking the guest.
//!
//! The WASI stream is served here directly, a write taken in full when it
//! is made: no queue between the guest and the log, so no write (an empty
//! one included: GHSA-5m8g-xhq4-4h93) leaves anything behind in the host
//! but the one unfinished line, at most [`MAX_LINE`] bytes.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::TokenBucket;
use crate::stats::ComponentStats;

/// Longest line kept; longer output is cut into lines of this size.
const MAX_LINE: usize = 4096;
/// Bytes a guest may write in one call (what `check-write` answers).
const WRITE_BUDGET: usize = 8192;

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

impl GuestOutput {
    fn writer(&self) -> LineWriter {
        LineWriter {
            out: self.clone(),
            line: Vec::new(),
        }
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.writer())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.writer())
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

    /// Takes `buf` whole: complete lines go to the log.
    fn take(&mut self, buf: &[u8]) {
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
    }

    /// What is left when the stream closes.
    fn finish(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

#[async_trait::async_trait]
impl Pollable for LineWriter {
    /// Always ready: a write never waits.
    async fn ready(&mut self) {}
}

#[async_trait::async_trait]
impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.finish();
        Poll::Ready(Ok(()))
    }
}
