//! Checks a parsed manifest can run: names, subjects, grants, limits, files.

use std::path::Path;

use super::{ComponentSpec, Manifest, ManifestError, line_of};
use crate::subject;

/// Builds a [`ManifestError`] at a place in the manifest.
type Fail<'a> = &'a dyn Fn(usize, String, String) -> ManifestError;

/// Validates everything that needs no server.
pub(super) fn check(m: &Manifest, text: &str, file: &Path) -> Result<(), ManifestError> {
    let fail = |line: usize, field: String, message: String| ManifestError {
        file: file.to_owned(),
        line,
        field,
        message,
    };
    check_host(m, &fail)?;
    for (name, spec) in &m.components {
        check_component(m, text, name, spec, &fail)?;
    }
    check_trust(m, &m.trust, "trust", 0, &fail)
}

/// The host-wide tables: cache, host, redis, nats, market.
fn check_host(m: &Manifest, fail: Fail<'_>) -> Result<(), ManifestError> {
    if m.cache.default_ttl_secs == 0 {
        return Err(fail(
            0,
            "cache.default_ttl_secs".into(),
            "must be at least 1 second".into(),
        ));
    }
    if m.host.epoch_tick_ms == 0 || m.host.epoch_tick_ms > 1000 {
        return Err(fail(
            0,
            "host.epoch_tick_ms".into(),
            "must be between 1 and 1000".into(),
        ));
    }
    if let Some(redis) = &m.redis {
        match (redis.url.is_empty(), redis.cluster.is_empty()) {
            (true, true) => {
                return Err(fail(
                    0,
                    "redis".into(),
                    "needs `url` (one server) or `cluster` (a Redis Cluster's node URLs)".into(),
                ));
            }
            (false, false) => {
                return Err(fail(
                    0,
                    "redis.cluster".into(),
                    "`url` and `cluster` exclude each other: name one server or the cluster's nodes".into(),
                ));
            }
            _ => {}
        }
    }
    if let Some(prefix) = m.nats.as_ref().and_then(|n| n.inbox_prefix.as_ref()) {
        // Replies into this prefix need no grant: it must be a plain
        // subject prefix, never a `$` namespace.
        subject::validate_publish(prefix)
            .map_err(|e| fail(0, "nats.inbox_prefix".into(), e.to_string()))?;
    }
    if let Some((field, message)) = m.telemetry.problem() {
        return Err(fail(0, field.into(), message));
    }
    for (i, filter) in m.market.subjects.iter().enumerate() {
        subject::validate_filter(filter)
            .map_err(|e| fail(0, format!("market.subjects[{i}]"), e.to_string()))?;
    }
    Ok(())
}

/// A signature policy: every key file there and every date readable.
fn check_trust(
    m: &Manifest,
    trust: &super::TrustSettings,
    at: &str,
    line: usize,
    fail: Fail<'_>,
) -> Result<(), ManifestError> {
    for (i, key) in trust.keys.iter().enumerate() {
        let path = m.base_dir.join(key.path());
        if !path.is_file() {
            return Err(fail(
                line,
                format!("{at}.keys[{i}]"),
                format!("{} does not exist", path.display()),
            ));
        }
        key.expires()
            .map_err(|e| fail(line, format!("{at}.keys[{i}]"), e))?;
    }
    Ok(())
}

/// One component: its name, limits, grants, subscriptions and files.
fn check_component(
    m: &Manifest,
    text: &str,
    name: &str,
    spec: &ComponentSpec,
    fail: Fail<'_>,
) -> Result<(), ManifestError> {
    let table_line = component_line(text, name);
    let field = |f: &str| format!("components.{name}.{f}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(fail(
            table_line,
            format!("components.{name}"),
            "component names use letters, digits, `-` and `_`".into(),
        ));
    }
    check_limits(spec).map_err(|(f, msg)| fail(table_line, field(f), msg))?;
    for (i, pattern) in spec
        .grants
        .publish
        .iter()
        .chain(&spec.grants.subscribe)
        .chain(&spec.grants.request)
        .enumerate()
    {
        subject::validate_filter(pattern)
            .map_err(|e| fail(table_line, field(&format!("grants[{i}]")), e.to_string()))?;
    }
    if let Some(ns) = &spec.grants.cache
        && (ns.is_empty()
            || !ns
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
    {
        return Err(fail(
            table_line,
            field("grants.cache"),
            format!("namespace {ns:?} may use letters, digits, `-`, `_` and `.`"),
        ));
    }
    for (i, sub) in spec.subscribe.iter().enumerate() {
        let line = line_of(text, sub.span().start);
        check_subscription(
            spec,
            sub.get_ref(),
            line,
            field(&format!("subscribe[{i}]")),
            fail,
        )?;
    }
    if let Some(dir) = &spec.grants.data_dir
        && !m.base_dir.join(dir).is_dir()
    {
        return Err(fail(
            table_line,
            field("grants.data_dir"),
            format!("{} is not a directory", m.base_dir.join(dir).display()),
        ));
    }
    if let Some(reference) = spec.oci_reference() {
        if let Err(e) = super::parse_reference(reference) {
            return Err(fail(
                line_of(text, spec.wasm.span().start),
                field("wasm"),
                e,
            ));
        }
    } else if let wasm = m.wasm_path(spec)
        && !wasm.is_file()
    {
        return Err(fail(
            line_of(text, spec.wasm.span().start),
            field("wasm"),
            format!(
                "{} does not exist (build the components first: `just build`)",
                wasm.display()
            ),
        ));
    }
    if let Some(sha) = &spec.sha256
        && (sha.get_ref().len() != 64 || !sha.get_ref().chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(fail(
            line_of(text, sha.span().start),
            field("sha256"),
            "must be 64 hex digits".into(),
        ));
    }
    // Key files last: everything else is checked before a missing key.
    if let Some(own) = &spec.trust {
        check_trust(m, own, &field("trust"), table_line, fail)?;
    }
    let policy = m.trust_for(spec);
    if policy.require_signature && policy.keys.is_empty() {
        return Err(fail(
            table_line,
            field("trust"),
            "require_signature = true, but no keys are trusted: add `keys` here or in [trust]"
                .into(),
        ));
    }
    Ok(())
}

