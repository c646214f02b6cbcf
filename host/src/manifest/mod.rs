//! The manifest: one TOML file with host settings and components.
//!
//! Loading parses, applies the seed's environment variables, then checks
//! everything it can without starting anything. Every error names the
//! file, the line and the field.

mod cache;
mod env;
mod registry;
mod telemetry;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

pub use cache::{CacheSettings, Codec, Thresholds};
pub use env::EnvOverrides;
pub use registry::{
    Pulled, RegistrySettings, TrustPolicy, TrustSettings, TrustedKey, parse_reference,
};
pub use telemetry::{OTLP_HTTP_PROTOBUF, TelemetrySettings, protocol_problem};

/// A manifest error with its place in the file.
#[derive(Debug, Error)]
#[error("{file}:{line}: {field}: {message}")]
pub struct ManifestError {
    /// The manifest's path.
    pub file: PathBuf,
    /// 1-based line (0 when the error has no place, such as an env variable).
    pub line: usize,
    /// Dotted path of the field, or the environment variable's name.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The whole manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Host-wide settings.
    #[serde(default)]
    pub host: HostSettings,
    /// NATS connection; absent means the embedded in-process bus.
    #[serde(default)]
    pub nats: Option<NatsSettings>,
    /// Redis connection; absent means the cache is L1 only.
    #[serde(default)]
    pub redis: Option<RedisSettings>,
    /// Cache sizes and switches.
    #[serde(default)]
    pub cache: CacheSettings,
    /// The latest-value cache for market data (`weir:host/market`).
    #[serde(default)]
    pub market: MarketSettings,
    /// How `oci://` components are pulled and kept.
    #[serde(default)]
    pub registry: RegistrySettings,
    /// Whose signatures components need.
    #[serde(default)]
    pub trust: TrustSettings,
    /// Traces exported over OTLP (off by default).
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// Components by name.
    #[serde(default)]
    pub components: BTreeMap<String, ComponentSpec>,
    /// Directory relative paths are resolved against (the manifest's own).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file it was read from and the overrides applied to it, so a hot
    /// update reads it the same way; none for a manifest made from text.
    #[serde(skip)]
    pub source: Option<(PathBuf, EnvOverrides)>,
}

/// Host-wide settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostSettings {
    /// Identifies this host in cache coherence messages; defaults to
    /// `<hostname>-<pid>`.
    pub id: Option<String>,
    /// `human` or `json` log lines.
    pub log_format: LogFormat,
    /// Epoch tick: the granularity of per-event deadlines, in milliseconds.
    pub epoch_tick_ms: u64,
    /// Address for `/metrics`, `/healthz`, `/readyz`, `/api/status`
    /// (e.g. `127.0.0.1:9464`); absent means no HTTP server.
    pub http: Option<String>,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            id: None,
            log_format: LogFormat::Human,
            epoch_tick_ms: 5,
            http: None,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line.
    Json,
}

/// NATS settings (the options of the seed's `NATS_CONFIG`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// Server URL, or several separated by commas, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// User name, with `password`.
    #[serde(default)]
    pub user: Option<String>,
    /// Password, with `user`.
    #[serde(default)]
    pub password: Option<String>,
    /// Authentication token.
    #[serde(default)]
    pub token: Option<String>,
    /// NKey seed.
    #[serde(default)]
    pub nkey: Option<String>,
    /// Credentials file (JWT + NKey), relative to the manifest.
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// TLS settings.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// Give up connecting at start after this long, milliseconds.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Wait between reconnect attempts, milliseconds.
    #[serde(default = "defaults::reconnect_wait_ms")]
    pub reconnect_wait_ms: u64,
    /// Reconnect attempts before giving up; absent means forever.
    #[serde(default)]
    pub max_reconnects: Option<usize>,
    /// Ping interval, seconds: how fast a dead link is noticed.
    #[serde(default = "defaults::ping_interval_secs")]
    pub ping_interval_secs: u64,
    /// JetStream publish acknowledgements in flight at once.
    #[serde(default = "defaults::ack_window")]
    pub ack_window: usize,
    /// Prefix of this connection's reply inboxes (default `_INBOX`); set
    /// it where NATS permissions confine inboxes to a per-user prefix.
    /// Components may reply into it without a publish grant.
    #[serde(default)]
    pub inbox_prefix: Option<String>,
}

/// TLS towards NATS.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Refuse plain connections.
    #[serde(default)]
    pub required: bool,
    /// CA certificate file (PEM) to trust, relative to the manifest.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM), with `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl NatsSettings {
    /// Settings with this URL and every other option at its default.
    pub fn with_url(url: impl Into<String>) -> Self {
        NatsSettings {
            url: url.into(),
            user: None,
            password: None,
            token: None,
            nkey: None,
            creds_file: None,
            tls: None,
            connect_timeout_ms: defaults::connect_timeout_ms(),
            reconnect_wait_ms: defaults::reconnect_wait_ms(),
            max_reconnects: None,
            ping_interval_secs: defaults::ping_interval_secs(),
            ack_window: defaults::ack_window(),
            inbox_prefix: None,
        }
    }
}

