//! The WebAssembly runtime: one [`wasmtime::Engine`] per host, components
//! compiled once and pre-instantiated, instances with limits and deadlines.

mod handler;
mod instance;
mod limiter;
mod packed;
mod typed;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::capability::{self, ComponentContext};

pub use handler::{BATCH_HANDLER, MARKET_HANDLER, PROVIDED, World};
pub use instance::{BatchItem, Failure, FailureKind, HandleOutcome, Instance, InstanceState};
pub use typed::undecodable;

use handler::HandlerIndices;

/// Largest component file weir will compile (compile-time DoS guard).
pub const MAX_COMPONENT_BYTES: u64 = 64 * 1024 * 1024;

/// Engine-wide settings, derived from the whole manifest.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Epoch tick: deadline granularity.
    pub epoch_tick: Duration,
    /// Largest linear memory any component may have, bytes.
    pub max_memory_bytes: usize,
    /// Instances alive at once across all components (pool size).
    pub max_instances: u32,
    /// Whether any component uses fuel (costs every component ~25%).
    pub fuel: bool,
}

/// What a component is wired to, besides its manifest entry.
pub struct Parts {
    /// The cache, when enabled.
    pub cache: Option<Arc<dyn crate::cache::CacheStore>>,
    /// Where it publishes.
    pub bus: Arc<dyn crate::bus::Bus>,
    /// Its time.
    pub clock: crate::clock::Clock,
    /// Its random seed (used on a virtual clock).
    pub seed: u64,
    /// The latest market data, when `[market]` names subjects.
    pub market: Option<crate::market::MarketStore>,
    /// Counters to go on counting in (a new version of a running
    /// component); none: fresh ones.
    pub stats: Option<Arc<crate::stats::ComponentStats>>,
    /// The host's tracing (off in a replay).
    pub telemetry: crate::telemetry::Telemetry,
}

impl RuntimeConfig {
    /// Sizes the engine for a manifest's components.
    pub fn for_manifest(manifest: &crate::manifest::Manifest) -> RuntimeConfig {
        let specs = &manifest.components;
        RuntimeConfig {
            epoch_tick: Duration::from_millis(manifest.host.epoch_tick_ms),
            max_memory_bytes: specs
                .values()
                .map(|s| s.limits.memory_mb)
                .max()
                .unwrap_or(64)
                * 1024
                * 1024,
            // Room for every instance plus a replacement for each.
            max_instances: (specs.values().map(|s| s.limits.instances).sum::<usize>() * 2 + 4)
                as u32,
            fuel: specs.values().any(|s| s.limits.fuel_per_event.is_some()),
        }
    }
}

/// Why a component could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// Could not read the file.
    #[error("component {name}: cannot read {path}: {source}")]
    Read {
        /// Component name.
        name: String,
        /// File path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Bigger than [`MAX_COMPONENT_BYTES`].
    #[error("component {name}: {path} is {size} bytes; the limit is {MAX_COMPONENT_BYTES}")]
    TooLarge {
        /// Component name.
        name: String,
        /// File path.
        path: String,
        /// Its size.
        size: u64,
    },
    /// sha256 differs from the manifest's pin.
    #[error(
        "component {name}: {path} has sha256 {actual}, the manifest pins {expected}; refusing to compile it"
    )]
    Digest {
        /// Component name.
        name: String,
        /// File path.
        path: String,
        /// Pinned digest.
        expected: String,
        /// Digest of the file.
        actual: String,
    },
    /// Its signature does not satisfy its trust policy.
    #[error("component {name}: {path}: refusing to compile it: {reason}")]
    Signature {
        /// Component name.
        name: String,
        /// Where it came from (file or registry reference).
        path: String,
        /// What the check found.
        reason: crate::signature::SignatureError,
    },
    /// It imports interfaces weir does not provide.
    #[error(
        "component {name}: {path} imports {missing}, which weir does not provide; weir provides {provided}",
        missing = .missing.join(", "),
        provided = handler::provided_list()
    )]
    MissingImports {
        /// Component name.
        name: String,
        /// File path.
        path: String,
        /// The imports weir lacks.
        missing: Vec<String>,
    },
    /// Not a valid component, or it exports no handler weir can call.
    #[error("component {name}: {path} is not a usable weir component: {reason}")]
    Invalid {
        /// Component name.
        name: String,
        /// File path.
        path: String,
        /// wasmtime's explanation.
        reason: String,
    },
}

