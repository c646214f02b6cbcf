//! Prometheus metrics, read from the host's own counters at scrape time
//! (a `prometheus-client` collector: nothing is counted twice).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{Observed, load};
use crate::cache::LayerStats;
use crate::latency::{EXPORTED, Exemplar};
use crate::stats::{ComponentStats, FlowStats};

#[derive(Debug)]
struct HostCollector {
    observed: ObservedDebug,
}

/// `Observed` holds trait objects without `Debug`; the collector needs it.
struct ObservedDebug(Observed);

impl std::fmt::Debug for ObservedDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observed")
    }
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: a row per label set (a lone row without labels is
/// written `name value`, not `name{} value`).
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: Vec<(Labels, M)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    if let [(labels, v)] = rows.as_slice()
        && labels.is_empty()
    {
        return v.encode(m);
    }
    for (labels, v) in &rows {
        v.encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: Vec<(Labels, u64)>,
) -> std::fmt::Result {
    let rows = rows.into_iter().map(|(l, v)| (l, ConstCounter::new(v)));
    family(enc, name, help, MetricType::Counter, rows.collect())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: Vec<(Labels, i64)>,
) -> std::fmt::Result {
    let rows = rows.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
    family(enc, name, help, MetricType::Gauge, rows.collect())
}

/// A per-component counter: metric name, help, and how to read it.
type ComponentCounter = (&'static str, &'static str, fn(&ComponentStats) -> u64);

/// Per-component counters (what is not tied to one subscription).
const COMPONENT_COUNTERS: [ComponentCounter; 8] = [
    (
        "weir_traps",
        "Instances that failed (trap, deadline, limit)",
        |s| load(&s.traps),
    ),
    (
        "weir_deadline_hits",
        "handle calls stopped by the deadline",
        |s| load(&s.deadline_hits),
    ),
    (
        "nats_messages_published",
        "Messages published by the component",
        |s| load(&s.published),
    ),
    (
        "weir_host_calls_denied",
        "Host calls refused by grants",
        |s| load(&s.denied),
    ),
    (
        "weir_host_calls_limited",
        "Host calls refused by quotas",
        |s| load(&s.limited),
    ),
    (
        "weir_log_lines_dropped",
        "Guest log lines dropped by the rate limit",
        |s| load(&s.log_dropped),
    ),
    ("weir_batch_calls", "handle-batch calls made", |s| {
        load(&s.batches)
    }),
    (
        "weir_messages_batched",
        "Messages passed to handle-batch calls",
        |s| load(&s.batched),
    ),
];

/// A per-subscription counter: metric name, help, and how to read it.
type FlowCounter = (&'static str, &'static str, fn(&FlowStats) -> u64);

/// Per component and subscription subject (the seed's `nats_messages_received_total`).
const FLOW_COUNTERS: [FlowCounter; 5] = [
    (
        "nats_messages_received",
        "Messages taken from the subscription",
        |s| load(&s.received),
    ),
    (
        "weir_messages_handled",
        "Messages handled successfully",
        |s| load(&s.handled),
    ),
    (
        "weir_messages_failed",
        "Delivery attempts that did not end handled",
        |s| load(&s.failed),
    ),
    (
        "weir_messages_retried",
        "Deliveries that ended in a retry",
        |s| load(&s.retried),
    ),
    (
        "weir_messages_dead_lettered",
        "Messages stored as dead letters on dlq.<subject>",
        |s| load(&s.dead_lettered),
    ),
];

/// A per-layer cache counter: metric name, help, and how to read it.
type CacheCounter = (&'static str, &'static str, fn(&LayerStats) -> u64);

/// Per cache layer (`{layer="l1"|"l2"|"l3"}`).
const CACHE_COUNTERS: [CacheCounter; 7] = [
    ("weir_cache_hits", "Cache reads that found a value", |l| {
        l.hits
    }),
    ("weir_cache_misses", "Cache reads that found nothing", |l| {
        l.misses
    }),
    ("weir_cache_sets", "Cache writes", |l| l.sets),
    (
        "weir_cache_deletes",
        "Cache deletes and invalidations",
        |l| l.deletes,
    ),
    ("weir_cache_errors", "Failed cache operations", |l| l.errors),
    (
        "weir_cache_evictions",
        "Entries evicted to stay in bounds",
        |l| l.evictions,
    ),
    (
        "weir_cache_compression_saved_bytes",
        "Bytes saved by compression",
        |l| l.bytes_saved,
    ),
];

impl Collector for HostCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let o = &self.observed.0;
        let label = |name: &str| vec![("component", name.to_owned())];
        for (metric, help, field) in COMPONENT_COUNTERS {
            let rows: Vec<(Labels, u64)> = o
                .components
                .iter()
                .map(|(n, s)| (label(n), field(s)))
                .collect();
            counter(&mut enc, metric, help, rows)?;
        }
        let in_flight: Vec<(Labels, i64)> = o
            .components
            .iter()
            .map(|(n, s)| (label(n), load(&s.in_flight) as i64))
            .collect();
        gauge(
            &mut enc,
            "weir_messages_in_flight",
            "Messages queued or being handled",
            in_flight,
        )?;
        let flow_label = |c: &str, subject: &str| {
            vec![("component", c.to_owned()), ("subject", subject.to_owned())]
        };
        for (metric, help, field) in FLOW_COUNTERS {
            let rows: Vec<(Labels, u64)> = o
                .flows
                .iter()
                .map(|f| (flow_label(&f.component, &f.subject), field(&f.stats)))
                .collect();
            counter(&mut enc, metric, help, rows)?;
        }
        let lag: Vec<(Labels, i64)> = o
            .flows
            .iter()
            .filter_map(|f| {
                let mut labels = flow_label(&f.component, &f.subject);
                labels.push(("stream", f.stream.clone()?));
                Some((labels, load(&f.stats.pending) as i64))
            })
            .collect();
        if !lag.is_empty() {
            gauge(
                &mut enc,
                "nats_consumer_pending",
                "Stream messages not yet delivered to the component's consumer (as of its last delivery)",
                lag,
            )?;
        }
        let mut m = enc.encode_descriptor(
            "nats_message_processing_seconds",
            "Wall time per delivery (handle plus settling)",
            None,
            MetricType::Histogram,
        )?;
        for f in &o.flows {
            let (sum, count, buckets) = f.stats.latency.prometheus();
            m.encode_family(&flow_label(&f.component, &f.subject))?
                .encode_histogram::<Labels>(sum, count, &buckets, None)?;
        }
        if let Some(n) = &o.nats {
            let up = i64::from(n.state() == "connected");
            gauge(
                &mut enc,
                "nats_connection_status",
                "NATS connection status (1=connected, 0=disconnected)",
                vec![(vec![], up)],
            )?;
            counter(
                &mut enc,
                "nats_reconnects",
                "Reconnections to NATS",
                vec![(vec![], n.reconnect_count())],
            )?;
        }
        if let Some(c) = &o.cache {
            let layers = c.stats();
            let rows = |f: fn(&LayerStats) -> u64| {
                layers
                    .iter()
                    .map(|l| (vec![("layer", l.layer.name().to_owned())], f(l)))
                    .collect::<Vec<_>>()
            };
            for (metric, help, field) in CACHE_COUNTERS {
                counter(&mut enc, metric, help, rows(field))?;
            }
            let as_gauge = |rows: Vec<(Labels, u64)>| {
                rows.into_iter()
                    .map(|(l, v)| (l, i64::try_from(v).unwrap_or(i64::MAX)))
                    .collect()
            };
            gauge(
                &mut enc,
                "weir_cache_entries",
                "Entries held",
                as_gauge(rows(|l| l.entries)),
            )?;
            let bytes = as_gauge(rows(|l| l.bytes));
            gauge(&mut enc, "weir_cache_bytes", "Bytes held", bytes)?;
        }
        if let Some(c) = o.telemetry.counts() {
            use std::sync::atomic::Ordering::Relaxed;
            counter(
                &mut enc,
                "weir_trace_spans_exported",
                "Spans the OpenTelemetry collector accepted",
                vec![(vec![], c.exported.load(Relaxed))],
            )?;
            counter(
                &mut enc,
                "weir_trace_spans_dropped",
                "Spans dropped: the export queue was full (collector slow or down), or the collector refused or could not be reached",
                vec![
                    (
                        vec![("reason", "queue_full".to_owned())],
                        c.dropped_queue_full.load(Relaxed),
                    ),
                    (
                        vec![("reason", "export_failed".to_owned())],
                        c.dropped_export_failed.load(Relaxed),
                    ),
                ],
            )?;
        }
        counter(
            &mut enc,
            "weir_market_decodes",
            "Market messages (trades, books, candles) decoded by the host, each once for all its subscribers",
            vec![(vec![], crate::bus::decoded::decodes())],
        )?;
        Ok(())
    }
}

