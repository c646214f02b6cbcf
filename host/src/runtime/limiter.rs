//! Per-instance resource limits with typed errors, so a failure can say
//! which limit was hit.

use wasmtime::ResourceLimiter;

/// A limit a guest ran into.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitHit {
    /// Linear memory would exceed its limit.
    #[error("memory limit of {limit} bytes exceeded (asked for {desired} bytes)")]
    Memory {
        /// Bytes requested.
        desired: usize,
        /// Bytes allowed.
        limit: usize,
    },
    /// A table would exceed its element limit.
    #[error("table limit of {limit} elements exceeded (asked for {desired})")]
    Table {
        /// Elements requested.
        desired: usize,
        /// Elements allowed.
        limit: usize,
    },
}

/// Limits for one instance; growth past them traps with [`LimitHit`].
#[derive(Debug, Clone)]
pub struct Limiter {
    /// Bytes of linear memory allowed per memory.
    pub memory_bytes: usize,
    /// Elements allowed per table.
    pub table_elements: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return Err(LimitHit::Memory {
                desired,
                limit: self.memory_bytes,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            return Err(LimitHit::Table {
                desired,
                limit: self.table_elements,
            }
            .into());
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        // A Rust component is a handful of core instances; more is suspicious.
        32
    }

    fn memories(&self) -> usize {
        4
    }

    fn tables(&self) -> usize {
        16
    }
}