mod defaults {
    pub fn connect_timeout_ms() -> u64 {
        5000
    }
    pub fn reconnect_wait_ms() -> u64 {
        2000
    }
    pub fn ping_interval_secs() -> u64 {
        20
    }
    pub fn ack_window() -> usize {
        1024
    }
}

/// Redis settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// Server URL, e.g. `redis://127.0.0.1:6379/0` (`REDIS_URL`); leave it
    /// out with `cluster`.
    #[serde(default)]
    pub url: String,
    /// A Redis Cluster instead of one server: URLs of some of its nodes
    /// (the rest are discovered), e.g. `["redis://10.0.0.1:7000",
    /// "redis://10.0.0.2:7000"]`.
    #[serde(default)]
    pub cluster: Vec<String>,
}

impl RedisSettings {
    /// One server at `url`.
    pub fn with_url(url: &str) -> RedisSettings {
        RedisSettings {
            url: url.to_owned(),
            cluster: Vec::new(),
        }
    }
}

/// One component.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ComponentSpec {
    /// Path of the `.wasm` component, relative to the manifest, or an OCI
    /// reference: `oci://REGISTRY/REPO:TAG` or `oci://REGISTRY/REPO@sha256:…`.
    pub wasm: Spanned<PathBuf>,
    /// Expected sha256 of the component's bytes, hex; refused before
    /// compiling if it differs (for a registry's, the wasm layer's digest).
    #[serde(default)]
    pub sha256: Option<Spanned<String>>,
    /// Its signature policy, over the host-wide `[trust]`.
    #[serde(default)]
    pub trust: Option<TrustSettings>,
    /// Where an `oci://` component was pulled to: set when the reference
    /// is resolved (by the registry module), never read from the file.
    #[serde(skip)]
    pub pulled: Option<Pulled>,
    /// What it receives.
    #[serde(default)]
    pub subscribe: Vec<Spanned<Subscription>>,
    /// What it may do.
    #[serde(default)]
    pub grants: Grants,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Values for the `config` interface; tables and arrays become JSON.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
}

/// One subscription: a core subject, or a JetStream stream through a
/// durable consumer (with the subject as its filter).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Subject filter (wildcards allowed).
    pub subject: String,
    /// Queue group for core subscriptions shared by several hosts.
    #[serde(default)]
    pub queue_group: Option<String>,
    /// JetStream stream to consume from.
    #[serde(default)]
    pub stream: Option<String>,
    /// Durable consumer name on that stream.
    #[serde(default)]
    pub consumer: Option<String>,
    /// Ack wait for a consumer weir creates, ms (default: twice the
    /// deadline, at least 30 s): how soon an unacknowledged message returns.
    #[serde(default)]
    pub ack_wait_ms: Option<u64>,
    /// Unacknowledged messages in flight for a consumer weir creates (default 1000).
    #[serde(default)]
    pub max_ack_pending: Option<i64>,
}

/// Where the latest-value cache for market data is fed from.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MarketSettings {
    /// Subject filters whose trades (`TRADE.trade.*`), order books
    /// (`TRADE.depth.*`) and candles (`market.data.ohlcv.*`) the host keeps
    /// the newest of, per symbol. Empty: no market data is kept.
    pub subjects: Vec<String>,
    /// A JetStream stream holding those subjects: read from the last
    /// message of each subject on, so a host that starts late holds the
    /// same values as its peers. Absent: a core subscription (needs NATS
    /// when set).
    pub stream: Option<String>,
}

/// What a component may reach. Nothing granted means nothing allowed.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Grants {
    /// Subjects it may publish on (wildcards allowed).
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
    /// Subjects it may send requests to.
    pub request: Vec<String>,
    /// JetStream streams it may publish to or consume from.
    pub streams: Vec<String>,
    /// Cache namespace; absent means no cache access.
    pub cache: Option<String>,
    /// Whether it may read the latest market data (`weir:host/market`).
    pub market: bool,
    /// A host directory (relative to the manifest) the component may read,
    /// mounted read-only at `/data`; absent means no file system at all.
    pub data_dir: Option<PathBuf>,
}

/// The largest `limits.max_payload_bytes` a manifest may set.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;

