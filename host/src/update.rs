//! Hot update: new versions of a running host's components take over
//! without a stop.
//!
//! An update reads the manifest again (SIGHUP, `POST /api/reload`,
//! `weir run --watch`, or [`Updater::apply`] with a manifest in hand),
//! compiles every component whose file or entry changed and checks it the
//! way a start does (digest pin, imports, handler, a trial instance). Only
//! when every one passes do they take over, all at once; otherwise nothing
//! changes and the error says why.
//!
//! The switch happens inside each instance worker, between two messages
//! (see `dispatch::Workers::spawn`): the message in flight finishes on the
//! old instance, the queued ones and everything after go to the new
//! version. Subscriptions, consumers and queues stay as they are, so no
//! message is lost, none is acknowledged unhandled, and per-subject order
//! holds across the switch.
//!
//! What an update can change: the `.wasm` (a file, or what an `oci://` tag
//! resolves to now), its `sha256`, its trust policy, grants, config and
//! limits. What needs a restart, and is refused with a clear error:
//! components added or removed, changed subscriptions, `limits.instances`
//! (it decides which worker owns a subject), more memory than the engine's
//! pool was built with, fuel on an engine built without it, and the
//! host-wide sections (`[host]`, `[nats]`, `[redis]`, `[cache]`, `[market]`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use thiserror::Error;
use tokio::sync::{Mutex, watch};

use crate::bus::Bus;
use crate::cache::CacheStore;
use crate::clock::Clock;
use crate::manifest::{Manifest, ManifestError};
use crate::market::MarketStore;
use crate::runtime::{ComponentTemplate, LoadError, Parts, Runtime};
use crate::stats::ComponentStats;

/// Why an update did not happen. In every case the running versions keep
/// running, untouched.
#[derive(Debug, Error)]
pub enum UpdateError {
    /// The manifest cannot be read or is invalid.
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    /// Something changed that only a restart can apply.
    #[error("{}; restart weir to apply that (nothing was updated)", .0.join("; "))]
    NeedsRestart(Vec<String>),
    /// A new version cannot be compiled or fails a check.
    #[error("{0} (nothing was updated)")]
    Load(#[from] LoadError),
    /// A component's registry reference cannot be resolved.
    #[error("{0} (nothing was updated)")]
    Registry(#[from] crate::registry::RegistryError),
    /// A new version compiles but its trial instance fails.
    #[error("component {name}: the new version cannot start: {reason} (nothing was updated)")]
    Start {
        /// The component.
        name: String,
        /// What failed.
        reason: String,
    },
}

/// What an update did, per component.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateReport {
    /// Every component, in manifest order.
    pub components: Vec<ComponentUpdate>,
}

/// One component in an [`UpdateReport`].
#[derive(Debug, Clone, Serialize)]
pub struct ComponentUpdate {
    /// Its name.
    pub name: String,
    /// The version running before the update.
    pub previous: u64,
    /// The version running now (the same when nothing changed).
    pub version: u64,
    /// Hex sha256 of the file the running version came from.
    pub sha256: String,
    /// Where the running version came from: file, or `oci://…@sha256:…`.
    pub origin: String,
}

impl UpdateReport {
    /// The components that changed version.
    pub fn updated(&self) -> impl Iterator<Item = &ComponentUpdate> {
        self.components.iter().filter(|c| c.version != c.previous)
    }
}

/// What every component of a host is wired to (a version's [`Parts`],
/// but for its counters).
#[derive(Clone)]
pub struct Wiring {
    /// The cache, when enabled.
    pub cache: Option<Arc<dyn CacheStore>>,
    /// The bus.
    pub bus: Arc<dyn Bus>,
    /// The latest market data, when kept.
    pub market: Option<MarketStore>,
    /// The host's tracing.
    pub telemetry: crate::telemetry::Telemetry,
}

impl Wiring {
    /// Parts for a component on the system clock, counting in `stats`
    /// (fresh counters when none).
    pub fn parts(&self, stats: Option<Arc<ComponentStats>>) -> Parts {
        Parts {
            cache: self.cache.clone(),
            bus: self.bus.clone(),
            clock: Clock::System,
            seed: 0,
            market: self.market.clone(),
            stats,
            telemetry: self.telemetry.clone(),
        }
    }
}

/// Switches a host's components to new versions. A cheap handle.
#[derive(Clone)]
pub struct Updater {
    inner: Arc<Inner>,
}

struct Inner {
    /// Compiles new versions on the engine the running ones use.
    runtime: Runtime,
    /// What new versions are wired to.
    wiring: Wiring,
    /// The manifest in force; the lock makes updates one at a time.
    manifest: Mutex<Manifest>,
    /// Each component's current version, in manifest order: its workers
    /// watch it.
    live: Vec<(String, watch::Sender<Arc<ComponentTemplate>>)>,
}

impl Updater {
    /// An updater for a host started from `manifest` with `templates`
    /// (version 1 of each, in manifest order).
    pub fn new(
        runtime: Runtime,
        wiring: Wiring,
        manifest: Manifest,
        templates: &[Arc<ComponentTemplate>],
    ) -> Updater {
        let live = templates
            .iter()
            .map(|t| {
                t.ctx
                    .stats
                    .version
                    .store(t.version(), std::sync::atomic::Ordering::Relaxed);
                (t.name().to_owned(), watch::channel(t.clone()).0)
            })
            .collect();
        Updater {
            inner: Arc::new(Inner {
                runtime,
                wiring,
                manifest: Mutex::new(manifest),
                live,
            }),
        }
    }

