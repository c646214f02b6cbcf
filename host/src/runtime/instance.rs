//! One live instance of a component: its store, its limits, and the
//! `handle` call with a deadline. A failed instance is dropped, never reused.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, WasiMonotonicClock, WasiWallClock};
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::ComponentTemplate;
use super::handler::Handler;
use super::limiter::{LimitHit, Limiter};
use super::packed::Packer;
use super::typed::TradePacker;
use crate::bus::BusMessage;
use crate::capability::bindings::exports::wasmcloud::messaging::handler::BrokerMessage;
// The WIT `delivery` record (what the guest is told), not `crate::bus::Delivery`.
use crate::capability::bindings::weir::host::messaging::MessageParam;
use crate::capability::bindings::weir::host::types::{Delivery as DeliveryRecord, HandleError};
use crate::capability::{Capabilities, ComponentContext};

/// Store data of one instance.
pub struct InstanceState {
    /// WASI with nothing granted: no sockets, env or args; no files but a
    /// read-only `/data` when `grants.data_dir` is set.
    wasi: WasiCtx,
    /// WASI resources (streams, pollables).
    table: ResourceTable,
    /// Memory and table limits.
    limiter: Limiter,
    /// weir's interfaces.
    pub(crate) caps: Capabilities,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl InstanceState {
    fn new(ctx: Arc<ComponentContext>) -> Result<Self, String> {
        let limiter = Limiter {
            memory_bytes: ctx.limits.memory_mb * 1024 * 1024,
            table_elements: ctx.limits.table_elements,
        };
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(ctx.output("stdout"))
            .stderr(ctx.output("stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Clock::Virtual(v) = &ctx.clock {
            // Replay: time is the event's, random is seeded, so runs repeat.
            use rand::SeedableRng as _;
            let seed = ctx.next_random_seed();
            wasi.wall_clock(WasiWallClock(v.clone()))
                .monotonic_clock(WasiMonotonicClock(v.clone()))
                .secure_random(rand::rngs::StdRng::seed_from_u64(seed))
                .insecure_random(rand::rngs::StdRng::seed_from_u64(!seed))
                .insecure_random_seed(u128::from(seed));
        }
        if let Some(dir) = &ctx.data_dir {
            wasi.preopened_dir(dir, "/data", FsPerms::ReadOnly)
                .map_err(|e| format!("cannot mount {} at /data: {e}", dir.display()))?;
        }
        let wasi = wasi.build();
        Ok(InstanceState {
            wasi,
            table: ResourceTable::new(),
            limiter,
            caps: Capabilities::new(ctx),
        })
    }
}

/// What kind of failure ended an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A wasm trap (unreachable, panic, bad memory access, ...).
    Trap,
    /// The per-event deadline passed.
    Deadline,
    /// Linear memory or a table grew past its limit.
    ResourceLimit,
    /// The guest's stack overflowed.
    StackOverflow,
    /// The fuel budget ran out.
    Fuel,
    /// Instantiation failed.
    Instantiate,
}

/// A failure with the component's name and the reason, ready to log.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The component.
    pub component: String,
    /// What kind.
    pub kind: FailureKind,
    /// wasmtime's explanation, with a guest backtrace when there is one.
    pub detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            FailureKind::Trap => "trapped",
            FailureKind::Deadline => "missed its deadline",
            FailureKind::ResourceLimit => "hit a resource limit",
            FailureKind::StackOverflow => "overflowed its stack",
            FailureKind::Fuel => "ran out of fuel",
            FailureKind::Instantiate => "could not be instantiated",
        };
        write!(f, "component {} {what}: {}", self.component, self.detail)
    }
}

/// The result of one `handle` call.
#[derive(Debug, Clone)]
pub enum HandleOutcome {
    /// Handled: acknowledge.
    Handled,
    /// The component asked for a redelivery.
    Retry(String),
    /// The component refused the message for good.
    Reject(String),
    /// The instance failed and must be replaced.
    Failed(Failure),
}

