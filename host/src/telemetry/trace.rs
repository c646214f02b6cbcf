//! [`Trace`]: where one delivery (or one of its host calls) stands in its
//! trace, and the spans, events and attributes weir records on it. Names
//! and attributes follow OpenTelemetry's messaging semantic conventions;
//! weir's own are under `weir.`.

use std::time::Duration;

use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceId, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;

/// Where a piece of work stands in its trace. Cheap to clone; a recorded
/// span ends when [`Trace::end`] is called or the last clone is dropped.
#[derive(Clone, Default)]
pub struct Trace(Kind);

#[derive(Clone, Default)]
enum Kind {
    /// No trace: the message carried none and nothing is exported.
    #[default]
    None,
    /// A context known but not recorded here (exports off, or not
    /// sampled): passed on unchanged to what the component sends.
    Passed(SpanContext),
    /// A span recorded here; its children are made by the same tracer.
    Recorded(Context, SdkTracer),
}

/// How a component's message leaves the host.
#[derive(Clone, Copy, Debug)]
pub enum Outgoing {
    /// Core NATS publish (or a reply).
    Publish,
    /// Request/reply: waits for the answer.
    Request,
    /// JetStream publish: waits for the stream's acknowledgement.
    JetStream,
}

impl Trace {
    /// A context passed on without a span of its own.
    pub(super) fn passed(sc: SpanContext) -> Trace {
        Trace(Kind::Passed(sc))
    }

    /// A recorded span, or what is passed on when the sampler dropped it.
    pub(super) fn started(span: opentelemetry_sdk::trace::Span, tracer: &SdkTracer) -> Trace {
        use opentelemetry::trace::Span as _;
        if span.is_recording() {
            Trace(Kind::Recorded(
                Context::new().with_span(span),
                tracer.clone(),
            ))
        } else {
            Trace(Kind::Passed(span.span_context().clone()))
        }
    }

    /// Whether there is any context to pass on.
    pub fn is_some(&self) -> bool {
        !matches!(self.0, Kind::None)
    }

    /// Whether spans are recorded (and exported) under it.
    pub fn is_recording(&self) -> bool {
        matches!(self.0, Kind::Recorded(..))
    }

    /// The context what is sent under it carries.
    pub fn span_context(&self) -> Option<SpanContext> {
        match &self.0 {
            Kind::None => None,
            Kind::Passed(sc) => Some(sc.clone()),
            Kind::Recorded(cx, _) => Some(cx.span().span_context().clone()),
        }
    }

    /// Trace and span id, for log lines.
    pub fn ids(&self) -> Option<(TraceId, SpanId)> {
        let pick = |sc: &SpanContext| (sc.trace_id(), sc.span_id());
        match &self.0 {
            Kind::None => None,
            Kind::Passed(sc) => Some(pick(sc)),
            Kind::Recorded(cx, _) => Some(pick(cx.span().span_context())),
        }
    }

    /// Trace and span id of a recorded span (a metric's exemplar points at
    /// a trace that exists).
    pub fn recorded_ids(&self) -> Option<(TraceId, SpanId)> {
        match &self.0 {
            Kind::Recorded(cx, _) => Some({
                let sc = cx.span().span_context().clone();
                (sc.trace_id(), sc.span_id())
            }),
            _ => None,
        }
    }

    /// Writes its context into outgoing headers (not over a `traceparent`
    /// the component set itself).
    pub fn inject(&self, headers: &mut Vec<(String, String)>) {
        match &self.0 {
            Kind::None => {}
            Kind::Passed(sc) => super::context::inject(headers, sc),
            Kind::Recorded(cx, _) => super::context::inject(headers, cx.span().span_context()),
        }
    }

    /// A child span; a passed context stays as it is. Name, attributes
    /// and links are built only when the child is recorded.
    fn child(
        &self,
        name: impl FnOnce() -> String,
        kind: SpanKind,
        attributes: impl FnOnce() -> Vec<KeyValue>,
        links: impl FnOnce() -> Vec<Link>,
    ) -> Trace {
        match &self.0 {
            Kind::None | Kind::Passed(_) => self.clone(),
            Kind::Recorded(cx, tracer) => {
                let builder = tracer
                    .span_builder(name())
                    .with_kind(kind)
                    .with_attributes(attributes())
                    .with_links(links());
                Trace::started(tracer.build_with_context(builder, cx), tracer)
            }
        }
    }