/// The metrics in Prometheus text format.
pub fn render(observed: &Observed) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(HostCollector {
        observed: ObservedDebug(observed.clone()),
    }));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    with_exemplars(out, observed)
}

/// The processing-time histogram's exemplars (the latest traced event of
/// each bucket, pointing at its trace), written into its bucket lines:
/// prometheus-client makes exemplars only for its own metric types. The
/// collector writes one line per bucket, flows in order, so the n-th
/// bucket line is bucket `n % EXPORTED` of flow `n / EXPORTED`.
fn with_exemplars(text: String, observed: &Observed) -> String {
    use std::fmt::Write as _;
    let per_flow: Vec<Vec<Option<Exemplar>>> = observed
        .flows
        .iter()
        .map(|f| f.stats.latency.exemplars())
        .collect();
    if per_flow.iter().flatten().all(Option::is_none) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 1024);
    let mut n = 0usize;
    for line in text.split_inclusive('\n') {
        if line.starts_with("nats_message_processing_seconds_bucket{") {
            let (flow, bucket) = (n / EXPORTED, n % EXPORTED);
            n += 1;
            if let Some(Some(e)) = per_flow.get(flow).and_then(|f| f.get(bucket)) {
                let at =
                    e.at.duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs_f64();
                let _ = writeln!(
                    out,
                    "{} # {{trace_id=\"{}\",span_id=\"{}\"}} {} {at:.3}",
                    line.trim_end_matches('\n'),
                    e.trace_id,
                    e.span_id,
                    e.value
                );
                continue;
            }
        }
        out.push_str(line);
    }
    out
}