/// One subscription: its filter, its grant, and a stream's consumer.
fn check_subscription(
    spec: &ComponentSpec,
    s: &super::Subscription,
    line: usize,
    f: String,
    fail: Fail<'_>,
) -> Result<(), ManifestError> {
    subject::validate_filter(&s.subject).map_err(|e| fail(line, f.clone(), e.to_string()))?;
    if !spec
        .grants
        .subscribe
        .iter()
        .any(|g| subject::covers(g, &s.subject))
    {
        return Err(fail(
            line,
            f,
            format!(
                "subscription {:?} is not covered by grants.subscribe {:?}; add a grant that covers it",
                s.subject, spec.grants.subscribe
            ),
        ));
    }
    match (&s.stream, &s.consumer) {
        (Some(stream), Some(_)) => {
            if s.queue_group.is_some() {
                return Err(fail(line, f, "a stream subscription shares work through its durable consumer; drop queue_group".into()));
            }
            if !spec.grants.streams.contains(stream) {
                return Err(fail(
                    line,
                    f,
                    format!(
                        "stream {stream:?} is not in grants.streams {:?}",
                        spec.grants.streams
                    ),
                ));
            }
        }
        (Some(_), None) => {
            return Err(fail(
                line,
                f,
                "a stream subscription needs a durable `consumer` name".into(),
            ));
        }
        (None, Some(_)) => return Err(fail(line, f, "`consumer` needs a `stream`".into())),
        (None, None) => {}
    }
    Ok(())
}

fn check_limits(spec: &ComponentSpec) -> Result<(), (&'static str, String)> {
    let l = &spec.limits;
    let range = |f: &'static str, v: u64, lo: u64, hi: u64| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err((f, format!("{v} is outside {lo}..={hi}")))
        }
    };
    range("limits.memory_mb", l.memory_mb as u64, 1, 4096)?;
    range("limits.time_per_event_ms", l.time_per_event_ms, 1, 600_000)?;
    range("limits.instances", l.instances as u64, 1, 64)?;
    range("limits.max_deliver", u64::from(l.max_deliver), 1, 1000)?;
    range("limits.max_batch", l.max_batch as u64, 1, 64)?;
    range(
        "limits.max_payload_bytes",
        l.max_payload_bytes as u64,
        1,
        super::MAX_PAYLOAD_BYTES as u64,
    )?;
    range(
        "limits.host_calls_per_event",
        u64::from(l.host_calls_per_event),
        1,
        10_000_000,
    )?;
    range(
        "limits.table_elements",
        l.table_elements as u64,
        1,
        10_000_000,
    )?;
    Ok(())
}