    /// The span of one call into the component (its host calls are
    /// children of it).
    pub fn call(&self, component: &str, attempt: u32) -> Trace {
        self.child(
            || format!("handle {component}"),
            SpanKind::Internal,
            || {
                vec![
                    KeyValue::new("weir.component", component.to_owned()),
                    KeyValue::new("weir.delivery.attempt", i64::from(attempt)),
                ]
            },
            Vec::new,
        )
    }

    /// The span of one call with a batch of messages: a child of the first
    /// recorded message's span (else it passes on the first traced one's
    /// context), linked to the other recorded messages' spans (the
    /// messaging conventions' batch processing; a link to a span that was
    /// not sampled would lead nowhere).
    pub fn batch(traces: &[&Trace], component: &str) -> Trace {
        let first = traces
            .iter()
            .find(|t| t.is_recording())
            .or_else(|| traces.iter().find(|t| t.is_some()));
        let Some(first) = first else {
            return Trace::default();
        };
        let n = traces.len();
        first.child(
            || format!("handle {component}"),
            SpanKind::Internal,
            || {
                vec![
                    KeyValue::new("weir.component", component.to_owned()),
                    KeyValue::new("messaging.batch.message_count", n as i64),
                ]
            },
            || {
                traces
                    .iter()
                    .filter(|t| t.is_recording() && !std::ptr::eq(**t, *first))
                    .filter_map(|t| t.span_context())
                    .map(Link::with_context)
                    .collect()
            },
        )
    }

    /// The span of a message the component sends.
    pub fn send(&self, how: Outgoing, subject: &str, bytes: usize) -> Trace {
        if !self.is_recording() {
            return self.clone();
        }
        let (verb, kind) = match how {
            Outgoing::Publish | Outgoing::JetStream => ("publish", SpanKind::Producer),
            Outgoing::Request => ("request", SpanKind::Client),
        };
        self.child(
            || format!("{verb} {subject}"),
            kind,
            || {
                let mut a = vec![
                    KeyValue::new("messaging.system", "nats"),
                    KeyValue::new("messaging.operation.type", "send"),
                    KeyValue::new("messaging.operation.name", verb),
                    KeyValue::new("messaging.destination.name", subject.to_owned()),
                    KeyValue::new("messaging.message.body.size", bytes as i64),
                ];
                if matches!(how, Outgoing::JetStream) {
                    a.push(KeyValue::new("weir.jetstream", true));
                }
                a
            },
            Vec::new,
        )
    }

    /// The span of a cache call that reaches Redis (L2).
    pub fn cache(&self, operation: &'static str) -> Trace {
        if !self.is_recording() {
            return Trace::default();
        }
        self.child(
            || format!("cache {operation}"),
            SpanKind::Client,
            || {
                vec![
                    KeyValue::new("db.system.name", "redis"),
                    KeyValue::new("db.operation.name", operation),
                ]
            },
            Vec::new,
        )
    }

    /// Attributes, built only when recorded.
    pub fn set(&self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Kind::Recorded(cx, _) = &self.0 {
            cx.span().set_attributes(attributes());
        }
    }

