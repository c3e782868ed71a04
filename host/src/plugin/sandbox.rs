//! The state one plugin call runs in: a WASI p2 context that grants nothing
//! (no filesystem, sockets, environment or arguments), the memory limiter,
//! the CPU tick budget and the captured output. A fresh one is made per call
//! and dropped with its store, so nothing leaks from one call to the next.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{LogLevel, repeater};
use super::limits::CallLimiter;
use super::output::{CallOutput, Channel};

/// Store data of one plugin call.
pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: CallLimiter,
    pub(crate) output: CallOutput,
    /// Epoch ticks of guest execution still allowed.
    pub(crate) ticks_left: u64,
    /// Set when the tick budget ran out, so the resulting error reads as a timeout.
    pub(crate) timed_out: bool,
}

impl CallState {
    pub(crate) fn new(
        memory_bytes: usize,
        ticks: u64,
        max_log_bytes: usize,
        repeater: Arc<str>,
        plugin: Arc<str>,
    ) -> Self {
        let output = CallOutput::new(max_log_bytes, repeater, plugin);
        // The builder's defaults already deny sockets and name lookups, give
        // no preopened directories, no environment and no arguments; stdin is
        // closed. Only stdout/stderr are redirected into the bounded capture.
        let wasi = WasiCtx::builder()
            .stdout(output.stream(Channel::Stdout))
            .stderr(output.stream(Channel::Stderr))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: CallLimiter::new(memory_bytes),
            output,
            ticks_left: ticks,
            timed_out: false,
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl repeater::plugin::log::Host for CallState {
    fn log(&mut self, level: LogLevel, message: String) {
        let level = match level {
            LogLevel::Trace => tracing::Level::TRACE,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Error => tracing::Level::ERROR,
        };
        self.output.log(level, &message);
    }
}

impl repeater::plugin::types::Host for CallState {}
