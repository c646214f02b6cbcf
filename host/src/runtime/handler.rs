//! Which handler a component exports, and so which world it is written
//! for: weir's own (`weir:host/handler`, the `strategy` and `alert`
//! worlds) or wasmCloud's messaging world (`wasmcloud:messaging/handler`).
//! Imports are whatever part of `weir:host/host` it needs; one it imports
//! that weir does not provide is named when the component is refused.

use wasmtime::Engine;
use wasmtime::component::{Component, Instance, InstancePre};

use crate::capability::bindings::exports::wasmcloud::messaging::handler as wasmcloud;
use crate::capability::bindings::exports::weir::host::batch_handler as batch;
use crate::capability::bindings::exports::weir::host::handler as weir;
use crate::capability::bindings::exports::weir::host::market_handler as market;

/// The world a component is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    /// weir's `strategy` or `alert`: exports `weir:host/handler@0.1.0`.
    Weir,
    /// wasmCloud's messaging world: exports `wasmcloud:messaging/handler@0.2.0`.
    WasmCloud,
}

impl World {
    /// `weir` or `wasmcloud`, in logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            World::Weir => "weir",
            World::WasmCloud => "wasmcloud",
        }
    }

    /// The handler interface that identifies the world.
    pub fn handler(self) -> &'static str {
        match self {
            World::Weir => "weir:host/handler@0.1.0",
            World::WasmCloud => "wasmcloud:messaging/handler@0.2.0",
        }
    }
}

/// The optional batch form of weir's handler.
pub const BATCH_HANDLER: &str = "weir:host/batch-handler@0.1.0";

/// The optional typed form: market events the host decoded.
pub const MARKET_HANDLER: &str = "weir:host/market-handler@0.1.0";

/// Where the handler is among a component's exports, found once.
#[derive(Clone)]
pub(crate) enum HandlerIndices {
    /// weir's handler, its batch form and its typed form, when the
    /// component exports them.
    Weir(
        weir::GuestIndices,
        Option<batch::GuestIndices>,
        Option<market::GuestIndices>,
    ),
    WasmCloud(wasmcloud::GuestIndices),
}

/// The handler of one instance.
pub(crate) enum Handler {
    /// `handle`, and `handle-batch` and the typed handler when exported.
    Weir(weir::Guest, Option<batch::Guest>, Option<market::Guest>),
    WasmCloud(wasmcloud::Guest),
}

impl HandlerIndices {
    /// Finds the handler: weir's if the component exports it, else
    /// wasmCloud's; the error lists what it exports instead.
    pub(crate) fn find<T>(pre: &InstancePre<T>, engine: &Engine) -> Result<Self, String> {
        if let Ok(i) = weir::GuestIndices::new(pre) {
            // Found by name alone; its type is only checked when an
            // instance loads it, so an export of another shape (an older
            // SDK's) must not get this far, or every instance would fail.
            let batch = batch::GuestIndices::new(pre)
                .ok()
                .filter(|_| batch_export(pre.component(), engine) == BatchExport::Packed);
            let market = market::GuestIndices::new(pre).ok();
            return Ok(HandlerIndices::Weir(i, batch, market));
        }
        if let Ok(i) = wasmcloud::GuestIndices::new(pre) {
            return Ok(HandlerIndices::WasmCloud(i));
        }
        let exports: Vec<String> = pre
            .component()
            .component_type()
            .exports(engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        Err(format!(
            "it exports neither {} (a weir strategy or alert) nor {} (a wasmCloud messaging component); its exports: {}",
            World::Weir.handler(),
            World::WasmCloud.handler(),
            if exports.is_empty() {
                "none".to_owned()
            } else {
                exports.join(", ")
            }
        ))
    }

    /// The world this handler belongs to.
    pub(crate) fn world(&self) -> World {
        match self {
            HandlerIndices::Weir(..) => World::Weir,
            HandlerIndices::WasmCloud(_) => World::WasmCloud,
        }
    }

    /// Whether the component exports `handle-batch` too.
    pub(crate) fn batches(&self) -> bool {
        matches!(self, HandlerIndices::Weir(_, Some(_), _))
    }

    /// Whether the component takes decoded market events.
    pub(crate) fn takes_market_events(&self) -> bool {
        matches!(self, HandlerIndices::Weir(_, _, Some(_)))
    }

    /// The handler of a new instance (type-checked against the WIT).
    pub(crate) fn load(
        &self,
        store: impl wasmtime::AsContextMut,
        instance: &Instance,
    ) -> wasmtime::Result<Handler> {
        Ok(match self {
            HandlerIndices::Weir(i, b, m) => {
                let mut store = store;
                let batch = match b {
                    Some(b) => Some(b.load(&mut store, instance)?),
                    None => None,
                };
                let market = match m {
                    Some(m) => Some(m.load(&mut store, instance)?),
                    None => None,
                };
                Handler::Weir(i.load(&mut store, instance)?, batch, market)
            }
            HandlerIndices::WasmCloud(i) => Handler::WasmCloud(i.load(store, instance)?),
        })
    }
}

/// What a component exports as [`BATCH_HANDLER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchExport {
    /// Nothing of that name.
    Absent,
    /// `handle-batch` taking this weir's packed batch: one record of
    /// `text`, `bytes`, `headers` and `frames`.
    Packed,
    /// Another shape (an older SDK's took a list of messages): weir does
    /// not call it.
    OtherShape,
}

