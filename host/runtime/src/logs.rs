//! Where an addon's words go: the `log` import and the guest's stdout/stderr all end up as
//! `tracing` events tagged with the addon and hook, within one byte budget per call. Lines
//! beyond the budget are dropped and counted; the last few KiB of stderr are kept to explain a
//! panic.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::wit::Hook;

/// Bytes of stderr kept for panic messages.
const TAIL_BYTES: usize = 4096;

/// Log level of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Per-call log accounting, shared by the `log` import and the stdio streams.
#[derive(Debug)]
pub(crate) struct LogState {
    addon: Arc<str>,
    hook: Hook,
    budget: u64,
    line_max: usize,
    used: u64,
    dropped_bytes: u64,
    dropped_lines: u64,
    stderr_tail: Vec<u8>,
    partial: [Vec<u8>; 2],
}

/// A handle on a call's [`LogState`].
#[derive(Debug, Clone)]
pub(crate) struct Logs(Arc<Mutex<LogState>>);

/// What the log budget did during one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Bytes of log lines emitted.
    pub emitted_bytes: u64,
    /// Bytes dropped because the budget was spent.
    pub dropped_bytes: u64,
    /// Lines dropped because the budget was spent.
    pub dropped_lines: u64,
}

impl Logs {
    pub(crate) fn new(addon: Arc<str>, hook: Hook, budget: u64, line_max: usize) -> Self {
        Logs(Arc::new(Mutex::new(LogState {
            addon,
            hook,
            budget,
            line_max: line_max.max(64),
            used: 0,
            dropped_bytes: 0,
            dropped_lines: 0,
            stderr_tail: Vec::new(),
            partial: [Vec::new(), Vec::new()],
        })))
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A poisoned lock only means another thread panicked mid-log; the counters are
        // still meaningful.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start accounting for a new call (long-lived instances reuse one `Logs`).
    pub(crate) fn reset(&self, hook: Hook) {
        let mut s = self.lock();
        s.hook = hook;
        s.used = 0;
        s.dropped_bytes = 0;
        s.dropped_lines = 0;
        s.stderr_tail.clear();
        s.partial = [Vec::new(), Vec::new()];
    }

    /// Emit one line from the `log` import.
    pub(crate) fn line(&self, level: Level, message: &str) {
        self.lock().emit(level, "log", message.as_bytes());
    }

    /// Flush partial stdio lines and return the call's statistics; logs a summary of anything
    /// dropped.
    pub(crate) fn finish(&self) -> LogStats {
        let mut s = self.lock();
        for i in 0..2 {
            let rest = std::mem::take(&mut s.partial[i]);
            if !rest.is_empty() {
                let (level, stream) = stdio_meta(i);
                s.emit(level, stream, &rest);
            }
        }
        if s.dropped_lines > 0 {
            tracing::warn!(
                target: "shoal::addon",
                addon = %s.addon,
                hook = %s.hook,
                "log budget of {} bytes spent: dropped {} lines ({} bytes)",
                s.budget,
                s.dropped_lines,
                s.dropped_bytes
            );
        }
        LogStats {
            emitted_bytes: s.used,
            dropped_bytes: s.dropped_bytes,
            dropped_lines: s.dropped_lines,
        }
    }

    /// The panic message in the captured stderr, if the guest printed one.
    pub(crate) fn panic_message(&self) -> Option<String> {
        let s = self.lock();
        let mut text = String::from_utf8_lossy(&s.stderr_tail).into_owned();
        if let Some(partial) = s.partial.get(1) {
            text.push_str(&String::from_utf8_lossy(partial));
        }
        let at = text.rfind("panicked at")?;
        // "thread '<unnamed>' panicked at src/lib.rs:10:5:\nmessage\nnote: …"
        let after = &text[at + "panicked at".len()..];
        let mut lines = after.lines();
        let location = lines.next().unwrap_or("").trim().trim_end_matches(':');
        let message: Vec<&str> = lines.take_while(|l| !l.starts_with("note:")).collect();
        let message = message.join("\n");
        Some(if message.trim().is_empty() {
            format!("at {location}")
        } else {
            format!("{} (at {location})", message.trim())
        })
    }

    /// A writer for guest stdout (`stream` 0) or stderr (`stream` 1).
    pub(crate) fn stdio(&self, stream: usize) -> GuestOutput {
        GuestOutput {
            logs: self.clone(),
            stream,
        }
    }
}

fn stdio_meta(stream: usize) -> (Level, &'static str) {
    if stream == 0 {
        (Level::Info, "stdout")
    } else {
        (Level::Warn, "stderr")
    }
}

impl LogState {
    fn emit(&mut self, level: Level, stream: &str, line: &[u8]) {
        let len = line.len() as u64;
        if self.used + len > self.budget {
            self.dropped_bytes += len;
            self.dropped_lines += 1;
            return;
        }
        self.used += len;
        let cut = line.len().min(self.line_max);
        let mut text = String::from_utf8_lossy(&line[..cut]).into_owned();
        if cut < line.len() {
            text.push_str(&format!(" … [{} more bytes cut]", line.len() - cut));
        }
        let addon = &*self.addon;
        let hook = self.hook.name();
        match level {
            Level::Trace => tracing::trace!(target: "shoal::addon", addon, hook, stream, "{text}"),
            Level::Debug => tracing::debug!(target: "shoal::addon", addon, hook, stream, "{text}"),
            Level::Info => tracing::info!(target: "shoal::addon", addon, hook, stream, "{text}"),
            Level::Warn => tracing::warn!(target: "shoal::addon", addon, hook, stream, "{text}"),
            Level::Error => tracing::error!(target: "shoal::addon", addon, hook, stream, "{text}"),
        }
    }

