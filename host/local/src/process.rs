//! Engine processes on this machine: start one detached (its own session, so a dying or
//! restarting host does not take it along), identify it by pid *and* kernel start time so a
//! recycled pid is never mistaken for it, check whether it still runs, stop it gracefully then
//! forcefully, and run one-shot commands (initdb) to completion.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::users::RunAs;
use crate::LocalError;

/// What to start.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// Absolute path of the program.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Extra environment; the process otherwise gets `PATH`, `LANG=C.UTF-8` and `HOME` only.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// File stdout and stderr are appended to.
    pub log: PathBuf,
    /// User to run as; `None` keeps the host's own.
    pub run_as: Option<RunAs>,
}

/// A started process, identified by pid and kernel start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    pub start_time: u64,
}

/// Most open files an engine process gets (when the kernel's `fs.nr_open` allows it).
pub const ENGINE_OPEN_FILES: u64 = 1 << 20;

/// The open-files limit engine processes get: [`ENGINE_OPEN_FILES`], or the kernel's
/// per-process maximum (`fs.nr_open`) when that is lower.
pub fn engine_open_files() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map_or(ENGINE_OPEN_FILES, |n| n.min(ENGINE_OPEN_FILES))
}

/// Raise this process's own open-files limit as far as the machine allows (to
/// [`engine_open_files`] when it may raise the hard limit, else its soft limit to its hard
/// one) and return the limit engine processes it starts will get.
pub fn raise_open_files() -> u64 {
    let want = engine_open_files();
    let target = libc::rlimit {
        rlim_cur: want,
        rlim_max: want,
    };
    // SAFETY: setrlimit and getrlimit take plain structs.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &target) == 0 {
            return want;
        }
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) != 0 {
            return 1024;
        }
        now.rlim_cur = now.rlim_max.min(want);
        libc::setrlimit(libc::RLIMIT_NOFILE, &now);
        now.rlim_cur
    }
}

impl ProcessSpec {
    fn command(&self) -> Result<Command, LocalError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| LocalError::io(format!("opening log {}", self.log.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| LocalError::io(format!("opening log {}", self.log.display()), e))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("HOME", &self.cwd)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        // Databases keep many files open; they get as many as the kernel allows a process,
        // up to ENGINE_OPEN_FILES (raising the hard limit needs root; otherwise the soft
        // limit rises to the hard one). Before the user changes: root may raise it.
        let nofile = engine_open_files();
        // SAFETY: getrlimit and setrlimit are async-signal-safe and take plain values.
        unsafe {
            cmd.pre_exec(move || {
                let want = libc::rlimit {
                    rlim_cur: nofile,
                    rlim_max: nofile,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                    let mut now = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) == 0 {
                        now.rlim_cur = now.rlim_max.min(nofile);
                        libc::setrlimit(libc::RLIMIT_NOFILE, &now);
                    }
                }
                Ok(())
            });
        }
        if let Some(user) = self.run_as {
            let (uid, gid) = (user.uid, user.gid);
            // Drop supplementary groups too (std's uid/gid would keep root's), then the group,
            // then the user.
            // SAFETY: setgroups, setgid and setuid are async-signal-safe and take plain values.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setgroups(1, &gid) == -1
                        || libc::setgid(gid) == -1
                        || libc::setuid(uid) == -1
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        Ok(cmd)
    }

    /// Start the program detached in its own session and return its identity.
    pub fn spawn(&self) -> Result<ProcessId, LocalError> {
        let mut cmd = self.command()?;
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| LocalError::io(format!("starting {}", self.program.display()), e))?;
        let pid = child.id();
        // The Child handle is dropped without waiting: the process lives on, and `is_running`
        // reaps it once it exits (while this host runs).
        drop(child);
        let start_time = start_time(pid).ok_or_else(|| {
            LocalError::Start(format!("{} exited at once", self.program.display()))
        })?;
        Ok(ProcessId { pid, start_time })
    }

    /// Run the program to completion, up to `timeout`; fails with the tail of its log when it
    /// exits non-zero.
    pub async fn run(&self, timeout: Duration) -> Result<(), LocalError> {
        let cmd = self.command()?;
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| LocalError::io(format!("starting {}", self.program.display()), e))?;
        let status = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(s) => {
                s.map_err(|e| LocalError::io(format!("waiting for {}", self.program.display()), e))?
            }
            Err(_) => {
                return Err(LocalError::Start(format!(
                    "{} did not finish within {timeout:?}",
                    self.program.display()
                )))
            }
        };
        if status.success() {
            Ok(())
        } else {
            Err(LocalError::Start(format!(
                "{} {} failed ({status}): {}",
                self.program.display(),
                self.args.join(" "),
                log_tail(&self.log, 1500)
            )))
        }
    }
}