/// Per-component limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory per instance, MiB.
    pub memory_mb: usize,
    /// Wall time per `handle` call, milliseconds.
    pub time_per_event_ms: u64,
    /// Instances running in parallel; events of one subject stay in order.
    pub instances: usize,
    /// Deliveries of one message before it is dead-lettered.
    pub max_deliver: u32,
    /// Largest payload in or out, bytes.
    pub max_payload_bytes: usize,
    /// Host calls allowed during one event.
    pub host_calls_per_event: u32,
    /// Optional fuel per event (deterministic instruction budget).
    pub fuel_per_event: Option<u64>,
    /// Publishes per second across its instances (token bucket); absent: unlimited.
    pub publish_per_sec: Option<u32>,
    /// Table elements per instance.
    pub table_elements: usize,
    /// Most waiting messages handed to a component's `handle-batch` in one
    /// call; 1: every message alone (strict per-event deadlines, lowest
    /// latency of the first message). Ignored without a batch export.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: 64,
            time_per_event_ms: 100,
            instances: 1,
            max_deliver: 5,
            max_payload_bytes: 1024 * 1024,
            host_calls_per_event: 10_000,
            fuel_per_event: None,
            publish_per_sec: None,
            table_elements: 20_000,
            max_batch: 64,
        }
    }
}

impl Manifest {
    /// Reads, parses, applies environment overrides and validates a manifest.
    pub fn load(path: &Path, env: &EnvOverrides) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            file: path.to_owned(),
            line: 0,
            field: "(file)".into(),
            message: format!("cannot read the manifest: {e}"),
        })?;
        let mut manifest = Self::parse(&text, path)?;
        manifest.base_dir = path.parent().map(Path::to_owned).unwrap_or_default();
        env.apply(&mut manifest)
            .map_err(|(var, message)| ManifestError {
                file: path.to_owned(),
                line: 0,
                field: var,
                message,
            })?;
        validate::check(&manifest, &text, path)?;
        manifest.source = Some((path.to_owned(), env.clone()));
        Ok(manifest)
    }

    /// Reads the manifest again from the file it came from, with the same
    /// overrides (a hot update).
    pub fn reread(&self) -> Result<Manifest, ManifestError> {
        match &self.source {
            Some((path, env)) => Manifest::load(path, env),
            None => Err(ManifestError {
                file: PathBuf::new(),
                line: 0,
                field: "(file)".into(),
                message: "this manifest was not read from a file, so it cannot be read again"
                    .into(),
            }),
        }
    }

    /// A manifest from text (a test's fragment), checked like a file;
    /// relative paths resolve against `base_dir`; no environment overrides.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Manifest, ManifestError> {
        let path = base_dir.join("(manifest)");
        let mut manifest = Self::parse(text, &path)?;
        manifest.base_dir = base_dir.to_owned();
        validate::check(&manifest, text, &path)?;
        Ok(manifest)
    }

    /// Parses manifest text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| toml_error(&e, text, path, String::new()))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            toml_error(e.inner(), text, path, field)
        })
    }

    /// A component's wasm file: its path resolved against the manifest's
    /// directory, or for an `oci://` one the layer pulled into the store
    /// (before it is pulled, a path that does not exist).
    pub fn wasm_path(&self, spec: &ComponentSpec) -> PathBuf {
        match &spec.pulled {
            Some(pulled) => pulled.path.clone(),
            None => self.base_dir.join(spec.wasm.get_ref()),
        }
    }

    /// What a component runs from, as logs and `/api/status` show it: the
    /// file, or the registry reference resolved to its digest.
    pub fn wasm_origin(&self, spec: &ComponentSpec) -> String {
        match &spec.pulled {
            Some(pulled) => pulled.reference.clone(),
            None => self.wasm_path(spec).display().to_string(),
        }
    }

    /// The signature policy a component is held to.
    pub fn trust_for(&self, spec: &ComponentSpec) -> TrustPolicy {
        TrustPolicy::of(&self.trust, spec.trust.as_ref(), &self.base_dir)
    }
}

impl ComponentSpec {
    /// The registry reference, for a component named `oci://…`.
    pub fn oci_reference(&self) -> Option<&str> {
        self.wasm.get_ref().to_str()?.strip_prefix("oci://")
    }
}

fn toml_error(e: &toml::de::Error, text: &str, path: &Path, field: String) -> ManifestError {
    ManifestError {
        file: path.to_owned(),
        line: e.span().map(|s| line_of(text, s.start)).unwrap_or(0),
        field: if field.is_empty() || field == "." {
            "(syntax)".into()
        } else {
            field
        },
        message: e.message().trim().to_owned(),
    }
}

/// 1-based line number of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

impl ComponentSpec {
    /// Config values as strings: scalars as text, tables and arrays as JSON.
    pub fn config_strings(&self) -> BTreeMap<String, String> {
        self.config
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    toml::Value::Datetime(d) => d.to_string(),
                    other => serde_json::to_string(other).unwrap_or_default(),
                };
                (k.clone(), s)
            })
            .collect()
    }
}
