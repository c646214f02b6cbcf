//! `[telemetry]`: traces exported over OTLP. Off unless an endpoint is
//! named here or in the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; what this table leaves out comes
//! from the standard `OTEL_*` variables.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The one OTLP protocol weir speaks (the collector's port 4318).
pub const OTLP_HTTP_PROTOBUF: &str = "http/protobuf";

/// `[telemetry]` as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// The collector's OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318`
    /// (spans go to `<endpoint>/v1/traces`).
    pub endpoint: Option<String>,
    /// `http/protobuf`, the only one weir speaks.
    pub protocol: Option<String>,
    /// Share of new traces recorded, 0 to 1 (default 1). A delivery whose
    /// `traceparent` says sampled or not follows that decision.
    pub sampling: Option<f64>,
    /// The `service.name` of the host's spans; default the host's id.
    pub service_name: Option<String>,
    /// HTTP headers sent to the collector (e.g. an API key).
    pub headers: BTreeMap<String, String>,
}

impl TelemetrySettings {
    /// What is wrong with it, as `(field, message)`.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if let Some(e) = &self.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Some((
                "telemetry.endpoint",
                format!(
                    "{e:?} is not an http:// or https:// URL (the collector's OTLP/HTTP port, e.g. http://127.0.0.1:4318)"
                ),
            ));
        }
        if let Some(why) = self.protocol.as_deref().and_then(protocol_problem) {
            return Some(("telemetry.protocol", why));
        }
        if let Some(s) = self.sampling
            && !(0.0..=1.0).contains(&s)
        {
            return Some((
                "telemetry.sampling",
                format!("{s} is not a share between 0 and 1"),
            ));
        }
        None
    }
}

/// Why an OTLP protocol name is refused, if it is.
pub fn protocol_problem(protocol: &str) -> Option<String> {
    (protocol != OTLP_HTTP_PROTOBUF).then(|| {
        format!("weir exports OTLP over HTTP with protobuf bodies ({OTLP_HTTP_PROTOBUF}), not {protocol:?}: point it at the collector's OTLP/HTTP port (4318)")
    })
}
