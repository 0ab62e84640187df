//! The host's capabilities, wrapped for Rust: logging, progress, running granted programs
//! ([`Exec`]), and the backup streams ([`SinkWriter`], [`SourceReader`]).

use std::time::Duration;

use crate::bindings::shoal::addon::host as raw;
use crate::{EnvVar, HookError};
pub use raw::{ExecError, ExecOutput, LogLevel, StreamError};

/// Write a line to the host log. Prefer the [`info!`](crate::info) family of macros.
pub fn log(level: LogLevel, message: &str) {
    raw::log(level, message);
}

/// Report progress of a long hook: `done` of `total` units (bytes, files), with a short note.
pub fn progress(done: u64, total: Option<u64>, message: &str) {
    raw::progress(done, total, message);
}

/// The most files an engine process may have open on this host (`engine-open-files`): what
/// the machine lets the host give it. Validate settings whose need grows with it (a table
/// cache) against this, so that the server never cuts a value at its next start.
pub fn engine_open_files() -> u64 {
    raw::engine_open_files()
}

/// Log at `trace` level, `format!` style.
#[macro_export]
macro_rules! trace { ($($t:tt)*) => { $crate::host::log($crate::host::LogLevel::Trace, &::std::format!($($t)*)) } }
/// Log at `debug` level, `format!` style.
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::host::log($crate::host::LogLevel::Debug, &::std::format!($($t)*)) } }
/// Log at `info` level, `format!` style.
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::host::log($crate::host::LogLevel::Info, &::std::format!($($t)*)) } }
/// Log at `warn` level, `format!` style.
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::host::log($crate::host::LogLevel::Warn, &::std::format!($($t)*)) } }
/// Log at `error` level, `format!` style.
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::host::log($crate::host::LogLevel::Error, &::std::format!($($t)*)) } }

/// A program to run on the host. The program must be declared as
/// `Capability::Exec(name)` in the manifest and granted by the operator.
///
/// ```ignore
/// let out = Exec::new("pg_isready").args(["-h", "127.0.0.1"]).timeout(Duration::from_secs(5)).run()?;
/// ```
#[derive(Debug, Clone)]
pub struct Exec {
    request: raw::ExecRequest,
}

impl Exec {
    /// Run `program` (a binary name, not a path).
    pub fn new(program: impl Into<String>) -> Self {
        Exec {
            request: raw::ExecRequest {
                program: program.into(),
                args: Vec::new(),
                env: Vec::new(),
                stdin: None,
                timeout_ms: None,
            },
        }
    }

    /// Append one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.request.args.push(arg.into());
        self
    }

    /// Append arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.request.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Set an environment variable of the child.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.env.push(EnvVar {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// Feed `bytes` to the child's stdin.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.request.stdin = Some(bytes.into());
        self
    }

    /// Kill the child after `timeout` (the hook's deadline applies anyway).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.request.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Run to completion, capturing stdout and stderr.
    pub fn run(&self) -> Result<ExecOutput, ExecError> {
        raw::exec(&self.request)
    }

    /// Run with stdout piped into `sink` on the host side.
    pub fn run_into(&self, sink: &mut SinkWriter<'_>) -> Result<ExecOutput, ExecError> {
        raw::exec_into_sink(&self.request, sink.sink)
    }

    /// Run with `source` piped into stdin on the host side.
    pub fn run_from(&self, source: &mut SourceReader<'_>) -> Result<ExecOutput, ExecError> {
        raw::exec_from_source(&self.request, source.source)
    }

    /// [`Exec::run`], then fail unless the exit code is 0.
    pub fn run_ok(&self) -> Result<ExecOutput, HookError> {
        let out = self.run()?;
        out.ok_or_failed(&self.request.program)
    }
}

impl ExecOutput {
    /// `Ok(self)` when the child exited with 0, otherwise a `failed` hook error carrying the
    /// exit status and the tail of stderr.
    pub fn ok_or_failed(self, program: &str) -> Result<ExecOutput, HookError> {
        if self.exit_code == Some(0) {
            return Ok(self);
        }
        let status = match self.exit_code {
            Some(code) => format!("exit code {code}"),
            None => "killed by a signal".to_string(),
        };
        let stderr = String::from_utf8_lossy(&self.stderr);
        let tail: String = {
            let t = stderr.trim();
            let start = t.len().saturating_sub(2000);
            let start = (start..t.len())
                .find(|i| t.is_char_boundary(*i))
                .unwrap_or(t.len());
            t[start..].to_string()
        };
        Err(HookError::Failed(format!(
            "{program} failed ({status}): {tail}"
        )))
    }

    /// Stdout as UTF-8 (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl From<ExecError> for HookError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Denied(m) => HookError::Failed(format!("exec denied: {m}")),
            ExecError::NotFound(m) => HookError::Failed(format!("exec: program not found: {m}")),
            ExecError::TimedOut => HookError::Retryable("exec: program timed out".into()),
            ExecError::Failed(m) => HookError::Failed(format!("exec failed: {m}")),
        }
    }
}

impl From<StreamError> for HookError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Closed(m) => HookError::Retryable(format!("stream closed: {m}")),
            StreamError::Failed(m) => HookError::Failed(format!("stream failed: {m}")),
        }
    }
}

impl From<StreamError> for std::io::Error {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Closed(m) => std::io::Error::new(std::io::ErrorKind::BrokenPipe, m),
            StreamError::Failed(m) => std::io::Error::other(m),
        }
    }
}

/// The sink a backup writes into; a [`std::io::Write`]. Use [`Exec::run_into`] for bulk data.
pub struct SinkWriter<'a> {
    sink: &'a raw::Sink,
}

impl<'a> SinkWriter<'a> {
    pub(crate) fn new(sink: &'a raw::Sink) -> Self {
        SinkWriter { sink }
    }

    /// Bytes the host accepted so far (from this writer and from `exec` piping alike).
    pub fn bytes_written(&self) -> u64 {
        self.sink.bytes_written()
    }
}

impl std::io::Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Bound each host call so one write never asks the host to buffer a huge list.
        let n = buf.len().min(1 << 20);
        self.sink.write(&buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The source a restore reads from; a [`std::io::Read`]. Use [`Exec::run_from`] for bulk data.
pub struct SourceReader<'a> {
    source: &'a raw::Source,
}

impl<'a> SourceReader<'a> {
    pub(crate) fn new(source: &'a raw::Source) -> Self {
        SourceReader { source }
    }

    /// Bytes read so far (from this reader and from `exec` piping alike).
    pub fn bytes_read(&self) -> u64 {
        self.source.bytes_read()
    }
}

impl std::io::Read for SourceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let max = u32::try_from(buf.len().min(1 << 20)).unwrap_or(1 << 20);
        let bytes = self.source.read(max)?;
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        Ok(n)
    }
}