    /// A receiver of a component's current version (for its workers), by
    /// manifest position.
    pub fn watch(&self, index: usize) -> Option<watch::Receiver<Arc<ComponentTemplate>>> {
        self.inner.live.get(index).map(|(_, tx)| tx.subscribe())
    }

    /// The versions running now, in manifest order.
    pub fn templates(&self) -> Vec<Arc<ComponentTemplate>> {
        self.inner
            .live
            .iter()
            .map(|(_, tx)| tx.borrow().clone())
            .collect()
    }

    /// Reads the manifest again from its file and applies it.
    pub async fn reload(&self) -> Result<UpdateReport, UpdateError> {
        let next = self.inner.manifest.lock().await.reread()?;
        self.apply(next).await
    }

    /// [`Updater::reload`], with its outcome logged (`trigger` says what
    /// asked for it).
    pub async fn reload_logged(&self, trigger: &str) -> Result<UpdateReport, UpdateError> {
        let outcome = self.reload().await;
        match &outcome {
            Ok(report) if report.updated().next().is_none() => {
                tracing::info!(trigger, "update: nothing changed");
            }
            Ok(_) => {}
            Err(e) => tracing::error!(trigger, "update refused: {e}"),
        }
        outcome
    }

    /// Applies `next`: compiles and checks what changed, then switches
    /// every changed component to its new version, or changes nothing.
    pub async fn apply(&self, next: Manifest) -> Result<UpdateReport, UpdateError> {
        // Tags are resolved again: a new digest is a new version.
        let next = crate::registry::resolve(&next).await?;
        let inner = &*self.inner;
        let mut current = inner.manifest.lock().await;
        let mut refused = needs_restart(&current, &next);
        for (name, spec) in &next.components {
            if let Err(why) = inner.runtime.admits(&spec.limits) {
                refused.push(format!("component {name}: {why}"));
            }
        }
        if !refused.is_empty() {
            return Err(UpdateError::NeedsRestart(refused));
        }
        let next = Arc::new(next);
        let mut staged = Vec::new();
        let mut report = UpdateReport {
            components: Vec::new(),
        };
        for (name, tx) in &inner.live {
            let running = tx.borrow().clone();
            let Some(spec) = next.components.get(name) else {
                continue; // not reached: needs_restart refuses removals
            };
            let same_entry = current
                .components
                .get(name)
                .is_some_and(|was| was == spec && current.trust_for(was) == next.trust_for(spec));
            let same_file =
                file_sha256(next.wasm_path(spec)).await.as_deref() == Some(running.sha256());
            let mut entry = ComponentUpdate {
                name: name.clone(),
                previous: running.version(),
                version: running.version(),
                sha256: running.sha256().to_owned(),
                origin: running.origin().to_owned(),
            };
            if !(same_entry && same_file) {
                let fresh = self.compile(&next, name, &running).await?;
                entry.version = fresh.version();
                entry.sha256 = fresh.sha256().to_owned();
                entry.origin = fresh.origin().to_owned();
                staged.push((tx, fresh));
            }
            report.components.push(entry);
        }
        // Every new version passed: they take over together.
        for (tx, fresh) in staged {
            let old = tx.send_replace(fresh.clone());
            fresh
                .ctx
                .stats
                .version
                .store(fresh.version(), std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                component = fresh.name(),
                from = old.version(),
                to = fresh.version(),
                sha256 = fresh.sha256(),
                from = fresh.origin(),
                "component updated: new messages go to the new version"
            );
        }
        *current = Arc::unwrap_or_clone(next);
        Ok(report)
    }

    /// Compiles and checks the next version of `running`, off the async
    /// threads (a compile takes a while), then makes a trial instance.
    async fn compile(
        &self,
        next: &Arc<Manifest>,
        name: &str,
        running: &ComponentTemplate,
    ) -> Result<Arc<ComponentTemplate>, UpdateError> {
        let runtime = self.inner.runtime.clone();
        let parts = self.inner.wiring.parts(Some(running.ctx.stats.clone()));
        let (manifest, owned) = (next.clone(), name.to_owned());
        let compiled = tokio::task::spawn_blocking(move || {
            let spec = &manifest.components[&owned];
            runtime.load_component(&manifest, &owned, spec, parts)
        })
        .await
        .map_err(|e| UpdateError::Start {
            name: name.to_owned(),
            reason: format!("the compile task failed: {e}"),
        })??;
        let fresh = compiled.numbered(running.version() + 1);
        // A start function that traps, or memory the limits refuse, shows
        // here rather than on the first message.
        if let Err(failure) = fresh.instantiate().await {
            return Err(UpdateError::Start {
                name: name.to_owned(),
                reason: failure.to_string(),
            });
        }
        Ok(Arc::new(fresh))
    }

