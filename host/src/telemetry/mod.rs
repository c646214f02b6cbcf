//! Traces across the pipeline: the W3C trace context a delivery carries
//! in its headers is continued (or a trace is started, under the sampling
//! policy), every message a component sends while handling it carries the
//! child context, and spans go to an OpenTelemetry collector over OTLP.
//!
//! [`Telemetry`] is built once per host from `[telemetry]` and the
//! standard `OTEL_*` variables. Off (the default), nothing is recorded and
//! a `traceparent` that comes in is passed on unchanged. Exports never
//! hold up handling: spans wait in a bounded queue, dropped and counted
//! when it is full (see [`export`]).

pub mod context;
pub mod export;
pub mod logs;
mod sampling;
mod trace;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanExporter as _};

pub use export::Counts;
pub use trace::{Outgoing, Trace};

use crate::bus::Delivery;
use crate::manifest::{TelemetrySettings, protocol_problem};

/// A host's tracing: off, or a tracer whose spans are exported. A cheap
/// handle.
#[derive(Clone, Default)]
pub struct Telemetry(Option<Arc<Exporting>>);

struct Exporting {
    /// Makes the spans (ids, processor) of what `sampler` keeps.
    tracer: SdkTracer,
    /// Which deliveries are recorded (decided before any span is built).
    sampler: SamplerChoice,
    /// Flushed and stopped when the host stops.
    provider: SdkTracerProvider,
    /// Exported and dropped spans, for `/metrics`.
    counts: Arc<Counts>,
    /// Where they go, for the start's log line.
    endpoint: String,
}

/// What the `[telemetry]` table and the `OTEL_*` variables come to.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// OTLP/HTTP traces URL (`…/v1/traces`).
    pub endpoint: String,
    /// Sampler for traces this host starts.
    pub sampler: SamplerChoice,
    /// `service.name`.
    pub service_name: String,
}

/// The standard samplers (`OTEL_TRACES_SAMPLER`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerChoice {
    /// Follows the parent's decision; new traces at this ratio.
    ParentBased(f64),
    /// This ratio, whatever the parent decided.
    Ratio(f64),
}

/// Reads an environment variable through `env` (tests pass their own).
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Whether traces are exported, and how: `None` when neither the manifest
/// nor the environment names an endpoint (or `OTEL_SDK_DISABLED=true`,
/// `OTEL_TRACES_EXPORTER=none`).
pub fn resolve(
    settings: &TelemetrySettings,
    host_id: &str,
    env: Env<'_>,
) -> anyhow::Result<Option<Resolved>> {
    let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    let endpoint = match (
        &settings.endpoint,
        set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
    ) {
        (Some(base), _) => traces_url(base),
        (None, Some(full)) => full,
        (None, None) => match set("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Some(base) => traces_url(&base),
            None => return Ok(None),
        },
    };
    let protocol = settings
        .protocol
        .clone()
        .or_else(|| set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
        .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
    if let Some(why) = protocol.as_deref().and_then(protocol_problem) {
        anyhow::bail!("telemetry: {why}");
    }
    let sampler = match settings.sampling {
        Some(ratio) => SamplerChoice::ParentBased(ratio),
        None => sampler_from_env(set("OTEL_TRACES_SAMPLER"), set("OTEL_TRACES_SAMPLER_ARG"))?,
    };
    let service_name = settings
        .service_name
        .clone()
        .or_else(|| set("OTEL_SERVICE_NAME"))
        .unwrap_or_else(|| host_id.to_owned());
    Ok(Some(Resolved {
        endpoint,
        sampler,
        service_name,
    }))
}

/// `<base>/v1/traces`, as the OTLP spec builds it from a base endpoint.
fn traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim_end_matches('/'))
}

/// The sampler the OpenTelemetry variables name (default: parent-based,
/// every new trace).
fn sampler_from_env(name: Option<String>, arg: Option<String>) -> anyhow::Result<SamplerChoice> {
    let ratio = || -> anyhow::Result<f64> {
        match &arg {
            None => Ok(1.0),
            Some(a) => a
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .with_context(|| {
                    format!("OTEL_TRACES_SAMPLER_ARG={a:?} is not a ratio between 0 and 1")
                }),
        }
    };
    Ok(match name.as_deref().map(str::trim) {
        None | Some("parentbased_always_on") => SamplerChoice::ParentBased(1.0),
        Some("parentbased_always_off") => SamplerChoice::ParentBased(0.0),
        Some("parentbased_traceidratio") => SamplerChoice::ParentBased(ratio()?),
        Some("always_on") => SamplerChoice::Ratio(1.0),
        Some("always_off") => SamplerChoice::Ratio(0.0),
        Some("traceidratio") => SamplerChoice::Ratio(ratio()?),
        Some(other) => anyhow::bail!(
            "OTEL_TRACES_SAMPLER={other:?} is not one weir knows (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)"
        ),
    })
}

