//! The host side of `shoal:addon/host`: logging, progress, the backup streams, and `exec` of
//! granted programs. Exec children get a clean environment, run as the call's OS user, are
//! killed when the call's deadline passes or the call is dropped, and pipe bulk data straight
//! between the child and a sink or source without entering Wasm memory.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::Command;
use wasmtime::component::Resource;

use crate::logs::Level;
use crate::sandbox::Progress;
use crate::state::HostState;
use crate::streams::{HostSink, HostSource};
use crate::wit::shoal::addon::host::{
    ExecError, ExecOutput, ExecRequest, Host, HostSink as HostSinkTrait,
    HostSource as HostSourceTrait, LogLevel, StreamError,
};

/// Largest single `source.read` the host serves.
const MAX_READ: u32 = 1 << 20;

impl crate::wit::shoal::addon::types::Host for HostState {}

impl Host for HostState {
    async fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        let level = match level {
            LogLevel::Trace => Level::Trace,
            LogLevel::Debug => Level::Debug,
            LogLevel::Info => Level::Info,
            LogLevel::Warn => Level::Warn,
            LogLevel::Error => Level::Error,
        };
        self.logs.line(level, &message);
        Ok(())
    }

    async fn progress(
        &mut self,
        done: u64,
        total: Option<u64>,
        message: String,
    ) -> wasmtime::Result<()> {
        let mut message = message;
        message.truncate(
            (0..=message.len().min(1024))
                .rev()
                .find(|i| message.is_char_boundary(*i))
                .unwrap_or(0),
        );
        let p = Progress {
            done,
            total,
            message,
        };
        match &self.progress {
            Some(f) => f(&p),
            None => {
                tracing::debug!(target: "shoal::addon", addon = %self.addon, done, total, "{}", p.message)
            }
        }
        Ok(())
    }

    async fn exec(
        &mut self,
        request: ExecRequest,
    ) -> wasmtime::Result<Result<ExecOutput, ExecError>> {
        Ok(self.run_exec(request, Pipe::None).await)
    }

    async fn exec_into_sink(
        &mut self,
        request: ExecRequest,
        into: Resource<HostSink>,
    ) -> wasmtime::Result<Result<ExecOutput, ExecError>> {
        // Take the sink out of the table for the duration, so the child can stream into it
        // while `self` stays usable.
        let sink = std::mem::replace(self.table.get_mut(&into)?, HostSink::new(tokio::io::sink()));
        let mut sink = sink;
        let out = self.run_exec(request, Pipe::Into(&mut sink)).await;
        *self.table.get_mut(&into)? = sink;
        Ok(out)
    }

    async fn exec_from_source(
        &mut self,
        request: ExecRequest,
        from: Resource<HostSource>,
    ) -> wasmtime::Result<Result<ExecOutput, ExecError>> {
        if request.stdin.is_some() {
            return Ok(Err(ExecError::Failed(
                "exec-from-source: the request must not carry its own stdin".into(),
            )));
        }
        let mut source = std::mem::replace(
            self.table.get_mut(&from)?,
            HostSource::new(tokio::io::empty()),
        );
        let out = self.run_exec(request, Pipe::From(&mut source)).await;
        *self.table.get_mut(&from)? = source;
        Ok(out)
    }
}

impl HostSinkTrait for HostState {
    async fn write(
        &mut self,
        sink: Resource<HostSink>,
        bytes: Vec<u8>,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        let sink = self.table.get_mut(&sink)?;
        match sink.writer.write_all(&bytes).await {
            Ok(()) => {
                sink.written += bytes.len() as u64;
                Ok(Ok(()))
            }
            Err(e) => Ok(Err(stream_error(e))),
        }
    }

    async fn bytes_written(&mut self, sink: Resource<HostSink>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&sink)?.written)
    }

    async fn drop(&mut self, sink: Resource<HostSink>) -> wasmtime::Result<()> {
        self.table.delete(sink)?;
        Ok(())
    }
}

impl HostSourceTrait for HostState {
    async fn read(
        &mut self,
        source: Resource<HostSource>,
        max: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, StreamError>> {
        let source = self.table.get_mut(&source)?;
        let mut buf = vec![0u8; max.min(MAX_READ) as usize];
        match source.reader.read(&mut buf).await {
            Ok(n) => {
                buf.truncate(n);
                source.read += n as u64;
                Ok(Ok(buf))
            }
            Err(e) => Ok(Err(stream_error(e))),
        }
    }

    async fn bytes_read(&mut self, source: Resource<HostSource>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&source)?.read)
    }

    async fn drop(&mut self, source: Resource<HostSource>) -> wasmtime::Result<()> {
        self.table.delete(source)?;
        Ok(())
    }
}

fn stream_error(e: std::io::Error) -> StreamError {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted => StreamError::Closed(e.to_string()),
        _ => StreamError::Failed(e.to_string()),
    }
}