/// The last `max` bytes of a log file, trimmed to whole lines.
pub fn log_tail(path: &Path, max: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(max);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let text = if start > 0 {
        text.split_once('\n')
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_default()
    } else {
        text.into_owned()
    };
    text.trim().to_string()
}

/// Kernel start time of `pid` (field 22 of /proc/PID/stat), if it exists and is not a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19 here.
    let state = *fields.first()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl ProcessId {
    /// Whether this very process still runs. Reaps it if it was our child and has exited.
    pub fn is_running(&self) -> bool {
        let alive = start_time(self.pid) == Some(self.start_time);
        if !alive {
            reap(self.pid);
        }
        alive
    }

    /// Send `signal`, then wait up to `grace` for the process to exit; then SIGKILL its process
    /// group and wait for that. Returns whether it had to be killed.
    pub async fn stop(&self, signal: i32, grace: Duration) -> bool {
        if !self.is_running() {
            return false;
        }
        self.signal(signal);
        if self.wait_exit(grace).await {
            return false;
        }
        tracing::warn!(pid = self.pid, "did not stop within {grace:?}; killing it");
        if let Ok(pid) = i32::try_from(self.pid) {
            // SAFETY: kill has no memory-safety preconditions; the identity was checked above
            // and the process leads its own session (and so its own group).
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        self.wait_exit(Duration::from_secs(10)).await;
        true
    }

    /// Send `signal` if this process still runs.
    pub fn signal(&self, signal: i32) {
        if self.is_running() {
            if let Ok(pid) = i32::try_from(self.pid) {
                // SAFETY: as in `stop`.
                unsafe {
                    libc::kill(pid, signal);
                }
            }
        }
    }

    /// Resolve when the process exits: at once through a pidfd (Linux 5.3+), which works
    /// for processes a previous host started too; by polling every 100 ms where pidfds are
    /// unavailable.
    pub async fn exited(&self) {
        if let Some(fd) = self.pidfd() {
            // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it (open, unchanged)
            // until it is dropped.
            if let Ok(afd) = unsafe { tokio::io::unix::AsyncFd::register(fd) } {
                // Opened, then identity re-checked: the fd is this very process.
                if self.is_running() {
                    let _ = afd.readable().await;
                }
                return;
            }
        }
        while self.is_running() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pidfd(&self) -> Option<std::os::fd::OwnedFd> {
        use std::os::fd::FromRawFd;
        let pid = libc::pid_t::try_from(self.pid).ok()?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the kernel just gave us this descriptor; nobody else owns it.
        Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Wait up to `limit` for the process to exit; whether it did.
    pub async fn wait_exit(&self, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < until {
            if !self.is_running() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        !self.is_running()
    }
}

/// Kernel start time of `pid` whatever its state (a zombie included): whether that pid
/// still exists at all, as the kernel sees it.
fn start_time_any(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl ProcessId {
    /// Wait up to `limit` until this process and the rest of its process group are gone from
    /// the kernel — not only exited: a killed process whose parent is not this host (one
    /// started by an earlier `shoal serve`, re-parented to PID 1) lingers as a zombie until
    /// init reaps it, and meanwhile its pid still "exists" for anyone who checks (a lock file
    /// check, PostgreSQL's postmaster.pid). Nothing may touch its data directory before.
    /// Returns whether it is gone.
    pub async fn wait_gone(&self, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        loop {
            // Reaps it if it is this host's own child.
            let _ = self.is_running();
            let leader = start_time_any(self.pid) == Some(self.start_time);
            let group = processes().any(|p| p.pgrp == self.pid && p.start >= self.start_time);
            if !leader && !group {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kill what a dead server left behind in its process group (its workers), so a restart
    /// does not trip over them. Only processes of this group started no earlier than the
    /// leader are touched, so a recycled group id can never take an unrelated process along.
    /// Returns how many were killed.
    pub fn kill_leftovers(&self) -> usize {
        let mut killed = 0;
        for p in processes() {
            if p.pgrp == self.pid && p.start >= self.start_time && p.pid != self.pid {
                kill(p.pid);
                killed += 1;
            }
        }
        killed
    }

    /// SIGKILL this process and every descendant (servers like PostgreSQL put their workers
    /// in sessions of their own, so the process group does not hold them all). Descendants
    /// are found before the leader dies (after that they are re-parented). Only processes
    /// started no earlier than the leader are touched. Returns how many were killed.
    pub fn kill_tree(&self) -> usize {
        if !self.is_running() {
            return 0;
        }
        let parent_of: Vec<(u32, u32)> = processes()
            .filter(|p| p.start >= self.start_time)
            .map(|p| (p.pid, p.ppid))
            .collect();
        let mut tree = vec![self.pid];
        let mut i = 0;
        while i < tree.len() {
            let p = tree[i];
            tree.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
            i += 1;
        }
        for pid in &tree {
            kill(*pid);
        }
        tree.len()
    }
}

/// SIGKILL `pid`.
fn kill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// What /proc/PID/stat says about one process.
struct ProcStat {
    pid: u32,
    ppid: u32,
    pgrp: u32,
    start: u64,
}

/// Every process on the machine that could be read (fields 4, 5 and 22 of /proc/PID/stat).
fn processes() -> impl Iterator<Item = ProcStat> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(ProcStat {
                pid,
                ppid: fields.get(1)?.parse().ok()?,
                pgrp: fields.get(2)?.parse().ok()?,
                start: fields.get(19)?.parse().ok()?,
            })
        })
}

/// Collect the exit status of `pid` if it is our exited child; harmless otherwise.
fn reap(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG writes only to `status`.
        unsafe {
            libc::waitpid(pid, &mut status, libc::WNOHANG);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawn_identify_stop() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ProcessSpec {
            program: PathBuf::from("/bin/sleep"),
            args: vec!["30".into()],
            env: vec![],
            cwd: dir.path().to_path_buf(),
            log: dir.path().join("log"),
            run_as: None,
        };
        let id = spec.spawn().unwrap();
        assert!(id.is_running());
        let impostor = ProcessId {
            pid: id.pid,
            start_time: id.start_time + 1,
        };
        assert!(!impostor.is_running(), "same pid, other start time");
        assert!(!id.stop(libc::SIGTERM, Duration::from_secs(5)).await);
        assert!(!id.is_running());
    }

    #[tokio::test]
    async fn exit_is_noticed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ProcessSpec {
            program: "/bin/sleep".into(),
            args: vec!["30".into()],
            env: vec![],
            cwd: dir.path().into(),
            log: dir.path().join("log"),
            run_as: None,
        };
        let p = spec.spawn().unwrap();
        let watcher = tokio::spawn(async move { p.exited().await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!watcher.is_finished());
        p.signal(libc::SIGKILL);
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("the exit was not noticed")
            .unwrap();
        assert!(!p.is_running());
    }

    #[tokio::test]
    async fn kill_tree_takes_descendants_in_other_sessions_along() {
        let dir = tempfile::tempdir().unwrap();
        // The child starts its own session, as PostgreSQL's workers do.
        let spec = ProcessSpec {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "setsid sleep 30 & echo $! > child; wait".into(),
            ],
            env: vec![],
            cwd: dir.path().into(),
            log: dir.path().join("log"),
            run_as: None,
        };
        let p = spec.spawn().unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(5);
        let child: u32 = loop {
            if let Some(c) = std::fs::read_to_string(dir.path().join("child"))
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break c;
            }
            assert!(std::time::Instant::now() < until, "no child");
            std::thread::sleep(Duration::from_millis(20));
        };
        let child = ProcessId {
            pid: child,
            start_time: start_time(child).unwrap(),
        };
        assert!(p.kill_tree() >= 2);
        assert!(p.wait_exit(Duration::from_secs(5)).await);
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while child.is_running() {
            assert!(std::time::Instant::now() < until, "the descendant survived");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ProcessSpec {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), "echo boom >&2; exit 3".into()],
            env: vec![],
            cwd: dir.path().to_path_buf(),
            log: dir.path().join("log"),
            run_as: None,
        };
        let err = spec.run(Duration::from_secs(5)).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("boom") && msg.contains("exit status: 3"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn leftovers_of_a_dead_leader_are_killed() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ProcessSpec {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), "sleep 31.4159 & exec sleep 30".into()],
            env: vec![],
            cwd: dir.path().to_path_buf(),
            log: dir.path().join("log"),
            run_as: None,
        };
        let id = spec.spawn().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The leader dies alone (as a crashed server would); its worker lives on.
        unsafe {
            libc::kill(id.pid as i32, libc::SIGKILL);
        }
        assert!(id.wait_exit(Duration::from_secs(5)).await);
        assert_eq!(id.kill_leftovers(), 1);
    }

    #[test]
    fn start_time_parses_names_with_parentheses() {
        assert!(start_time(std::process::id()).is_some());
        assert!(start_time(u32::MAX - 1).is_none());
    }
}