impl Telemetry {
    /// Tracing off: nothing recorded, contexts passed on.
    pub fn off() -> Telemetry {
        Telemetry(None)
    }

    /// Starts exporting when the manifest or the environment asks for it.
    pub fn start(settings: &TelemetrySettings, host_id: &str) -> anyhow::Result<Telemetry> {
        let env = |k: &str| std::env::var(k).ok();
        match resolve(settings, host_id, &env)? {
            None => Ok(Telemetry::off()),
            Some(resolved) => Self::export(&resolved, &settings.headers),
        }
    }

    /// Exports spans as `resolved` says.
    pub fn export(
        resolved: &Resolved,
        headers: &std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<Telemetry> {
        // The exporter's reqwest has no TLS provider of its own: ring, the
        // one the NATS client's rustls brings (a second install is a no-op).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let resource = Resource::builder_empty()
            .with_service_name(resolved.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(resolved.endpoint.clone())
            .with_headers(headers.clone().into_iter().collect())
            .build()
            .with_context(|| {
                format!("cannot set up the OTLP exporter for {}", resolved.endpoint)
            })?;
        // The export thread owns the exporter: it learns the resource here.
        exporter.set_resource(&resource);
        let counts = Arc::new(Counts::default());
        let processor = export::QueueProcessor::start(exporter, counts.clone())
            .context("cannot start the trace export thread")?;
        // weir decides what is sampled (see `sampling`); the SDK records
        // what it is given, with the trace id the decision was made on.
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::AlwaysOn)
            .with_id_generator(sampling::ChosenIds::default())
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("weir");
        Ok(Telemetry(Some(Arc::new(Exporting {
            tracer,
            sampler: resolved.sampler,
            provider,
            counts,
            endpoint: resolved.endpoint.clone(),
        }))))
    }

    /// Whether spans are exported.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Where spans go, when exported.
    pub fn endpoint(&self) -> Option<&str> {
        self.0.as_deref().map(|e| e.endpoint.as_str())
    }

    /// Exported and dropped spans, when exported.
    pub fn counts(&self) -> Option<&Counts> {
        self.0.as_deref().map(|e| &*e.counts)
    }

    /// The trace of a delivery to `component`'s instance `instance`:
    /// continues the message's `traceparent`, or starts a trace under the
    /// sampler. Its span starts when the host received the message (the
    /// queue wait is part of it) and ends when the delivery is settled.
    pub fn delivery(&self, delivery: &Delivery, component: &str, instance: usize) -> Trace {
        let parent = context::extract(&delivery.msg.headers);
        let Some(e) = &self.0 else {
            return parent.map(Trace::passed).unwrap_or_default();
        };
        let trace_id = parent
            .as_ref()
            .map_or_else(sampling::new_trace_id, |p| p.trace_id());
        if !e.sampler.samples(parent.as_ref(), trace_id) {
            return Trace::passed(sampling::unsampled(trace_id, parent.as_ref()));
        }
        let waited = delivery
            .meta
            .received
            .map(|r| r.elapsed())
            .unwrap_or_default();
        let start = SystemTime::now() - waited;
        let cx = match parent {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        let builder = e
            .tracer
            .span_builder(format!("process {}", delivery.msg.subject))
            .with_kind(SpanKind::Consumer)
            .with_start_time(start);
        let span = sampling::with_trace_id(trace_id, || e.tracer.build_with_context(builder, &cx));
        let trace = Trace::started(span, &e.tracer);
        trace.set(|| delivery_attributes(delivery, component, instance, waited));
        trace
    }

    /// Sends what is queued and stops the export thread (at most `wait`).
    pub fn shutdown(&self, wait: Duration) {
        if let Some(e) = &self.0
            && let Err(err) = e.provider.shutdown_with_timeout(wait)
        {
            tracing::warn!("traces not all exported at shutdown: {err}");
        }
    }

    /// Sends what is queued now.
    pub fn flush(&self) {
        if let Some(e) = &self.0 {
            let _ = e.provider.force_flush();
        }
    }
}

/// A delivery's attributes (the messaging conventions', and weir's).
fn delivery_attributes(
    d: &Delivery,
    component: &str,
    instance: usize,
    waited: Duration,
) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new("messaging.system", "nats"),
        KeyValue::new("messaging.operation.type", "process"),
        KeyValue::new("messaging.operation.name", "process"),
        KeyValue::new("messaging.destination.name", d.msg.subject.clone()),
        KeyValue::new("messaging.message.body.size", d.msg.payload.len() as i64),
        KeyValue::new("weir.component", component.to_owned()),
        KeyValue::new("weir.instance", instance as i64),
        KeyValue::new("weir.delivery.attempt", i64::from(d.meta.attempt.max(1))),
        KeyValue::new("weir.queue.wait_ms", waited.as_secs_f64() * 1e3),
    ];
    if let Some(stream) = &d.meta.stream {
        a.push(KeyValue::new("weir.jetstream.stream", stream.clone()));
    }
    if let Some(seq) = d.meta.sequence {
        a.push(KeyValue::new("weir.jetstream.sequence", seq as i64));
    }
    if d.meta.attempt > 1 {
        a.push(KeyValue::new(
            "weir.delivery.redeliveries",
            i64::from(d.meta.attempt - 1),
        ));
    }
    if let Some(id) = logs::correlation_id(&d.msg.headers, &d.msg.payload) {
        a.push(KeyValue::new("messaging.message.conversation_id", id));
    }
    a
}

