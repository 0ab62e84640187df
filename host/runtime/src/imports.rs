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

/// The open-files limit engine processes get on this host (see [`set_engine_open_files`]);
/// 0 until the host says.
static ENGINE_OPEN_FILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Tell addons (`engine-open-files`) the open-files limit engine processes get here. The
/// process runtime measures it once at start.
pub fn set_engine_open_files(n: u64) {
    ENGINE_OPEN_FILES.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// What `engine-open-files` answers: what the host said, else this process's own limit.
fn engine_open_files() -> u64 {
    match ENGINE_OPEN_FILES.load(std::sync::atomic::Ordering::Relaxed) {
        0 => {
            let mut r = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into the struct it is given.
            if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
                r.rlim_max
            } else {
                1024
            }
        }
        n => n,
    }
}

impl Host for HostState {
    async fn engine_open_files(&mut self) -> wasmtime::Result<u64> {
        Ok(engine_open_files())
    }

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
        self.progress.report(p);
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
        if let Some(e) = &sink.failed {
            return Ok(Err(StreamError::Failed(format!(
                "the stream already failed: {e}"
            ))));
        }
        match sink.writer.write_all(&bytes).await {
            Ok(()) => {
                sink.written += bytes.len() as u64;
                Ok(Ok(()))
            }
            Err(e) => {
                sink.failed = Some(e.to_string());
                Ok(Err(stream_error(e)))
            }
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
        // A declared program the host grants for this call (its exec directories).
        let declared = self.sandbox.exec.contains_key(&program)
            || self.sandbox.exec_not_granted.contains(&program);
        let host_granted = declared
            .then(|| crate::sandbox::find_program(&program, &self.exec_dirs))
            .flatten();
        let path = match (self.sandbox.exec.get(&program), host_granted) {
            (Some(Some(path)), _) => path.clone(),
            (_, Some(path)) => path,
            (Some(None), None) => {
                return Err(ExecError::NotFound(format!(
                    "{program} is granted but no executable of that name was found in the \
                     operator's exec paths"
                )))
            }
            (None, None) => {
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

        if let Some(bad) = req.env.iter().find(|v| !env_allowed(&v.name)) {
            self.denials.record(format!(
                "exec of {program:?} with environment variable {:?}",
                bad.name
            ));
            return Err(ExecError::Denied(format!(
                "environment variable {:?} may not be set for a host program (loader, shell \
                 start-up and search-path variables are refused)",
                bad.name
            )));
        }
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
        let pid = child.id();
        let mut group = GroupKiller(pid);

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
                            Some(mut w) => match copy_counting(&mut source.reader, &mut w).await {
                                Ok(n) => {
                                    source.read += n;
                                    Ok::<u64, String>(n)
                                }
                                Err(e) => {
                                    // Kill the child while its stdin is still open: it must not
                                    // see a clean end of a cut-off stream and act on it.
                                    kill_group(pid);
                                    drop(w);
                                    Err(e)
                                }
                            },
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
                                let copied = async {
                                    let n =
                                        tokio::io::copy(&mut r, &mut sink.writer).await.map_err(
                                            |e| format!("streaming stdout into the sink: {e}"),
                                        )?;
                                    sink.writer
                                        .flush()
                                        .await
                                        .map_err(|e| format!("flushing the sink: {e}"))?;
                                    Ok::<u64, String>(n)
                                }
                                .await;
                                match copied {
                                    Ok(n) => {
                                        sink.written += n;
                                        Ok(n)
                                    }
                                    Err(e) => {
                                        sink.failed.get_or_insert_with(|| e.clone());
                                        Err(e)
                                    }
                                }
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
            // Wait for the child to exit without reaping it, so its pid (= the group id) stays
            // ours; kill whatever it left running in its group; then reap.
            if let Some(p) = pid {
                let waited = tokio::task::spawn_blocking(move || wait_exited(p)).await;
                if !matches!(waited, Ok(Ok(()))) {
                    tracing::debug!("waitid on {program} failed: {waited:?}");
                }
                kill_group(pid);
            }
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
        kill_group(self.0);
    }
}

/// SIGKILL the process group led by `pid`. Only called while `pid` is our own unreaped child
/// (started as a group leader), so the group id cannot name an unrelated group.
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// Block until child `pid` has exited, leaving it unreaped (WNOWAIT).
fn wait_exited(pid: u32) -> std::io::Result<()> {
    let id = libc::id_t::from(pid);
    loop {
        // SAFETY: siginfo is plain data, zero-initialised and written by the kernel.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a siginfo_t; P_PID with our own child's pid.
        let rc = unsafe { libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether an addon may set environment variable `name` for a host program: a plain name,
/// and not one that changes what code runs (dynamic loader, shell start-up, search paths).
fn env_allowed(name: &str) -> bool {
    const REFUSED: &[&str] = &[
        "PATH",
        "IFS",
        "ENV",
        "BASH_ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "CDPATH",
        "GCONV_PATH",
        "GETCONF_DIR",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TMPDIR",
        "TZDIR",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PERL5LIB",
        "PERL5OPT",
        "RUBYLIB",
        "RUBYOPT",
        "NODE_OPTIONS",
        "JAVA_TOOL_OPTIONS",
    ];
    !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("LD_")
        && !name.starts_with("DYLD_")
        && !name.starts_with("MALLOC_")
        && !name.starts_with("GLIBC_")
        && !REFUSED.contains(&name)
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

#[cfg(test)]
mod tests {
    use super::env_allowed;

    #[test]
    fn loader_and_shell_variables_are_refused() {
        for ok in [
            "PGPASSWORD",
            "PGCONNECT_TIMEOUT",
            "LANG",
            "MYSQL_PWD",
            "A1_B2",
        ] {
            assert!(env_allowed(ok), "{ok}");
        }
        for bad in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "PATH",
            "BASH_ENV",
            "GCONV_PATH",
            "A=B",
            "",
            "WITH SPACE",
            "NUL\0",
            "DYLD_INSERT_LIBRARIES",
            "MALLOC_CHECK_",
        ] {
            assert!(!env_allowed(bad), "{bad:?}");
        }
    }
}
