//! What one plugin call may use, and how the store enforces the memory part.

use serde::{Deserialize, Serialize};

use crate::section::Checker;

const MIB: u64 = 1024 * 1024;

/// Highest `memory_bytes` a plugin may be given: the size of one slot of the
/// pooling allocator, reserved (not committed) per concurrent call.
pub const MAX_MEMORY_BYTES: u64 = 4096 * MIB;

/// Resource limits of one plugin call. `[plugins.limits]` sets the defaults;
/// a plugin's `NAME.toml` may override any of them under `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Linear memory (all memories of the instance together), in bytes.
    pub memory_bytes: u64,
    /// WebAssembly fuel (about one unit per instruction).
    pub fuel: u64,
    /// Wall time of one call (instantiation included), in milliseconds.
    pub timeout_ms: u64,
    /// Size of what a call returns (mutated prompt, score names), in bytes.
    pub output_bytes: u64,
    /// What the plugin may print to stdout and to stderr, each, in bytes;
    /// it goes to Whetstone's log.
    pub log_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 * MIB,
            fuel: 1_000_000_000,
            timeout_ms: 1000,
            output_bytes: MIB,
            log_bytes: 64 * 1024,
        }
    }
}

impl Limits {
    pub(crate) fn validate(&self, check: &mut Checker) {
        check.in_range("memory_bytes", self.memory_bytes, MIB..=MAX_MEMORY_BYTES);
        check.in_range("fuel", self.fuel, 1_000..=u64::MAX / 2);
        check.in_range("timeout_ms", self.timeout_ms, 1..=3_600_000);
        check.in_range("output_bytes", self.output_bytes, 1..=256 * MIB);
        check.in_range("log_bytes", self.log_bytes, 0..=256 * MIB);
    }
}

/// A plugin's `[limits]` table: the keys it sets replace the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitOverrides {
    pub memory_bytes: Option<u64>,
    pub fuel: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub output_bytes: Option<u64>,
    pub log_bytes: Option<u64>,
}

impl LimitOverrides {
    /// `defaults` with the keys set here replaced.
    pub fn apply(&self, defaults: Limits) -> Limits {
        Limits {
            memory_bytes: self.memory_bytes.unwrap_or(defaults.memory_bytes),
            fuel: self.fuel.unwrap_or(defaults.fuel),
            timeout_ms: self.timeout_ms.unwrap_or(defaults.timeout_ms),
            output_bytes: self.output_bytes.unwrap_or(defaults.output_bytes),
            log_bytes: self.log_bytes.unwrap_or(defaults.log_bytes),
        }
    }
}

/// Which limit a call ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Memory,
    Fuel,
    Time,
    Output,
    Log,
}

impl Limit {
    /// The `limits.*` key that sets it.
    pub fn key(self) -> &'static str {
        match self {
            Limit::Memory => "memory_bytes",
            Limit::Fuel => "fuel",
            Limit::Time => "timeout_ms",
            Limit::Output => "output_bytes",
            Limit::Log => "log_bytes",
        }
    }

    /// The limit's value in `limits`, with its unit.
    pub fn describe(self, limits: &Limits) -> String {
        match self {
            Limit::Memory => format!("memory limit of {} bytes", limits.memory_bytes),
            Limit::Fuel => format!("fuel limit of {} units", limits.fuel),
            Limit::Time => format!("time limit of {} ms", limits.timeout_ms),
            Limit::Output => format!("output limit of {} bytes", limits.output_bytes),
            Limit::Log => format!("stdout/stderr limit of {} bytes", limits.log_bytes),
        }
    }
}

/// The store's `ResourceLimiter`: caps the instance's total linear memory
/// and remembers a refused growth, so the call's error names the limit
/// instead of whatever the guest did after its allocation failed.
#[derive(Debug)]
pub(super) struct MemoryLimiter {
    limit_bytes: usize,
    used_bytes: usize,
    pub(super) exceeded: bool,
}

/// The trap a refused memory growth raises.
#[derive(Debug, thiserror::Error)]
#[error("memory growth refused by the plugin's memory limit")]
pub(super) struct MemoryLimitExceeded;

/// Tables hold function references; no honest plugin needs more.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl MemoryLimiter {
    pub(super) fn new(limit_bytes: u64) -> MemoryLimiter {
        MemoryLimiter {
            limit_bytes: usize::try_from(limit_bytes).unwrap_or(usize::MAX),
            used_bytes: 0,
            exceeded: false,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let used_after = self.used_bytes - current.min(self.used_bytes) + desired;
        if used_after > self.limit_bytes {
            self.exceeded = true;
            return Err(MemoryLimitExceeded.into());
        }
        self.used_bytes = used_after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