/// `WEIR_PROFILER=perfmap` (or `jitdump`) lets `perf` name the functions
/// of compiled components: `/tmp/perf-<pid>.map` is written as they load
/// (for `perf report`); `jitdump` writes `jit-<pid>.dump` for `perf inject`.
fn profiler_from_env() -> anyhow::Result<wasmtime::ProfilingStrategy> {
    use wasmtime::ProfilingStrategy;
    match std::env::var("WEIR_PROFILER").as_deref() {
        Err(_) | Ok("") | Ok("none") => Ok(ProfilingStrategy::None),
        Ok("perfmap") => Ok(ProfilingStrategy::PerfMap),
        Ok("jitdump") => Ok(ProfilingStrategy::JitDump),
        Ok(other) => anyhow::bail!("WEIR_PROFILER={other:?}: use perfmap, jitdump or none"),
    }
}

/// The engine, the linker with every capability, and the epoch ticker.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    /// Shared by all components: WASI p2 plus weir's interfaces.
    linker: Arc<Linker<InstanceState>>,
    /// Deadline granularity.
    tick: Duration,
    /// Whether stores must be given fuel.
    fuel: bool,
    /// The pool's linear memory size: no instance may ask for more.
    max_memory_bytes: usize,
}

impl Runtime {
    /// Builds the engine and starts its epoch ticker thread (it stops when
    /// the last clone of the engine is dropped).
    pub fn new(cfg: &RuntimeConfig) -> anyhow::Result<Runtime> {
        let mut config = Config::new();
        // Concurrency support roughly doubles the cost of each call and
        // weir's interfaces do not use it.
        config.concurrency_support(false);
        config.epoch_interruption(true);
        config.consume_fuel(cfg.fuel);
        config.profiler(profiler_from_env()?);
        let slots = cfg.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            .total_core_instances(slots * 8)
            .total_memories(slots * 2)
            .total_tables(slots * 4)
            .total_stacks(slots)
            .max_memory_size(cfg.max_memory_bytes);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(anyhow::Error::from)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        capability::add_to_linker(&mut linker, |s: &mut InstanceState| &mut s.caps)
            .map_err(anyhow::Error::from)?;

        let weak = engine.weak();
        let tick = cfg.epoch_tick;
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(tick);
                }
            })?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            tick,
            fuel: cfg.fuel,
            max_memory_bytes: cfg.max_memory_bytes,
        })
    }

    /// Compiles every component of a manifest, in manifest order, each with
    /// its context: grants, limits and config from the manifest, the cache,
    /// bus and clock from `parts` (given the component's name).
    pub fn load_manifest(
        &self,
        manifest: &crate::manifest::Manifest,
        parts: impl Fn(&str) -> Parts,
    ) -> Result<Vec<Arc<ComponentTemplate>>, LoadError> {
        manifest
            .components
            .iter()
            .map(|(name, spec)| {
                self.load_component(manifest, name, spec, parts(name))
                    .map(Arc::new)
            })
            .collect()
    }

    /// Reads, checks, compiles and pre-instantiates one component of a
    /// manifest, with its context built from its entry and `parts`.
    pub fn load_component(
        &self,
        manifest: &crate::manifest::Manifest,
        name: &str,
        spec: &crate::manifest::ComponentSpec,
        parts: Parts,
    ) -> Result<ComponentTemplate, LoadError> {
        let Parts {
            cache,
            bus,
            clock,
            seed,
            market,
            stats,
            telemetry,
        } = parts;
        let mut ctx = ComponentContext::new(
            name.to_owned(),
            spec.grants.clone(),
            spec.limits.clone(),
            bus,
        )
        .with_cache(cache, &manifest.cache)
        .with_config(spec.config_strings())
        .with_market(market)
        .on_clock(clock, seed);
        if let Some(stats) = stats {
            ctx.stats = stats;
        }
        ctx.telemetry = telemetry;
        ctx.data_dir = spec
            .grants
            .data_dir
            .as_ref()
            .map(|d| manifest.base_dir.join(d));
        let checks = Checks {
            sha256: spec.sha256.as_ref().map(|s| s.get_ref().clone()),
            trust: manifest.trust_for(spec),
            origin: Some(manifest.wasm_origin(spec)),
        };
        self.load_checked(Arc::new(ctx), &manifest.wasm_path(spec), &checks)
    }

    /// Compiles one component with its context; `sha256` pins its bytes.
    pub fn load(
        &self,
        ctx: Arc<ComponentContext>,
        path: &Path,
        sha256: Option<&str>,
    ) -> Result<ComponentTemplate, LoadError> {
        let checks = Checks {
            sha256: sha256.map(str::to_owned),
            ..Checks::default()
        };
        self.load_checked(ctx, path, &checks)
    }

    /// Reads a component, checks it before compiling (size, digest pin,
    /// signature), compiles and links it.
    pub fn load_checked(
        &self,
        ctx: Arc<ComponentContext>,
        path: &Path,
        checks: &Checks,
    ) -> Result<ComponentTemplate, LoadError> {
        let name = ctx.name.clone();
        let shown = checks
            .origin
            .clone()
            .unwrap_or_else(|| path.display().to_string());
        let sha256 = checks.sha256.as_deref();
        let read_err = |source| LoadError::Read {
            name: name.clone(),
            path: shown.clone(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read_err)?.len();
        if size > MAX_COMPONENT_BYTES {
            return Err(LoadError::TooLarge {
                name,
                path: shown,
                size,
            });
        }
        let bytes = std::fs::read(path).map_err(read_err)?;
        let actual = crate::digest::sha256_hex(&bytes);
        if let Some(expected) = sha256
            && !actual.eq_ignore_ascii_case(expected)
        {
            return Err(LoadError::Digest {
                name,
                path: shown,
                expected: expected.to_owned(),
                actual,
            });
        }
        let signer = crate::signature::verify(&bytes, &checks.trust, std::time::SystemTime::now())
            .map_err(|reason| LoadError::Signature {
                name: name.clone(),
                path: shown.clone(),
                reason,
            })?;
        let invalid = |e: wasmtime::Error| LoadError::Invalid {
            name: name.clone(),
            path: shown.clone(),
            reason: format!("{e:#}"),
        };
        let component = Component::new(&self.engine, &bytes).map_err(invalid)?;
        let (pre, handler) = self.prepare(&component).map_err(|refusal| match refusal {
            Refusal::Missing(missing) => LoadError::MissingImports {
                name: name.clone(),
                path: shown.clone(),
                missing,
            },
            Refusal::Invalid(reason) => LoadError::Invalid {
                name: name.clone(),
                path: shown.clone(),
                reason,
            },
        })?;
        if handler::batch_export(&component, &self.engine) == handler::BatchExport::OtherShape {
            // Still runs, one message per call: say why it got slower.
            tracing::warn!(
                component = %name,
                "{} exports {BATCH_HANDLER} in another shape than this weir's (built with an older weir-guest SDK?): each message goes to handle alone; rebuild it to have batches again",
                shown
            );
        }
        Ok(ComponentTemplate {
            ctx,
            pre,
            handler,
            runtime: self.clone(),
            version: 1,
            sha256: actual,
            origin: shown,
            signer,
        })
    }

    /// Links a compiled component and finds its handler: what `load` and
    /// `inspect` both decide whether weir can run it by.
    fn prepare(
        &self,
        component: &Component,
    ) -> Result<(InstancePre<InstanceState>, HandlerIndices), Refusal> {
        let pre = self.linker.instantiate_pre(component).map_err(|e| {
            let missing = handler::missing_imports(component, &self.engine);
            if missing.is_empty() {
                Refusal::Invalid(format!("{e:#}"))
            } else {
                Refusal::Missing(missing)
            }
        })?;
        let handler = HandlerIndices::find(&pre, &self.engine).map_err(Refusal::Invalid)?;
        Ok((pre, handler))
    }

    /// Describes a component file without running it: its world, imports
    /// (each marked provided or not), exports, size, sha256, and why weir
    /// would refuse it, if it would.
    pub fn inspect(&self, bytes: &[u8]) -> anyhow::Result<Inspection> {
        let component = Component::new(&self.engine, bytes).map_err(anyhow::Error::from)?;
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(name, _)| Import {
                name: name.to_owned(),
                provided: handler::provided(name),
            })
            .collect();
        let exports = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let (world, refusal) = match self.prepare(&component) {
            Ok((_, h)) => (Some(h.world()), None),
            Err(Refusal::Missing(missing)) => (
                None,
                Some(format!(
                    "it imports {}, which weir does not provide",
                    missing.join(", ")
                )),
            ),
            Err(Refusal::Invalid(reason)) => (None, Some(reason)),
        };
        Ok(Inspection {
            size: bytes.len() as u64,
            sha256: crate::digest::sha256_hex(bytes),
            world,
            imports,
            exports,
            refusal,
            signed: crate::signature::is_signed(bytes),
            signer: None,
        })
    }

    /// Whether this engine can run a component with these limits: its
    /// memory within the pool's slots, fuel only when the engine meters it
    /// (both are fixed when the engine is built); why not, in words.
    pub fn admits(&self, limits: &crate::manifest::Limits) -> Result<(), String> {
        let asked = limits.memory_mb.saturating_mul(1024 * 1024);
        if asked > self.max_memory_bytes {
            return Err(format!(
                "limits.memory_mb = {} exceeds the {} MiB this engine was built with",
                limits.memory_mb,
                self.max_memory_bytes / (1024 * 1024)
            ));
        }
        if limits.fuel_per_event.is_some() && !self.fuel {
            return Err("limits.fuel_per_event needs an engine built with fuel metering".into());
        }
        Ok(())
    }

    /// Epoch ticks that make up `d`, rounded up, plus one for the tick in progress.
    fn ticks(&self, d: Duration) -> u64 {
        let tick = self.tick.as_nanos().max(1);
        (d.as_nanos().div_ceil(tick) as u64).saturating_add(1)
    }
}