/// Reads the shape of the component's batch export from its type.
pub(crate) fn batch_export(component: &Component, engine: &Engine) -> BatchExport {
    use wasmtime::component::types::{ComponentItem, Type};
    let ty = component.component_type();
    let Some(export) = ty.get_export(engine, BATCH_HANDLER) else {
        return BatchExport::Absent;
    };
    let ComponentItem::ComponentInstance(iface) = export.ty else {
        return BatchExport::OtherShape;
    };
    let Some(ComponentItem::ComponentFunc(func)) =
        iface.get_export(engine, "handle-batch").map(|e| e.ty)
    else {
        return BatchExport::OtherShape;
    };
    let mut params = func.params();
    // The fields by name, and the last, `frames`, a flat list of u32 (the
    // shape before had a list of frame records under the same names).
    let packed = match (params.next(), params.next()) {
        (Some((_, Type::Record(r))), None) => {
            r.fields()
                .map(|f| f.name)
                .eq(["text", "bytes", "headers", "frames"])
                && r.fields()
                    .last()
                    .is_some_and(|f| matches!(&f.ty, Type::List(l) if l.ty() == Type::U32))
        }
        _ => false,
    };
    if packed {
        BatchExport::Packed
    } else {
        BatchExport::OtherShape
    }
}

/// Interfaces weir serves besides WASI 0.2, by full name.
pub const PROVIDED: &[&str] = &[
    "weir:host/types@0.1.0",
    "weir:host/cache@0.1.0",
    "weir:host/messaging@0.1.0",
    "weir:host/config@0.1.0",
    "weir:host/logging@0.1.0",
    "weir:host/market@0.1.0",
    "wasmcloud:messaging/types@0.2.0",
    "wasmcloud:messaging/consumer@0.2.0",
    "wasi:keyvalue/store@0.2.0-draft",
    "wasi:keyvalue/atomics@0.2.0-draft",
    "wasi:keyvalue/batch@0.2.0-draft",
    "wasi:logging/logging@0.1.0-draft",
    "wasi:config/runtime@0.2.0-draft",
    "wasi:config/store@0.2.0-draft",
    "wasi:config/store@0.2.0-rc.1",
    "wasmcloud:bus/lattice@1.0.0",
];

/// WASI 0.2 packages (any 0.2.x, as wasmtime-wasi links them).
const WASI_P2: &[&str] = &["cli", "clocks", "filesystem", "io", "random", "sockets"];

/// Whether weir links an import of this name.
pub(crate) fn provided(name: &str) -> bool {
    if PROVIDED.contains(&name) {
        return true;
    }
    let Some((iface, version)) = name.split_once('@') else {
        return false;
    };
    let package = iface
        .strip_prefix("wasi:")
        .and_then(|rest| rest.split_once('/'))
        .map(|(p, _)| p);
    package.is_some_and(|p| WASI_P2.contains(&p)) && version.starts_with("0.2.")
}

/// The component's imports that weir does not provide.
pub(crate) fn missing_imports(component: &Component, engine: &Engine) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|name| !provided(name))
        .map(str::to_owned)
        .collect()
}

/// What weir provides, for the error that refuses a component.
pub(crate) fn provided_list() -> String {
    format!(
        "{} and WASI 0.2 ({})",
        PROVIDED.join(", "),
        WASI_P2.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::provided;

    #[test]
    fn provided_names_follow_the_linker() {
        assert!(provided("wasi:keyvalue/store@0.2.0-draft"));
        assert!(provided("wasi:io/streams@0.2.6"));
        assert!(provided("weir:host/cache@0.1.0"));
        assert!(!provided("wasi:keyvalue/store@0.2.0-draft2"));
        assert!(!provided("wasi:blobstore/blobstore@0.2.0-draft"));
        assert!(!provided("wasi:io/streams@0.3.0"));
        assert!(!provided("wasi:http/types@0.2.0"));
        assert!(!provided("wasmcloud:bus/lattice@2.0.1"));
    }
}