/// A live instance.
pub struct Instance {
    pub(super) store: Store<InstanceState>,
    /// The component's handler, weir's or wasmCloud's.
    pub(super) handler: Handler,
    /// Deadline per event.
    deadline: Duration,
    /// Epoch ticks in `deadline`.
    deadline_ticks: u64,
    /// Fuel per event, when fuel is on.
    fuel: Option<u64>,
    /// The buffers `handle-batch`'s messages are packed into, kept for
    /// the next batch.
    packer: Packer,
    /// The buffers decoded trades are packed into, kept for the next call.
    pub(super) trades: TradePacker,
}

impl ComponentTemplate {
    /// Makes a fresh instance (microseconds with the pooling allocator).
    pub async fn instantiate(&self) -> Result<Instance, Failure> {
        let limits = &self.ctx.limits;
        let deadline = Duration::from_millis(limits.time_per_event_ms);
        let deadline_ticks = self.runtime.ticks(deadline);
        let fuel = self
            .runtime
            .fuel
            .then(|| limits.fuel_per_event.unwrap_or(u64::MAX));
        let state = InstanceState::new(self.ctx.clone()).map_err(|detail| Failure {
            component: self.ctx.name.clone(),
            kind: FailureKind::Instantiate,
            detail,
        })?;
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks);
        if let Some(f) = fuel {
            store.set_fuel(f).map_err(|e| self.failure(e))?;
        }
        let failed = |e| {
            let mut f = self.failure(e);
            if f.kind == FailureKind::Trap {
                f.kind = FailureKind::Instantiate;
            }
            f
        };
        let instance = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(failed)?;
        let handler = self.handler.load(&mut store, &instance).map_err(failed)?;
        Ok(Instance {
            store,
            handler,
            deadline,
            deadline_ticks,
            fuel,
            packer: Packer::default(),
            trades: TradePacker::default(),
        })
    }

    /// Classifies a wasmtime error into a [`Failure`].
    pub(crate) fn failure(&self, e: wasmtime::Error) -> Failure {
        let kind = if let Some(trap) = e.downcast_ref::<Trap>() {
            match trap {
                Trap::Interrupt => FailureKind::Deadline,
                Trap::StackOverflow => FailureKind::StackOverflow,
                Trap::OutOfFuel => FailureKind::Fuel,
                _ => FailureKind::Trap,
            }
        } else if e.downcast_ref::<LimitHit>().is_some() {
            FailureKind::ResourceLimit
        } else {
            FailureKind::Trap
        };
        let detail = match kind {
            FailureKind::Deadline => format!(
                "handle took longer than {} ms",
                self.ctx.limits.time_per_event_ms
            ),
            _ => summarize(&e),
        };
        Failure {
            component: self.ctx.name.clone(),
            kind,
            detail,
        }
    }
}

/// The root cause and the innermost few guest frames: a stack overflow's
/// backtrace has thousands of frames, and logs want one line.
fn summarize(e: &wasmtime::Error) -> String {
    let root = e.root_cause().to_string();
    let top = e.to_string();
    let frames: Vec<&str> = top
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(" - ").map(|(_, f)| f.trim()))
        .take(3)
        .collect();
    if frames.is_empty() {
        root
    } else {
        format!("{root} (in {})", frames.join(" < "))
    }
}

impl Instance {
    /// The trace the next call runs under: what the component sends
    /// carries it (none: nothing is added).
    pub fn set_trace(&mut self, trace: crate::telemetry::Trace) {
        self.store.data_mut().caps.trace = trace;
    }