/// Why a compiled component cannot run here.
enum Refusal {
    /// Imports weir does not provide.
    Missing(Vec<String>),
    /// Anything else (no handler, a type mismatch), in words.
    Invalid(String),
}

/// What `weir inspect` shows about a component file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    /// Bytes.
    pub size: u64,
    /// Hex digest, for `sha256 = "..."` in the manifest.
    pub sha256: String,
    /// The world weir recognised, when it can run the component.
    pub world: Option<World>,
    /// Each import, with whether weir provides it.
    pub imports: Vec<Import>,
    /// Its exports.
    pub exports: Vec<String>,
    /// Why weir would refuse it, when it would.
    pub refusal: Option<String>,
    /// Whether it carries an embedded signature.
    pub signed: bool,
    /// The trusted key its signature verified with, when keys were given.
    pub signer: Option<crate::signature::Signer>,
}

/// One import of an inspected component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Import {
    /// Its full name, e.g. `wasi:keyvalue/store@0.2.0-draft`.
    pub name: String,
    /// Whether weir links it.
    pub provided: bool,
}

/// A compiled component, ready to instantiate quickly.
#[derive(Clone)]
pub struct ComponentTemplate {
    /// What the component may use.
    pub ctx: Arc<ComponentContext>,
    /// Imports resolved.
    pre: InstancePre<InstanceState>,
    /// The handler it exports (type-checked when an instance is made).
    handler: HandlerIndices,
    /// For deadlines and fuel.
    runtime: Runtime,
    /// 1 when the host started, one more for each hot update.
    version: u64,
    /// Hex sha256 of the file it was compiled from.
    sha256: String,
    /// Where it came from: the file, or the registry reference with its
    /// digest.
    origin: String,
    /// The trusted key its signature verified with, when one did.
    signer: Option<crate::signature::Signer>,
}