    fn write_stdio(&mut self, stream: usize, mut bytes: &[u8]) {
        if stream == 1 {
            self.stderr_tail.extend_from_slice(bytes);
            if self.stderr_tail.len() > TAIL_BYTES {
                let excess = self.stderr_tail.len() - TAIL_BYTES;
                self.stderr_tail.drain(..excess);
            }
        }
        let (level, name) = stdio_meta(stream);
        while let Some(nl) = bytes.iter().position(|b| *b == b'\n') {
            let mut line = std::mem::take(&mut self.partial[stream]);
            line.extend_from_slice(&bytes[..nl]);
            self.emit(level, name, &line);
            bytes = &bytes[nl + 1..];
        }
        // Keep at most one line's worth of an unterminated line; count the rest as dropped.
        let room = self.line_max.saturating_sub(self.partial[stream].len());
        let keep = bytes.len().min(room);
        self.partial[stream].extend_from_slice(&bytes[..keep]);
        if keep < bytes.len() {
            self.dropped_bytes += (bytes.len() - keep) as u64;
        }
    }
}

/// The guest's stdout or stderr. Never blocks and never fails: output past the budget is
/// dropped, so a chatty addon cannot stall or crash on a full pipe.
pub(crate) struct GuestOutput {
    logs: Logs,
    stream: usize,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(GuestOutput {
            logs: self.logs.clone(),
            stream: self.stream,
        })
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.logs.lock().write_stdio(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_drops_and_counts() {
        let logs = Logs::new("t".into(), Hook::Probe, 10, 100);
        logs.line(Level::Info, "12345");
        logs.line(Level::Info, "12345");
        logs.line(Level::Info, "x");
        let stats = logs.finish();
        assert_eq!(stats.emitted_bytes, 10);
        assert_eq!(stats.dropped_lines, 1);
        assert_eq!(stats.dropped_bytes, 1);
    }

    #[test]
    fn panic_message_is_extracted_from_stderr() {
        let logs = Logs::new("t".into(), Hook::Probe, 1 << 20, 1000);
        logs.lock().write_stdio(
            1,
            b"thread '<unnamed>' panicked at src/lib.rs:10:5:\nboom here\nnote: run with RUST_BACKTRACE=1\n",
        );
        assert_eq!(
            logs.panic_message().as_deref(),
            Some("boom here (at src/lib.rs:10:5)")
        );
    }

    #[test]
    fn unterminated_stdio_is_bounded() {
        let logs = Logs::new("t".into(), Hook::Probe, 1 << 20, 100);
        let big = vec![b'a'; 10_000];
        logs.lock().write_stdio(0, &big);
        assert!(logs.lock().partial[0].len() <= 100);
        let stats = logs.finish();
        assert_eq!(stats.emitted_bytes, 100);
        assert_eq!(stats.dropped_bytes, 9_900);
    }
}
