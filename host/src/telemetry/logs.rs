//! Log lines that carry the trace: while a worker handles a delivery, every
//! line it writes (the host's own and the component's) ends with the
//! delivery's `trace_id` and `span_id`, and the message's
//! `correlation_id` when it has one, in the human and the JSON format.
//!
//! The delivery is held in a task-local for the handling; the fields are
//! made only when a line is written.

use std::sync::OnceLock;

use bytes::Bytes;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::Trace;

tokio::task_local! {
    static HANDLING: Handling;
}

/// What the log lines of one delivery's handling carry.
pub struct Handling {
    /// Trace and span id, as hex.
    ids: Option<(String, String)>,
    /// The correlation id, read from the message on the first line written.
    correlation: OnceLock<Option<String>>,
    /// The message's headers' correlation id, if any (found at once: headers are few).
    header: Option<String>,
    /// Its payload, searched for a `correlation_id` only when a line is written.
    payload: Bytes,
}

impl Handling {
    /// For a delivery of a message with `headers` and `payload` under `trace`.
    pub fn new(trace: &Trace, headers: &[(String, String)], payload: &Bytes) -> Handling {
        Handling {
            ids: trace.ids().map(|(t, s)| (t.to_string(), s.to_string())),
            correlation: OnceLock::new(),
            header: header_correlation(headers),
            payload: payload.clone(),
        }
    }

    /// For a call that handles several messages: the call's own ids.
    pub fn batch(trace: &Trace) -> Handling {
        Handling {
            ids: trace.ids().map(|(t, s)| (t.to_string(), s.to_string())),
            correlation: OnceLock::from(None),
            header: None,
            payload: Bytes::new(),
        }
    }

    fn correlation(&self) -> Option<&str> {
        self.correlation
            .get_or_init(|| {
                self.header
                    .clone()
                    .or_else(|| payload_correlation(&self.payload))
            })
            .as_deref()
    }

    /// Runs `f` with its lines carrying this delivery's fields.
    pub async fn scope<F: std::future::Future>(self, f: F) -> F::Output {
        HANDLING.scope(self, f).await
    }
}

/// The correlation id of a message: a `correlation-id` style header, or
/// the payload's `correlation_id` field (as in the alert service's
/// messages).
pub fn correlation_id(headers: &[(String, String)], payload: &[u8]) -> Option<String> {
    header_correlation(headers).or_else(|| payload_correlation(payload))
}

fn header_correlation(headers: &[(String, String)]) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| {
            k.eq_ignore_ascii_case("correlation-id")
                || k.eq_ignore_ascii_case("x-correlation-id")
                || k.eq_ignore_ascii_case("correlation_id")
        })
        .map(|(_, v)| v.clone())
}

fn payload_correlation(payload: &[u8]) -> Option<String> {
    if !payload.windows(14).any(|w| w == b"correlation_id") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v.get("correlation_id")?.as_str().map(str::to_owned)
}

/// Whether a line is human text or a JSON object.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Text,
    Json,
}

/// An event formatter that appends the delivery's fields to what `F`
/// writes.
pub struct WithDelivery<F> {
    inner: F,
    shape: Shape,
}

impl<F> WithDelivery<F> {
    /// Around a human-readable formatter: ` trace_id=… span_id=…`.
    pub fn text(inner: F) -> Self {
        WithDelivery {
            inner,
            shape: Shape::Text,
        }
    }

    /// Around a JSON formatter: `"trace_id":…` fields in the object.
    pub fn json(inner: F) -> Self {
        WithDelivery {
            inner,
            shape: Shape::Json,
        }
    }
}

impl<S, N, F> FormatEvent<S, N> for WithDelivery<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let fields = HANDLING
            .try_with(|h| {
                let mut fields: Vec<(&'static str, String)> = Vec::with_capacity(3);
                if let Some((t, s)) = &h.ids {
                    fields.push(("trace_id", t.clone()));
                    fields.push(("span_id", s.clone()));
                }
                if let Some(c) = h.correlation() {
                    fields.push(("correlation_id", c.to_owned()));
                }
                fields
            })
            .unwrap_or_default();
        if fields.is_empty() {
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let line = line.trim_end_matches('\n');
        match self.shape {
            Shape::Json => {
                let Some(body) = line.strip_suffix('}') else {
                    return writeln!(writer, "{line}");
                };
                write!(writer, "{body}")?;
                for (k, v) in &fields {
                    let v = serde_json::to_string(v).map_err(|_| std::fmt::Error)?;
                    write!(writer, ",\"{k}\":{v}")?;
                }
                writeln!(writer, "}}")
            }
            Shape::Text => {
                write!(writer, "{line}")?;
                for (k, v) in &fields {
                    if v.contains([' ', '"', '=']) || v.is_empty() {
                        write!(writer, " {k}={v:?}")?;
                    } else {
                        write!(writer, " {k}={v}")?;
                    }
                }
                writeln!(writer)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn correlation_ids_come_from_headers_or_payload() {
        use super::correlation_id;
        let payload = br#"{"correlation_id":"req-12345","alert":{}}"#;
        assert_eq!(correlation_id(&[], payload).as_deref(), Some("req-12345"));
        let headers = [("X-Correlation-Id".to_owned(), "hdr-1".to_owned())];
        assert_eq!(correlation_id(&headers, payload).as_deref(), Some("hdr-1"));
        assert_eq!(correlation_id(&[], b"{}"), None);
    }
}