    /// Calls `handle` with the per-event deadline. On `Failed`, drop the
    /// instance: its state is undefined.
    pub async fn handle(
        &mut self,
        template: &ComponentTemplate,
        msg: &BusMessage,
        stream: Option<&str>,
        sequence: Option<u64>,
        attempt: u32,
    ) -> HandleOutcome {
        if let Handler::Weir(_, _, Some(_)) = &self.handler
            && msg.reply_to.is_none()
            && let Some(event) = msg.market_event()
        {
            return self
                .handle_event(template, event, stream, sequence, attempt)
                .await;
        }
        let (started, grace) = match self.begin(template, 1, msg.reply_to.clone()) {
            Ok(call) => call,
            Err(failure) => return HandleOutcome::Failed(failure),
        };
        let result = match &self.handler {
            Handler::Weir(handler, _, _) => {
                let headers: Vec<(&str, &str)> = msg
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let message = MessageParam {
                    subject: &msg.subject,
                    reply_to: msg.reply_to.as_deref(),
                    headers: &headers,
                    payload: &msg.payload,
                };
                let delivery = DeliveryRecord {
                    stream,
                    sequence,
                    attempt,
                };
                let call = handler.call_handle(&mut self.store, message, delivery);
                within(call, started, grace).await.map(|r| r.map(answered))
            }
            Handler::WasmCloud(handler) => {
                // wasmCloud's broker message has no headers or delivery
                // details; an error is a retry (dead letter after max_deliver).
                let message = BrokerMessage {
                    subject: &msg.subject,
                    body: &msg.payload,
                    reply_to: msg.reply_to.as_deref(),
                };
                let call = handler.call_handle_message(&mut self.store, message);
                within(call, started, grace).await.map(|r| {
                    r.map(|answer| match answer {
                        Ok(()) => HandleOutcome::Handled,
                        Err(reason) => HandleOutcome::Retry(reason),
                    })
                })
            }
        };
        finished(template, result, 1).unwrap_or_else(HandleOutcome::Failed)
    }

    /// Starts a call of `n` events (`reply_to` for a lone message): the
    /// host-call budget, the deadline and the fuel are the per-event ones
    /// times `n`. Returns when it started and how long it may wait in
    /// host calls: most calls finish in their first poll and need no timer;
    /// the epoch deadline stops guest code, the timer (armed once the call
    /// parks in a slow host call) stops that, counting from the start.
    pub(super) fn begin(
        &mut self,
        template: &ComponentTemplate,
        n: usize,
        reply_to: Option<String>,
    ) -> Result<(tokio::time::Instant, Duration), Failure> {
        let caps = &mut self.store.data_mut().caps;
        if n == 1 {
            caps.begin_event(reply_to);
        } else {
            caps.begin_batch(n);
        }
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.store
            .set_epoch_deadline(self.deadline_ticks.saturating_mul(u64::from(n)));
        if let Some(f) = self.fuel {
            self.store
                .set_fuel(f.saturating_mul(u64::from(n)))
                .map_err(|e| template.failure(e))?;
        }
        let grace = self.deadline.saturating_mul(n) + Duration::from_millis(50);
        Ok((tokio::time::Instant::now(), grace))
    }
}

/// The failure of calling an export the component does not have (the
/// dispatcher calls only what it exports).
pub(super) fn missing(template: &ComponentTemplate, export: &str) -> Failure {
    Failure {
        component: template.ctx.name.clone(),
        kind: FailureKind::Trap,
        detail: format!("it exports no {export}"),
    }
}

/// The handler's answer as an outcome.
pub(super) fn answered(answer: Result<(), HandleError>) -> HandleOutcome {
    match answer {
        Ok(()) => HandleOutcome::Handled,
        Err(HandleError::Retry(reason)) => HandleOutcome::Retry(reason),
        Err(HandleError::Reject(reason)) => HandleOutcome::Reject(reason),
    }
}

/// What a call of `n` events came to: its answer, or why the instance
/// failed (a trap, or the deadline passed while it waited in a host call).
pub(super) fn finished<T>(
    template: &ComponentTemplate,
    result: Option<wasmtime::Result<T>>,
    n: u32,
) -> Result<T, Failure> {
    let ms = template.ctx.limits.time_per_event_ms;
    let took_too_long = |waiting: &str| {
        if n == 1 {
            format!("handle took longer than {ms} ms{waiting}")
        } else {
            format!("a call of {n} events took longer than {n} × {ms} ms{waiting}")
        }
    };
    match result {
        Some(Ok(answer)) => Ok(answer),
        Some(Err(e)) => {
            let mut failure = template.failure(e);
            if failure.kind == FailureKind::Deadline {
                failure.detail = took_too_long("");
            }
            Err(failure)
        }
        None => Err(Failure {
            component: template.ctx.name.clone(),
            kind: FailureKind::Deadline,
            detail: took_too_long(" (waiting in a host call)"),
        }),
    }
}

