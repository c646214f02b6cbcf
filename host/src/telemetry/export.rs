//! Spans out of the host: a bounded queue the handling path never waits
//! on (a full queue drops the span and counts it), and one thread that
//! sends them to the collector in batches over OTLP/HTTP.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

/// Spans waiting for the exporter, at most (the SDK's default).
pub const QUEUE: usize = 2048;
/// Spans per export request, at most (the SDK's default).
const BATCH: usize = 512;
/// Longest a finished span waits before it is sent.
const DELAY: Duration = Duration::from_secs(1);

/// What became of the spans: read by `/metrics`.
#[derive(Debug, Default)]
pub struct Counts {
    /// Accepted by the collector.
    pub exported: AtomicU64,
    /// Dropped because the queue was full (the collector slow or down).
    pub dropped_queue_full: AtomicU64,
    /// Dropped because the collector refused them or could not be reached.
    pub dropped_export_failed: AtomicU64,
}

enum Item {
    Span(Box<SpanData>),
    /// Send what is queued, then answer.
    Flush(SyncSender<()>),
}

/// A span processor that never blocks the thread ending a span.
#[derive(Debug)]
pub struct QueueProcessor {
    /// Into the export thread; taken at shutdown (the thread then sends
    /// what is left and stops).
    tx: Mutex<Option<SyncSender<Item>>>,
    /// Answers once the export thread has stopped.
    done: Mutex<Option<Receiver<()>>>,
    counts: Arc<Counts>,
}

impl QueueProcessor {
    /// Starts the export thread around `exporter`.
    pub fn start<E: SpanExporter + 'static>(
        exporter: E,
        counts: Arc<Counts>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        let thread_counts = counts.clone();
        std::thread::Builder::new()
            .name("weir-otlp".into())
            .spawn(move || {
                run(exporter, &rx, &thread_counts);
                let _ = done_tx.send(());
            })?;
        Ok(QueueProcessor {
            tx: Mutex::new(Some(tx)),
            done: Mutex::new(Some(done_rx)),
            counts,
        })
    }

    fn sender(&self) -> Option<SyncSender<Item>> {
        self.tx.lock().ok()?.clone()
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let Ok(guard) = self.tx.lock() else { return };
        let Some(tx) = guard.as_ref() else { return };
        match tx.try_send(Item::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.counts
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let Some(tx) = self.sender() else {
            return Err(OTelSdkError::AlreadyShutdown);
        };
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        tx.send(Item::Flush(ack_tx))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        ack_rx
            .recv_timeout(Duration::from_secs(15))
            .map_err(|_| OTelSdkError::Timeout(Duration::from_secs(15)))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let tx = self.tx.lock().ok().and_then(|mut t| t.take());
        if tx.is_none() {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        drop(tx);
        let done = self.done.lock().ok().and_then(|mut d| d.take());
        match done.map(|d| d.recv_timeout(timeout)) {
            Some(Ok(())) | Some(Err(RecvTimeoutError::Disconnected)) | None => Ok(()),
            Some(Err(RecvTimeoutError::Timeout)) => Err(OTelSdkError::Timeout(timeout)),
        }
    }
}

/// The export thread: a batch goes out when it is full or its first span
/// has waited [`DELAY`]; a failed export drops its spans (counted, and
/// logged at most once a minute) and the next batch tries again.
fn run<E: SpanExporter>(exporter: E, rx: &Receiver<Item>, counts: &Counts) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH);
    let mut since: Option<Instant> = None;
    let mut last_warning: Option<Instant> = None;
    let mut send = |batch: &mut Vec<SpanData>| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        match futures::executor::block_on(exporter.export(std::mem::take(batch))) {
            Ok(()) => {
                counts.exported.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                counts.dropped_export_failed.fetch_add(n, Ordering::Relaxed);
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(
                        "trace export failed, {n} spans dropped (later failures are counted in weir_trace_spans_dropped_total): {e}"
                    );
                }
            }
        }
    };
    loop {
        let wait = since.map_or(DELAY, |t| DELAY.saturating_sub(t.elapsed()));
        match rx.recv_timeout(wait) {
            Ok(Item::Span(span)) => {
                batch.push(*span);
                since.get_or_insert_with(Instant::now);
                if batch.len() >= BATCH {
                    send(&mut batch);
                    since = None;
                }
            }
            Ok(Item::Flush(ack)) => {
                send(&mut batch);
                since = None;
                let _ = ack.send(());
            }
            Err(RecvTimeoutError::Timeout) => {
                send(&mut batch);
                since = None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                send(&mut batch);
                let _ = exporter.shutdown();
                return;
            }
        }
    }
}