/// When the host received a delivery, stamped by the dispatcher only while
/// traces are exported (the queue wait of its span).
pub fn received_now(telemetry: &Telemetry) -> Option<Instant> {
    telemetry.is_on().then(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::{Resolved, SamplerChoice, resolve};
    use crate::manifest::TelemetrySettings;

    fn with_env(
        settings: &TelemetrySettings,
        vars: &[(&str, &str)],
    ) -> anyhow::Result<Option<Resolved>> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let env = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        resolve(settings, "host-1", &env)
    }

    #[test]
    fn off_unless_an_endpoint_is_named() {
        let none = TelemetrySettings::default();
        assert_eq!(with_env(&none, &[]).unwrap(), None);
        let on = with_env(&none, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(on.endpoint, "http://c:4318/v1/traces");
        assert_eq!(on.service_name, "host-1");
        assert_eq!(on.sampler, SamplerChoice::ParentBased(1.0));
        // The per-signal variable is the whole URL.
        let full = with_env(
            &none,
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/t")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(full.endpoint, "http://c:4318/t");
        let off = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert_eq!(with_env(&none, &off).unwrap(), None);
    }

    #[test]
    fn the_manifest_wins_and_the_environment_fills_in() {
        let settings = TelemetrySettings {
            endpoint: Some("http://m:4318".into()),
            sampling: Some(0.01),
            ..TelemetrySettings::default()
        };
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://e:4318"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("OTEL_SERVICE_NAME", "strategies"),
        ];
        let r = with_env(&settings, &vars).unwrap().unwrap();
        assert_eq!(r.endpoint, "http://m:4318/v1/traces");
        assert_eq!(r.sampler, SamplerChoice::ParentBased(0.01));
        assert_eq!(r.service_name, "strategies");
        let ratio = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://e:4318"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ];
        let r = with_env(&TelemetrySettings::default(), &ratio)
            .unwrap()
            .unwrap();
        assert_eq!(r.sampler, SamplerChoice::ParentBased(0.25));
    }

    #[test]
    fn refuses_what_it_cannot_do_in_words() {
        let none = TelemetrySettings::default();
        let grpc = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        let e = with_env(&none, &grpc).unwrap_err().to_string();
        assert!(e.contains("http/protobuf") && e.contains("\"grpc\""), "{e}");
        let bad = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ];
        let e = with_env(&none, &bad).unwrap_err().to_string();
        assert!(e.contains("OTEL_TRACES_SAMPLER_ARG=\"2\""), "{e}");
        let wrong = TelemetrySettings {
            sampling: Some(1.5),
            ..TelemetrySettings::default()
        };
        assert_eq!(wrong.problem().unwrap().0, "telemetry.sampling");
    }
}