/// One message of a batch, with what is known about this delivery of it.
pub struct BatchItem<'a> {
    /// The message (never one with a reply-to).
    pub msg: &'a BusMessage,
    /// The JetStream stream it came from.
    pub stream: Option<&'a str>,
    /// Its sequence there.
    pub sequence: Option<u64>,
    /// 1 on first delivery.
    pub attempt: u32,
}

impl Instance {
    /// Calls `handle-batch` with the items, the deadline and fuel the
    /// per-event ones times their number. `Ok` holds one outcome per item
    /// answered, in order: `Handled` and `Reject` ones, then at most one
    /// `Retry`, where the batch stopped (what the guest answered past it
    /// is ignored: those items are not counted handled). `Err`: drop the
    /// instance (also when the component has no batch export).
    pub async fn handle_batch(
        &mut self,
        template: &ComponentTemplate,
        items: &[BatchItem<'_>],
    ) -> Result<Vec<HandleOutcome>, Failure> {
        if let Handler::Weir(_, _, Some(_)) = &self.handler {
            return self.handle_market_batch(template, items).await;
        }
        self.handle_bytes_batch(template, items).await
    }

    /// `handle-batch` over the items' bytes.
    pub(super) async fn handle_bytes_batch(
        &mut self,
        template: &ComponentTemplate,
        items: &[BatchItem<'_>],
    ) -> Result<Vec<HandleOutcome>, Failure> {
        let Handler::Weir(_, Some(batch), _) = &self.handler else {
            return Err(missing(template, super::handler::BATCH_HANDLER));
        };
        let batch = batch.clone();
        let n = u32::try_from(items.len()).unwrap_or(u32::MAX);
        let (started, grace) = self.begin(template, items.len(), None)?;
        let mut headers = Vec::new();
        let Ok(packed) = self.packer.pack(items, &mut headers) else {
            // Not reached: the dispatcher cuts a batch at 64 MiB of
            // payloads (`dispatch::batch`), far below 4 GiB.
            return Err(Failure {
                component: template.ctx.name.clone(),
                kind: FailureKind::Trap,
                detail: format!("a batch of {n} events is too large for 32-bit offsets"),
            });
        };
        let call = batch.call_handle_batch(&mut self.store, packed);
        let answers = finished(template, within(call, started, grace).await, n)?;
        Ok(outcomes(answers, items.len()))
    }
}

/// A batch's answers as outcomes: at most one per item, in order,
/// stopping after the first retry (what the guest answered past it is
/// ignored: those items are not counted handled). A rejected item is
/// dead-lettered and the batch goes on.
pub(super) fn outcomes(answers: Vec<Result<(), HandleError>>, items: usize) -> Vec<HandleOutcome> {
    let mut out = Vec::with_capacity(answers.len().min(items));
    for answer in answers.into_iter().take(items) {
        let outcome = answered(answer);
        let stop = matches!(outcome, HandleOutcome::Retry(_));
        out.push(outcome);
        if stop {
            break;
        }
    }
    out
}

/// Runs a call: at once if it finishes in its first poll, else until
/// `started + grace`; `None` when that passed first.
pub(super) async fn within<F: Future>(
    call: F,
    started: tokio::time::Instant,
    grace: Duration,
) -> Option<F::Output> {
    let mut call = std::pin::pin!(call);
    match futures::poll!(call.as_mut()) {
        std::task::Poll::Ready(r) => Some(r),
        std::task::Poll::Pending => tokio::time::timeout_at(started + grace, call).await.ok(),
    }
}
