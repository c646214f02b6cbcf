//! `weir:host/config` and wasi:config (`runtime@0.2.0-draft`,
//! `store@0.2.0-rc.1`, and `store@0.2.0-draft` as wasmCloud 1.x components
//! import it): the component's values from the manifest.

use std::collections::BTreeMap;

use wasmtime::component::Linker;

use super::Capabilities;
use super::bindings::wasi::config0_2_0_draft::runtime;
use super::bindings::wasi::config0_2_0_rc_1::store;
use super::bindings::weir::host::config::Host;

/// The config capability of one component: its `config` values from the
/// manifest, as strings.
#[derive(Debug, Default)]
pub struct ConfigCapability {
    /// Key to value.
    values: BTreeMap<String, String>,
}

impl ConfigCapability {
    /// These values.
    pub fn new(values: BTreeMap<String, String>) -> Self {
        ConfigCapability { values }
    }
}

impl Host for Capabilities {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.ctx.config.values.get(&key).cloned())
    }

    fn get_all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self
            .ctx
            .config
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl runtime::Host for Capabilities {
    fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, runtime::ConfigError>> {
        Ok(Ok(Host::get(self, key)?))
    }

    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, runtime::ConfigError>> {
        Ok(Ok(Host::get_all(self)?))
    }
}

impl store::Host for Capabilities {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, store::Error>> {
        Ok(Ok(Host::get(self, key)?))
    }

    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, store::Error>> {
        Ok(Ok(Host::get_all(self)?))
    }
}

/// `wasi:config/store@0.2.0-draft`: the same functions and types as
/// `store@0.2.0-rc.1` under the name wasmCloud 1.x components import (a
/// pre-release version matches only itself, so it needs its own entry).
fn add_draft_store_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut Capabilities,
) -> wasmtime::Result<()> {
    type Got<V> = (Result<V, store::Error>,);
    let mut inst = linker.instance("wasi:config/store@0.2.0-draft")?;
    inst.func_wrap(
        "get",
        move |mut cx, (key,): (String,)| -> wasmtime::Result<Got<Option<String>>> {
            Ok((store::Host::get(get(cx.data_mut()), key)?,))
        },
    )?;
    inst.func_wrap(
        "get-all",
        move |mut cx, (): ()| -> wasmtime::Result<Got<Vec<(String, String)>>> {
            Ok((store::Host::get_all(get(cx.data_mut()))?,))
        },
    )?;
    Ok(())
}

/// Adds `weir:host/config` and every `wasi:config` version components import to a linker.
pub(super) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut Capabilities,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    super::bindings::weir::host::config::add_to_linker::<T, HasSelf<Capabilities>>(linker, get)?;
    super::bindings::wasi::config0_2_0_draft::runtime::add_to_linker::<T, HasSelf<Capabilities>>(
        linker, get,
    )?;
    super::bindings::wasi::config0_2_0_rc_1::store::add_to_linker::<T, HasSelf<Capabilities>>(
        linker, get,
    )?;
    add_draft_store_to_linker(linker, get)?;
    Ok(())
}