    /// An event, built only when recorded.
    pub fn event(&self, name: &'static str, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Kind::Recorded(cx, _) = &self.0 {
            cx.span().add_event(name, attributes());
        }
    }

    /// A retry: the attempt that failed, why, and the wait before the next.
    pub fn retry(&self, attempt: u32, reason: &str, backoff: Duration) {
        self.event("retry", || {
            vec![
                KeyValue::new("weir.delivery.attempt", i64::from(attempt)),
                KeyValue::new("weir.reason", reason.to_owned()),
                KeyValue::new("weir.backoff_ms", backoff.as_millis() as i64),
            ]
        });
    }

    /// Where JetStream stored a published message.
    pub fn stored(&self, stream: &str, sequence: u64, duplicate: bool) {
        self.set(|| {
            vec![
                KeyValue::new("weir.jetstream.stream", stream.to_owned()),
                KeyValue::new("weir.jetstream.sequence", sequence as i64),
                KeyValue::new("weir.jetstream.duplicate", duplicate),
            ]
        });
    }

    /// What the delivery came to: `handled`, `dead-lettered`, ….
    pub fn outcome(&self, outcome: &'static str) {
        self.set(|| vec![KeyValue::new("weir.outcome", outcome)]);
    }

    /// Given up on: the dead letter's reason, as an event and the status.
    pub fn dead_lettered(&self, reason: &str, attempt: u32) {
        self.event("dead-lettered", || {
            vec![
                KeyValue::new("weir.reason", reason.to_owned()),
                KeyValue::new("weir.delivery.attempt", i64::from(attempt)),
            ]
        });
        self.outcome("dead-lettered");
        self.error(reason);
    }

    /// A failed instance (trap, deadline, limit): the conventions'
    /// `exception` event, and an error status.
    pub fn failure(&self, kind: &str, detail: &str) {
        self.event("exception", || {
            vec![
                KeyValue::new("exception.type", kind.to_owned()),
                KeyValue::new("exception.message", detail.to_owned()),
            ]
        });
        self.error(detail);
    }

    /// An error status with its description.
    pub fn error(&self, description: &str) {
        if let Kind::Recorded(cx, _) = &self.0 {
            cx.span().set_status(Status::error(description.to_owned()));
        }
    }

    /// Ends the span now (a no-op when nothing is recorded).
    pub fn end(&self) {
        if let Kind::Recorded(cx, _) = &self.0 {
            cx.span().end();
        }
    }

    /// Ends a host call's span, with an error status when it failed.
    pub fn end_with<T, E: std::fmt::Display>(&self, result: &Result<T, E>) {
        if let (Kind::Recorded(..), Err(e)) = (&self.0, result) {
            self.error(&e.to_string());
        }
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{TraceFlags, TraceState, TracerProvider as _};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{
        Sampler, SdkTracerProvider, Span as SdkSpan, SpanData, SpanProcessor,
    };

    use super::*;

    /// Keeps what ends, in order.
    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Collect {
        fn on_start(&self, _span: &mut SdkSpan, _cx: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    fn tracer() -> (SdkTracer, Collect) {
        let collect = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(collect.clone())
            .with_sampler(Sampler::AlwaysOn)
            .build();
        (provider.tracer("test"), collect)
    }

    fn recorded(tracer: &SdkTracer, name: &'static str) -> Trace {
        Trace::started(tracer.start(name), tracer)
    }

    fn unsampled(n: u128) -> Trace {
        Trace::passed(SpanContext::new(
            TraceId::from(n),
            SpanId::from(n as u64),
            TraceFlags::default(),
            false,
            TraceState::NONE,
        ))
    }

    #[test]
    fn a_batch_call_is_a_child_of_the_first_sampled_message_linked_to_the_others() {
        let (tracer, collect) = tracer();
        let (a, c) = (recorded(&tracer, "a"), recorded(&tracer, "c"));
        let b = unsampled(7);
        let call = Trace::batch(&[&b, &a, &Trace::default(), &c], "strategy");
        assert!(call.is_recording());
        call.end();
        let spans = collect.0.lock().unwrap().clone();
        let span = spans.iter().find(|s| s.name == "handle strategy").unwrap();
        let (a_ids, c_ids) = (a.ids().unwrap(), c.ids().unwrap());
        assert_eq!(span.span_context.trace_id(), a_ids.0);
        assert_eq!(span.parent_span_id, a_ids.1);
        // The other sampled message only: the unsampled one has no span to link to.
        let links: Vec<_> = span
            .links
            .iter()
            .map(|l| l.span_context.span_id())
            .collect();
        assert_eq!(links, vec![c_ids.1]);
        assert!(
            span.attributes
                .contains(&KeyValue::new("messaging.batch.message_count", 4))
        );
    }

    #[test]
    fn an_unsampled_batch_passes_the_first_context_on() {
        let (_tracer, collect) = tracer();
        let call = Trace::batch(&[&Trace::default(), &unsampled(3), &unsampled(4)], "s");
        assert!(!call.is_recording());
        assert_eq!(call.ids().unwrap().0, TraceId::from(3));
        assert!(Trace::batch(&[&Trace::default()], "s").ids().is_none());
        assert!(collect.0.lock().unwrap().is_empty());
    }
}
