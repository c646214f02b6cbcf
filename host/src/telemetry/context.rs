//! W3C Trace Context in message headers: the `traceparent` (and
//! `tracestate`) a delivery carries in, and the one weir writes on what a
//! component sends while handling it.

use std::str::FromStr as _;

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// The header holding version, trace id, parent span id and flags.
pub const TRACEPARENT: &str = "traceparent";
/// The header holding vendors' trace state, passed on unchanged.
pub const TRACESTATE: &str = "tracestate";

/// The context a message's headers carry: `None` without a valid
/// `traceparent` (an invalid one is ignored, as the W3C spec asks: the
/// delivery starts a trace of its own).
pub fn extract(headers: &[(String, String)]) -> Option<SpanContext> {
    if headers.is_empty() {
        return None;
    }
    let (trace_id, span_id, flags) = parse(header(headers, TRACEPARENT)?)?;
    let state = header(headers, TRACESTATE)
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// A header's value (names compare without case, as NATS headers do for
/// these).
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Reads a `traceparent` value: `00-<32 hex>-<16 hex>-<2 hex>`. A later
/// version is read by version 00's rules where its first four fields fit;
/// version `ff`, upper-case hex and all-zero ids are invalid.
pub fn parse(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let mut fields = value.split('-');
    let version = fields.next()?;
    let trace = fields.next()?;
    let span = fields.next()?;
    let flags = fields.next()?;
    if version.len() != 2 || !lower_hex(version) || version == "ff" {
        return None;
    }
    if version == "00" && fields.next().is_some() {
        return None;
    }
    let sizes_fit = trace.len() == 32 && span.len() == 16 && flags.len() == 2;
    if !sizes_fit || !lower_hex(trace) || !lower_hex(span) || !lower_hex(flags) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id, span_id, TraceFlags::new(flags & 1)))
}

fn lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The `traceparent` value for a span context.
pub fn format(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// Adds `traceparent` (and `tracestate`, when there is one) for `sc`,
/// unless the headers already carry a `traceparent`: a context the
/// component set itself wins.
pub fn inject(headers: &mut Vec<(String, String)>, sc: &SpanContext) {
    if header(headers, TRACEPARENT).is_some() {
        return;
    }
    headers.push((TRACEPARENT.to_owned(), format(sc)));
    let state = sc.trace_state().header();
    if !state.is_empty() && header(headers, TRACESTATE).is_none() {
        headers.push((TRACESTATE.to_owned(), state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_the_specs_example_and_writes_it_back() {
        let headers = vec![
            ("Traceparent".to_owned(), VALID.to_owned()),
            ("tracestate".to_owned(), "congo=t61rcWkgMzE".to_owned()),
        ];
        let sc = extract(&headers).unwrap();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(format(&sc), VALID);
        let mut out = Vec::new();
        inject(&mut out, &sc);
        assert_eq!(
            out,
            vec![
                ("traceparent".to_owned(), VALID.to_owned()),
                ("tracestate".to_owned(), "congo=t61rcWkgMzE".to_owned()),
            ]
        );
    }

    #[test]
    fn refuses_what_the_spec_calls_invalid() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad:?} accepted");
        }
        // A later version with more fields is read by version 00's rules.
        let (_, _, flags) = parse(&format!("01{}-what-ever", &VALID[2..])).unwrap();
        assert!(flags.is_sampled());
    }

    #[test]
    fn a_components_own_traceparent_wins() {
        let sc = extract(&[("traceparent".into(), VALID.into())]).unwrap();
        let own = "00-11111111111111111111111111111111-2222222222222222-00";
        let mut headers = vec![("TraceParent".to_owned(), own.to_owned())];
        inject(&mut headers, &sc);
        assert_eq!(headers, vec![("TraceParent".to_owned(), own.to_owned())]);
    }
}
