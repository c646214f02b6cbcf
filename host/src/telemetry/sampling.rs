//! The sampling decision, made once per delivery before any span is built:
//! an unsampled delivery (most of them at a low ratio) only gets ids to
//! pass on, and costs no span, no attributes and no clock reads.
//!
//! The rules are OpenTelemetry's standard samplers: a parent-based one
//! follows the `sampled` flag of the incoming `traceparent`; a trace-id
//! ratio decides on the trace id itself, so every host that sees the
//! trace decides alike. The SDK then records what weir chose to record:
//! its own sampler is always-on, and the trace id weir decided on is the
//! one the SDK gives the span (see [`ChosenIds`]).

use std::cell::Cell;

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

use super::SamplerChoice;

impl SamplerChoice {
    /// Whether a delivery with this parent (or none) and trace id is
    /// recorded.
    pub(super) fn samples(self, parent: Option<&SpanContext>, trace_id: TraceId) -> bool {
        match (self, parent) {
            (SamplerChoice::ParentBased(_), Some(p)) => p.is_sampled(),
            (SamplerChoice::ParentBased(r) | SamplerChoice::Ratio(r), _) => by_ratio(r, trace_id),
        }
    }
}

/// The trace-id ratio rule: the trace id's low 63 bits, read as a number,
/// fall under `ratio` of their range (as OpenTelemetry's SDKs read them).
fn by_ratio(ratio: f64, trace_id: TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let bytes = trace_id.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    (u64::from_be_bytes(low) >> 1) < bound
}

/// A new random trace id.
pub(super) fn new_trace_id() -> TraceId {
    RandomIdGenerator::default().new_trace_id()
}

/// What an unsampled delivery passes on: a child of its parent (same
/// trace, new span id, `tracestate` kept), flagged not sampled.
pub(super) fn unsampled(trace_id: TraceId, parent: Option<&SpanContext>) -> SpanContext {
    let state = parent.map_or_else(TraceState::default, |p| p.trace_state().clone());
    SpanContext::new(
        trace_id,
        RandomIdGenerator::default().new_span_id(),
        TraceFlags::default(),
        false,
        state,
    )
}

thread_local! {
    /// The trace id the next root span built on this thread gets.
    static CHOSEN: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// Runs `build` (which builds one span) so that, if that span starts a
/// trace, its trace id is `trace_id`: the id the sampling decision was
/// made on.
pub(super) fn with_trace_id<T>(trace_id: TraceId, build: impl FnOnce() -> T) -> T {
    CHOSEN.with(|c| c.set(Some(trace_id)));
    let built = build();
    CHOSEN.with(|c| c.set(None));
    built
}

/// The SDK's id generator: random ids, except for a root span built under
/// [`with_trace_id`].
#[derive(Debug, Default)]
pub(super) struct ChosenIds(RandomIdGenerator);

impl IdGenerator for ChosenIds {
    fn new_trace_id(&self) -> TraceId {
        CHOSEN
            .with(Cell::take)
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(low: u64) -> TraceId {
        TraceId::from_bytes([[0u8; 8], low.to_be_bytes()].concat().try_into().unwrap())
    }

    fn parent(sampled: bool) -> SpanContext {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        SpanContext::new(id(u64::MAX), SpanId::from(7), flags, true, TraceState::NONE)
    }

    #[test]
    fn the_ratio_reads_the_trace_id() {
        // Low 63 bits of 0 are under any positive share; of all ones, under none.
        assert!(by_ratio(0.01, id(0)));
        assert!(!by_ratio(0.01, id(u64::MAX)));
        assert!(by_ratio(1.0, id(u64::MAX)));
        assert!(!by_ratio(0.0, id(0)));
        // Half the range: the boundary falls at 2^62 (after the shift).
        assert!(by_ratio(0.5, id((1u64 << 63) - 2)));
        assert!(!by_ratio(0.5, id(1u64 << 63)));
        // About the asked share of random ids.
        let n = (0..20_000)
            .filter(|_| by_ratio(0.1, new_trace_id()))
            .count();
        assert!((1_600..2_400).contains(&n), "{n} of 20,000 at 0.1");
    }

    #[test]
    fn parent_based_follows_the_flag_and_ratio_the_id() {
        let pb = SamplerChoice::ParentBased(0.0);
        assert!(pb.samples(Some(&parent(true)), id(u64::MAX)));
        assert!(!SamplerChoice::ParentBased(1.0).samples(Some(&parent(false)), id(0)));
        assert!(!pb.samples(None, id(0)));
        // A plain ratio ignores the flag.
        assert!(!SamplerChoice::Ratio(0.01).samples(Some(&parent(true)), id(u64::MAX)));
        assert!(SamplerChoice::Ratio(0.01).samples(Some(&parent(false)), id(0)));
    }

    #[test]
    fn a_root_gets_the_trace_id_it_was_sampled_on() {
        let ids = ChosenIds::default();
        let chosen = id(42);
        assert_eq!(with_trace_id(chosen, || ids.new_trace_id()), chosen);
        // Once only, and not outside.
        assert_ne!(
            with_trace_id(chosen, || {
                ids.new_trace_id();
                ids.new_trace_id()
            }),
            chosen
        );
        assert_ne!(ids.new_trace_id(), chosen);
    }

    #[test]
    fn an_unsampled_child_keeps_trace_and_state() {
        let state = TraceState::from_key_value([("vendor", "x")]).unwrap();
        let p = SpanContext::new(id(9), SpanId::from(7), TraceFlags::SAMPLED, true, state);
        let c = unsampled(p.trace_id(), Some(&p));
        assert_eq!(c.trace_id(), p.trace_id());
        assert_ne!(c.span_id(), p.span_id());
        assert!(!c.is_sampled());
        assert_eq!(c.trace_state().header(), "vendor=x");
    }
}