/// What a component is checked against before it is compiled.
#[derive(Debug, Clone, Default)]
pub struct Checks {
    /// The hex sha256 its bytes must have.
    pub sha256: Option<String>,
    /// Whose signature it needs.
    pub trust: crate::manifest::TrustPolicy,
    /// Where it came from, for messages (default: the file's path).
    pub origin: Option<String>,
}

impl ComponentTemplate {
    /// The component's name.
    pub fn name(&self) -> &str {
        &self.ctx.name
    }

    /// The world it is written for, recognised from its exports.
    pub fn world(&self) -> World {
        self.handler.world()
    }

    /// Whether it takes runs of messages in one call (`handle-batch`).
    pub fn batches(&self) -> bool {
        self.handler.batches()
    }

    /// Whether it takes trades, books and candles decoded by the host
    /// (`market-handler`) rather than their bytes.
    pub fn takes_market_events(&self) -> bool {
        self.handler.takes_market_events()
    }

    /// Its version in this host: 1 at start, one more per hot update.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The same template numbered as version `version`.
    pub fn numbered(mut self, version: u64) -> ComponentTemplate {
        self.version = version;
        self
    }

    /// Hex sha256 of the component file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Where it came from: the file, or `oci://…@sha256:…`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The trusted key its signature verified with, when one did.
    pub fn signer(&self) -> Option<&crate::signature::Signer> {
        self.signer.as_ref()
    }
}
