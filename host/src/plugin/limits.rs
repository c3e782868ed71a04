//! What a plugin may use: every sandbox limit in one place, and the
//! per-call resource limiter that enforces the memory cap.
//!
//! A memory-cap hit is not a wasmtime `Trap` variant (the guest just sees
//! `memory.grow` fail and usually aborts), so the limiter records the breach
//! and the caller turns the resulting trap into [`PluginError::MemoryLimit`].
//!
//! [`PluginError::MemoryLimit`]: super::PluginError::MemoryLimit

use std::time::Duration;

/// The limits every plugin call runs under. One value per engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLimits {
    /// Linear memory one plugin instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Guest execution time one call (instantiation included) may use.
    /// Enforced with epoch ticks, so it is exact to about one `epoch_tick`.
    pub cpu_time: Duration,
    /// How often the engine's epoch advances. Shorter means a tighter CPU cap
    /// and more frequent yields to the async runtime, at a small idle cost.
    pub epoch_tick: Duration,
    /// Largest request body `build` may return, in bytes.
    pub max_body_bytes: usize,
    /// Most headers `build` may return.
    pub max_header_count: usize,
    /// Largest total size of header names and values `build` may return, in bytes.
    pub max_header_bytes: usize,
    /// Plugin log, stdout and stderr output kept per call, in bytes; the rest is dropped.
    pub max_log_bytes: usize,
    /// Plugin instances that may be alive at once across the engine; calls
    /// beyond this wait for a slot. Sizes the pooling allocator.
    pub max_instances: u32,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            cpu_time: Duration::from_millis(100),
            epoch_tick: Duration::from_millis(5),
            max_body_bytes: 10 << 20,
            max_header_count: 64,
            max_header_bytes: 32 << 10,
            max_log_bytes: 16 << 10,
            max_instances: 256,
        }
    }
}

impl PluginLimits {
    /// Number of epoch ticks a call may run for: the CPU cap rounded up to
    /// whole ticks, at least one.
    pub(crate) fn deadline_ticks(&self) -> u64 {
        let tick = self.epoch_tick.as_nanos().max(1);
        let ticks = self.cpu_time.as_nanos().div_ceil(tick);
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }
}

/// Enforces [`PluginLimits::memory_bytes`] for one call's store and remembers
/// whether the plugin tried to go past it.
#[derive(Debug)]
pub(crate) struct CallLimiter {
    memory_bytes: usize,
    /// Largest size the plugin asked for beyond the cap, if it did.
    pub(crate) memory_breach: Option<usize>,
}

impl CallLimiter {
    pub(crate) fn new(memory_bytes: usize) -> Self {
        Self {
            memory_bytes,
            memory_breach: None,
        }
    }
}

impl wasmtime::ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_breach = Some(desired.max(self.memory_breach.unwrap_or(0)));
            // Refuse the growth rather than trap: the guest may cope with it.
            // If it cannot, the trap that follows is reported as a memory limit.
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a plugin needing more than this is broken.
        Ok(desired <= 100_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn deadline_ticks_round_up_to_whole_ticks() {
        let limits = PluginLimits {
            cpu_time: Duration::from_millis(101),
            epoch_tick: Duration::from_millis(5),
            ..PluginLimits::default()
        };
        assert_eq!(limits.deadline_ticks(), 21);
        let tiny = PluginLimits {
            cpu_time: Duration::ZERO,
            ..PluginLimits::default()
        };
        assert_eq!(tiny.deadline_ticks(), 1);
    }

    #[test]
    fn limiter_refuses_growth_past_the_cap_and_records_it() {
        let mut limiter = CallLimiter::new(1 << 20);
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        assert_eq!(limiter.memory_breach, None);
        assert!(!limiter.memory_growing(1 << 20, 2 << 20, None).unwrap());
        assert_eq!(limiter.memory_breach, Some(2 << 20));
    }
}