/// Where an exec child's bulk data goes.
enum Pipe<'a> {
    None,
    Into(&'a mut HostSink),
    From(&'a mut HostSource),
}

impl HostState {
    async fn run_exec(
        &mut self,
        req: ExecRequest,
        pipe: Pipe<'_>,
    ) -> Result<ExecOutput, ExecError> {
        let program = req.program.clone();
        let path = match self.sandbox.exec.get(&program) {
            Some(Some(path)) => path.clone(),
            Some(None) => {
                return Err(ExecError::NotFound(format!(
                    "{program} is granted but no executable of that name was found in the \
                     operator's exec paths"
                )))
            }
            None => {
                let why = if self.sandbox.exec_not_granted.contains(&program) {
                    "declared in the manifest but not granted by the operator"
                } else {
                    "not declared as an exec capability in the manifest"
                };
                self.denials.record(format!("exec of {program:?} ({why})"));
                return Err(ExecError::Denied(format!("{program}: {why}")));
            }
        };

        let remaining = self
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        let timeout = match req.timeout_ms {
            Some(ms) => remaining.min(Duration::from_millis(ms)),
            None => remaining,
        };

        let mut cmd = Command::new(&path);
        cmd.args(&req.args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .current_dir("/")
            .stdin(if req.stdin.is_some() || matches!(pipe, Pipe::From(_)) {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for var in &req.env {
            cmd.env(&var.name, &var.value);
        }
        if let Some(user) = self.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ExecError::NotFound(format!("{}: {e}", path.display())))
            }
            Err(e) => {
                return Err(ExecError::Failed(format!(
                    "starting {}: {e}",
                    path.display()
                )))
            }
        };
        tracing::debug!(target: "shoal::addon", addon = %self.addon, program = %program, args = ?req.args, "exec");
        // Until the child is reaped, dropping the call (deadline, cancellation) kills its whole
        // process group, so nothing it started outlives the hook.
        let mut group = GroupKiller(child.id());

        let cap = self.exec_capture;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let mut streamed = 0u64;
        let mut truncated = false;

        let work = async {
            let err_capture = capture(stderr, cap);
            match pipe {
                Pipe::From(source) => {
                    let feed_source = async {
                        match stdin {
                            Some(mut w) => {
                                let n = copy_counting(&mut source.reader, &mut w).await?;
                                source.read += n;
                                Ok::<u64, String>(n)
                            }
                            None => Ok(0),
                        }
                    };
                    let (n, out, err) =
                        tokio::join!(feed_source, capture(stdout, cap), err_capture);
                    Ok::<_, String>((out, err, n?))
                }
                Pipe::None | Pipe::Into(_) => {
                    let feed = async {
                        if let (Some(mut w), Some(bytes)) = (stdin, req.stdin.as_deref()) {
                            // A child that exits without reading all input is not an error
                            // here; its exit status tells.
                            let _ = w.write_all(bytes).await;
                        }
                    };
                    match pipe {
                        Pipe::Into(sink) => {
                            let copy = async {
                                let Some(mut r) = stdout else { return Ok(0) };
                                let n = tokio::io::copy(&mut r, &mut sink.writer)
                                    .await
                                    .map_err(|e| format!("streaming stdout into the sink: {e}"))?;
                                sink.writer
                                    .flush()
                                    .await
                                    .map_err(|e| format!("flushing the sink: {e}"))?;
                                sink.written += n;
                                Ok::<u64, String>(n)
                            };
                            let ((), n, err) = tokio::join!(feed, copy, err_capture);
                            Ok(((Vec::new(), false), err, n?))
                        }
                        _ => {
                            let ((), out, err) =
                                tokio::join!(feed, capture(stdout, cap), err_capture);
                            Ok((out, err, 0))
                        }
                    }
                }
            }
        };

        let run = async {
            let ((stdout, out_cut), (stderr, err_cut), n) = work.await?;
            // Reap only after the group had its chance to be killed; `child.wait` reaps.
            let status = child
                .wait()
                .await
                .map_err(|e| format!("waiting for {program}: {e}"))?;
            group.0 = None;
            Ok::<_, String>((status, stdout, stderr, out_cut || err_cut, n))
        };

        match tokio::time::timeout(timeout, run).await {
            Err(_) => Err(ExecError::TimedOut),
            Ok(Err(msg)) => Err(ExecError::Failed(msg)),
            Ok(Ok((status, stdout, stderr, cut, n))) => {
                truncated |= cut;
                streamed += n;
                Ok(ExecOutput {
                    exit_code: status.code(),
                    stdout,
                    stderr,
                    truncated,
                    streamed_bytes: streamed,
                })
            }
        }
    }
}

/// Kills a child's process group when dropped, unless disarmed (set to `None`) once the child
/// was reaped.
struct GroupKiller(Option<u32>);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill has no memory-safety preconditions; the group id is the pid of our
            // own, not yet reaped child (it was started as a group leader), so it cannot name
            // an unrelated process group.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

/// Read `r` to its end, keeping at most `cap` bytes; the flag says whether anything was cut.
async fn capture(r: Option<impl AsyncRead + Unpin>, cap: usize) -> (Vec<u8>, bool) {
    let Some(mut r) = r else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut cut = false;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                cut |= n > room;
            }
        }
    }
    (kept, cut)
}

/// Copy `r` into `w` until either ends; returns the bytes copied. A child closing its stdin
/// early ends the copy quietly (its exit status tells); a failing source is an error, so a
/// restore never mistakes a cut-off stream for the whole backup.
async fn copy_counting(
    r: &mut (impl AsyncRead + Unpin + ?Sized),
    w: &mut (impl AsyncWrite + Unpin),
) -> Result<u64, String> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(format!("reading the source: {e}")),
        };
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
        total += n as u64;
    }
    let _ = w.shutdown().await;
    Ok(total)
}