/// Line of the `[components.NAME]` table header, or 0.
fn component_line(text: &str, name: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim();
            l.starts_with("[components.")
                && l.trim_matches(['[', ']'])
                    .trim_start_matches("components.")
                    .trim_matches('"')
                    .starts_with(name)
        })
        .map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::super::{EnvOverrides, Manifest};
    use std::path::Path;

    fn write(dir: &Path, text: &str) -> std::path::PathBuf {
        std::fs::write(dir.join("c.wasm"), b"\0asm").unwrap();
        let p = dir.join("m.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn load_err(text: &str) -> String {
        let dir = tempdir();
        Manifest::load(&write(&dir, text), &EnvOverrides::none())
            .unwrap_err()
            .to_string()
    }

    fn tempdir() -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("weir-manifest-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const GOOD: &str = r#"
[components.sma]
wasm = "c.wasm"
subscribe = [{ subject = "TRADE.trade.*" }]
grants = { subscribe = ["TRADE.>"], publish = ["signals.*"], cache = "sma" }
config = { fast_window = 5, alerts = [{ id = "a" }] }
"#;

    #[test]
    fn loads_a_good_manifest_and_env_overrides() {
        let dir = tempdir();
        let env = EnvOverrides::from_pairs([
            ("NATS_URL".into(), "nats://127.0.0.1:4222".into()),
            ("CACHE_TTL".into(), "60".into()),
            ("CACHE_ENABLED".into(), "false".into()),
        ]);
        let m = Manifest::load(&write(&dir, GOOD), &env).unwrap();
        assert_eq!(m.nats.unwrap().url, "nats://127.0.0.1:4222");
        assert_eq!(m.cache.default_ttl_secs, 60);
        assert!(!m.cache.enabled);
        let cfg = m.components["sma"].config_strings();
        assert_eq!(cfg["fast_window"], "5");
        assert_eq!(cfg["alerts"], r#"[{"id":"a"}]"#);
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let dir = tempdir();
        let env = EnvOverrides::from_pairs([("CACHE_TTL".into(), "soon".into())]);
        let e = Manifest::load(&write(&dir, GOOD), &env).unwrap_err();
        assert_eq!(e.field, "CACHE_TTL");
    }

    #[test]
    fn type_errors_name_line_and_field() {
        let e = load_err(
            "[components.sma]\nwasm = \"c.wasm\"\n\n[components.sma.limits]\ninstances = \"two\"\n",
        );
        assert!(e.contains(":5: components.sma.limits.instances:"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = load_err("[components.sma]\nwasm = \"c.wasm\"\nsubscribes = []\n");
        assert!(e.contains(":3:") && e.contains("subscribes"), "{e}");
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = load_err("[host]\nid = \n");
        assert!(e.contains(":2: (syntax):"), "{e}");
    }

    #[test]
    fn subscription_outside_grants_names_both() {
        let e = load_err(
            "[components.sma]\nwasm = \"c.wasm\"\nsubscribe = [{ subject = \"TRADE.>\" }]\ngrants = { subscribe = [\"TRADE.trade.*\"] }\n",
        );
        assert!(
            e.contains(":3: components.sma.subscribe[0]:")
                && e.contains("TRADE.trade.*")
                && e.contains("\"TRADE.>\""),
            "{e}"
        );
    }

    #[test]
    fn missing_wasm_and_bad_limits() {
        let e = load_err("[components.sma]\nwasm = \"nope.wasm\"\n");
        assert!(
            e.contains(":2: components.sma.wasm:") && e.contains("does not exist"),
            "{e}"
        );
        let e = load_err("[components.sma]\nwasm = \"c.wasm\"\nlimits = { instances = 0 }\n");
        assert!(e.contains(":1: components.sma.limits.instances:"), "{e}");
    }

    #[test]
    fn bad_registry_references_and_trust_policies_name_their_field() {
        let e = load_err("[components.sma]\nwasm = \"oci://strategies/sma\"\n");
        assert!(
            e.contains(":2: components.sma.wasm:") && e.contains("not an OCI reference"),
            "{e}"
        );
        let e = load_err(
            "[trust]\nrequire_signature = true\n[components.sma]\nwasm = \"oci://r.example/s/sma:v1\"\n",
        );
        assert!(
            e.contains("components.sma.trust:") && e.contains("no keys are trusted"),
            "{e}"
        );
        let e = load_err(
            "[trust]\nkeys = [{ path = \"c.wasm\", expires = \"soon\" }]\n[components.sma]\nwasm = \"c.wasm\"\n",
        );
        assert!(
            e.contains("trust.keys[0]:") && e.contains("expires = \"soon\""),
            "{e}"
        );
        let e =
            load_err("[components.sma]\nwasm = \"c.wasm\"\ntrust = { keys = [\"team.pub\"] }\n");
        assert!(
            e.contains("components.sma.trust.keys[0]:") && e.contains("team.pub does not exist"),
            "{e}"
        );
    }

    #[test]
    fn stream_subscriptions_need_consumer_and_grant() {
        let e = load_err(
            "[components.s]\nwasm = \"c.wasm\"\nsubscribe = [{ subject = \"TRADE.>\", stream = \"TRADE\" }]\ngrants = { subscribe = [\">\"] }\n",
        );
        assert!(e.contains("durable `consumer`"), "{e}");
        let e = load_err(
            "[components.s]\nwasm = \"c.wasm\"\nsubscribe = [{ subject = \"TRADE.>\", stream = \"TRADE\", consumer = \"c\" }]\ngrants = { subscribe = [\">\"] }\n",
        );
        assert!(e.contains("grants.streams"), "{e}");
    }
}
