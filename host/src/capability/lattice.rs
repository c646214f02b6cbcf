//! `wasmcloud:bus/lattice@1.0.0`: weir has no links (a component's
//! subjects, cache namespace and grants come from the manifest), so
//! `set-link-name` is accepted and changes nothing. Components written for
//! wasmCloud call it at start-up and keep running here.

use wasmtime::component::Resource;

use super::Capabilities;
use super::bindings::wasmcloud::bus::lattice::{Host, HostCallTargetInterface};

/// An interface a link name would apply to; kept only until dropped.
pub struct CallTarget;

impl HostCallTargetInterface for Capabilities {
    fn new(
        &mut self,
        _namespace: String,
        _package: String,
        _interface: String,
    ) -> wasmtime::Result<Resource<CallTarget>> {
        self.hold(CallTarget)
            .map_err(|e| wasmtime::format_err!("wasmcloud:bus/lattice: {e}"))
    }

    fn drop(&mut self, target: Resource<CallTarget>) -> wasmtime::Result<()> {
        self.release(target)
    }
}

impl Host for Capabilities {
    fn set_link_name(
        &mut self,
        name: String,
        interfaces: Vec<Resource<CallTarget>>,
    ) -> wasmtime::Result<()> {
        tracing::debug!(
            component = %self.ctx.name,
            link = %name,
            "set-link-name ignored: weir has no links, the manifest wires every interface"
        );
        for target in interfaces {
            self.release(target)?;
        }
        Ok(())
    }
}

/// Adds wasmCloud's `bus/lattice` to a linker.
pub(super) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut Capabilities,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    super::bindings::wasmcloud::bus::lattice::add_to_linker::<T, HasSelf<Capabilities>>(
        linker, get,
    )?;
    Ok(())
}