    /// Reloads whenever the manifest or a component file changes, checked
    /// every `every`; a change is applied once the files hold still for one
    /// more check (a file being written is not compiled half-way).
    pub async fn watch_files(self, every: Duration) {
        let mut seen = self.fingerprint().await;
        let mut pending = None;
        loop {
            tokio::time::sleep(every).await;
            let now = self.fingerprint().await;
            if now == seen {
                pending = None;
                continue;
            }
            if pending.as_ref() != Some(&now) {
                pending = Some(now);
                continue;
            }
            pending = None;
            let _ = self.reload_logged("a watched file changed").await;
            // The files the manifest now names, as they are now: a refused
            // change is not retried until they change again.
            seen = self.fingerprint().await;
        }
    }

    /// Size and modification time of the manifest and each component file.
    async fn fingerprint(&self) -> Vec<(PathBuf, Option<(u64, SystemTime)>)> {
        let manifest = self.inner.manifest.lock().await;
        let mut paths: Vec<PathBuf> = manifest.source.iter().map(|(p, _)| p.clone()).collect();
        paths.extend(manifest.components.values().map(|s| manifest.wasm_path(s)));
        drop(manifest);
        paths
            .into_iter()
            .map(|p| {
                let stamp = std::fs::metadata(&p)
                    .ok()
                    .and_then(|m| Some((m.len(), m.modified().ok()?)));
                (p, stamp)
            })
            .collect()
    }
}

/// The hex sha256 of a file, when it can be read.
async fn file_sha256(path: PathBuf) -> Option<String> {
    let bytes = tokio::fs::read(path).await.ok()?;
    Some(crate::digest::sha256_hex(&bytes))
}

/// What differs between two manifests that only a restart can apply.
fn needs_restart(old: &Manifest, new: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    let sections = [
        ("host", old.host == new.host),
        ("nats", old.nats == new.nats),
        ("redis", old.redis == new.redis),
        ("cache", old.cache == new.cache),
        ("market", old.market == new.market),
    ];
    for (section, same) in sections {
        if !same {
            out.push(format!("[{section}] changed"));
        }
    }
    for name in new.components.keys() {
        if !old.components.contains_key(name) {
            out.push(format!("component {name} was added"));
        }
    }
    for (name, was) in &old.components {
        let Some(now) = new.components.get(name) else {
            out.push(format!("component {name} was removed"));
            continue;
        };
        if was.subscribe != now.subscribe {
            out.push(format!("component {name}: its subscriptions changed"));
        }
        if was.limits.instances != now.limits.instances {
            out.push(format!(
                "component {name}: limits.instances changed ({} → {})",
                was.limits.instances, now.limits.instances
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::needs_restart;
    use crate::manifest::Manifest;
    use std::path::Path;

    fn manifest(text: &str) -> Manifest {
        Manifest::parse(text, Path::new("weir.toml")).expect("valid manifest")
    }

    const BASE: &str = r#"
        [components.a]
        wasm = "a.wasm"
        subscribe = [{ subject = "x.>" }]
        grants = { subscribe = ["x.>", "w.>"], publish = ["y.>"] }
        config = { k = "1" }
    "#;

    #[test]
    fn grants_config_and_files_need_no_restart() {
        let next = BASE
            .replace(r#"config = { k = "1" }"#, r#"config = { k = "2" }"#)
            .replace(r#""y.>""#, r#""z.>""#)
            .replace("a.wasm", "a2.wasm");
        assert!(needs_restart(&manifest(BASE), &manifest(&next)).is_empty());
    }

    #[test]
    fn structure_and_host_sections_need_a_restart() {
        let next = BASE.replace(r#"subject = "x.>""#, r#"subject = "w.>""#)
            + "limits = { instances = 3 }\n[components.b]\nwasm = \"b.wasm\"\n[cache]\nmax_mb = 7\n";
        let why = needs_restart(&manifest(BASE), &manifest(&next));
        assert_eq!(
            why,
            [
                "[cache] changed",
                "component b was added",
                "component a: its subscriptions changed",
                "component a: limits.instances changed (1 → 3)",
            ]
        );
        let without = "[host]\nid = \"h\"\n";
        let why = needs_restart(&manifest(BASE), &manifest(without));
        assert_eq!(why, ["[host] changed", "component a was removed"]);
    }
}
