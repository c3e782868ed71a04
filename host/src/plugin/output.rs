//! Plugin output (the `log` import, stdout and stderr) for one call: kept up
//! to a byte budget and routed to `tracing` under the repeater's name.
//!
//! wasmtime's `MemoryOutputPipe` fails the guest's write once full, which
//! would turn a chatty plugin into a failed call; this stream accepts every
//! write and silently drops what is over the budget instead.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Where a line of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    Stdout,
    Stderr,
}

/// The output budget and pending stdout/stderr bytes of one call.
#[derive(Debug)]
struct Budget {
    remaining: usize,
    dropped: usize,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Shared handle on one call's output; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct CallOutput {
    inner: Arc<Mutex<Budget>>,
    repeater: Arc<str>,
    plugin: Arc<str>,
}

impl CallOutput {
    pub(crate) fn new(max_bytes: usize, repeater: Arc<str>, plugin: Arc<str>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Budget {
                remaining: max_bytes,
                dropped: 0,
                stdout: Vec::new(),
                stderr: Vec::new(),
            })),
            repeater,
            plugin,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Budget> {
        // A poisoned lock only means another writer panicked mid-append; the
        // bytes are still usable for logging.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Charges `len` bytes to the budget; returns how many may be kept.
    fn charge(budget: &mut Budget, len: usize) -> usize {
        let kept = len.min(budget.remaining);
        budget.remaining -= kept;
        budget.dropped += len - kept;
        kept
    }

    /// Records one message from the plugin's `log` import, if the budget allows.
    pub(crate) fn log(&self, level: tracing::Level, message: &str) {
        let kept = {
            let mut budget = self.lock();
            Self::charge(&mut budget, message.len())
        };
        if kept == 0 {
            return;
        }
        let message = cut_at_char_boundary(message, kept);
        let (repeater, plugin) = (&*self.repeater, &*self.plugin);
        match level {
            tracing::Level::TRACE => tracing::trace!(repeater, plugin, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(repeater, plugin, "{message}"),
            tracing::Level::INFO => tracing::info!(repeater, plugin, "{message}"),
            tracing::Level::WARN => tracing::warn!(repeater, plugin, "{message}"),
            tracing::Level::ERROR => tracing::error!(repeater, plugin, "{message}"),
        }
    }

    fn write(&self, channel: Channel, bytes: &[u8]) {
        let mut budget = self.lock();
        let kept = Self::charge(&mut budget, bytes.len());
        let buffer = match channel {
            Channel::Stdout => &mut budget.stdout,
            Channel::Stderr => &mut budget.stderr,
        };
        buffer.extend_from_slice(&bytes[..kept]);
    }

    /// Emits buffered stdout/stderr as tracing events, one per line, and a
    /// note if output was dropped. Called once when the call ends.
    pub(crate) fn flush(&self) {
        let (stdout, stderr, dropped) = {
            let mut budget = self.lock();
            let dropped = std::mem::take(&mut budget.dropped);
            (
                std::mem::take(&mut budget.stdout),
                std::mem::take(&mut budget.stderr),
                dropped,
            )
        };
        let (repeater, plugin) = (&*self.repeater, &*self.plugin);
        for line in String::from_utf8_lossy(&stdout).lines() {
            tracing::info!(repeater, plugin, stream = "stdout", "{line}");
        }
        for line in String::from_utf8_lossy(&stderr).lines() {
            tracing::warn!(repeater, plugin, stream = "stderr", "{line}");
        }
        if dropped > 0 {
            tracing::warn!(
                repeater,
                plugin,
                dropped_bytes = dropped,
                "plugin output over the per-call limit was dropped"
            );
        }
    }

    /// A stdout or stderr stream for the WASI context writing into this output.
    pub(crate) fn stream(&self, channel: Channel) -> OutputPipe {
        OutputPipe {
            output: self.clone(),
            channel,
        }
    }

    #[cfg(test)]
    fn pending(&self, channel: Channel) -> Vec<u8> {
        let budget = self.lock();
        match channel {
            Channel::Stdout => budget.stdout.clone(),
            Channel::Stderr => budget.stderr.clone(),
        }
    }
}

/// Longest prefix of `text` that is at most `max` bytes and valid UTF-8.
fn cut_at_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One of the plugin's standard output streams. Always ready, never fails.
#[derive(Debug, Clone)]
pub(crate) struct OutputPipe {
    output: CallOutput,
    channel: Channel,
}

/// Largest write the guest is offered at once; it keeps guest-driven host
/// allocations small, like wasmtime's own pipes.
const WRITE_PERMIT: usize = 64 << 10;

impl OutputStream for OutputPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.output.write(self.channel, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[async_trait::async_trait]
impl Pollable for OutputPipe {
    async fn ready(&mut self) {}
}

impl IsTerminal for OutputPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for OutputPipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.output.write(self.channel, buf);
        // Report the whole buffer as written: overflow is dropped, not refused.
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_past_the_budget_are_accepted_and_dropped() {
        let output = CallOutput::new(10, "d/r".into(), "p".into());
        let mut stdout = output.stream(Channel::Stdout);
        stdout.write(Bytes::from_static(b"12345678")).unwrap();
        stdout.write(Bytes::from_static(b"abcdef")).unwrap();
        assert_eq!(stdout.check_write().unwrap(), WRITE_PERMIT);
        assert_eq!(output.pending(Channel::Stdout), b"12345678ab");
        assert_eq!(output.lock().dropped, 4);
    }

    #[test]
    fn log_shares_the_budget_and_cuts_on_a_char_boundary() {
        let output = CallOutput::new(5, "d/r".into(), "p".into());
        output.log(tracing::Level::INFO, "héllo");
        assert_eq!(output.lock().remaining, 0);
        assert_eq!(cut_at_char_boundary("héllo", 2), "h");
        output
            .stream(Channel::Stderr)
            .write(Bytes::from_static(b"x"))
            .unwrap();
        assert!(output.pending(Channel::Stderr).is_empty());
    }
}
