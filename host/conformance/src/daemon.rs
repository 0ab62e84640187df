//! The kit's own Shoal host: a private home in a temporary directory holding only the addon
//! under test, a `shoal serve` started on it (the same program, as a child), API calls to it
//! with deadlines, and, when dropped, every cluster deleted, the daemon and the endpoint
//! process stopped and the home removed (unless kept for a post-mortem).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use shoal_api::{Client, OpState, OpView, Request};

use crate::KitError;

/// A running `shoal serve` on a home of its own.
pub struct Daemon {
    home: tempfile::TempDir,
    serve: Option<Child>,
    keep: bool,
}

impl Daemon {
    /// Start `shoal_exe serve` on a new home with `addon`, the port range `ports` and the
    /// rest of its configuration `host_config` (TOML).
    pub fn start(
        shoal_exe: &Path,
        addon: &Path,
        ports: (u16, u16),
        host_config: &str,
        keep: bool,
    ) -> Result<Daemon, KitError> {
        let io = |what: &str, e: std::io::Error| KitError::Setup(format!("{what}: {e}"));
        let home = tempfile::Builder::new()
            .prefix("shoal-addon-test-")
            .tempdir()
            .map_err(|e| io("cannot make a home", e))?;
        let addons = home.path().join("addons");
        std::fs::create_dir_all(&addons).map_err(|e| io("cannot make the addons directory", e))?;
        let name = addon
            .file_name()
            .ok_or_else(|| KitError::Setup(format!("{} has no file name", addon.display())))?;
        std::fs::copy(addon, addons.join(name))
            .map_err(|e| io(&format!("cannot copy {}", addon.display()), e))?;
        std::fs::write(
            home.path().join("config.toml"),
            format!(
                "port_range = [{}, {}]\nprobe_interval_ms = 300\n{host_config}",
                ports.0, ports.1
            ),
        )
        .map_err(|e| io("cannot write config.toml", e))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(home.path().join("serve.log"))
            .map_err(|e| io("cannot create serve.log", e))?;
        let child = Command::new(shoal_exe)
            .arg("serve")
            .env("SHOAL_HOME", home.path())
            .env_remove("SHOAL_SOCKET")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| io(&format!("cannot start {} serve", shoal_exe.display()), e))?;
        Ok(Daemon {
            home,
            serve: Some(child),
            keep,
        })
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// What the daemon wrote to its log (for a failure's detail).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.home.path().join("serve.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Wait until the daemon answers (it loads the addon first: a refused addon ends it).
    pub async fn ready(&mut self, within: Duration) -> Result<(), KitError> {
        let until = Instant::now() + within;
        loop {
            if self.call::<serde_json::Value>(&Request::Ping).await.is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.serve.as_mut().map(|c| c.try_wait()) {
                return Err(KitError::Setup(format!(
                    "shoal serve exited ({status}):\n{}",
                    self.log_tail(20)
                )));
            }
            if Instant::now() >= until {
                return Err(KitError::Setup(format!(
                    "shoal serve did not answer within {within:?}:\n{}",
                    self.log_tail(20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One request, its final answer decoded as `T`.
    pub async fn call<T: DeserializeOwned>(&self, req: &Request) -> Result<T, String> {
        let mut c = Client::connect_socket(&self.home.path().join(shoal_api::SOCKET))
            .await
            .map_err(|e| e.to_string())?;
        c.call_as(req, |_| {}).await.map_err(|e| e.to_string())
    }

    /// Wait for operation `op` to end; its final view, an error when it failed.
    pub async fn wait(&self, op: &OpView, within: Duration) -> Result<OpView, String> {
        let done = tokio::time::timeout(within, self.call::<OpView>(&Request::Wait { op: op.id }))
            .await
            .map_err(|_| {
                format!(
                    "{} operation {} did not end within {within:?}",
                    op.kind, op.id
                )
            })??;
        match done.state {
            OpState::Succeeded => Ok(done),
            _ => Err(format!(
                "{} operation {} {}: {}",
                done.kind,
                done.id,
                done.state.as_str(),
                done.reason.clone().unwrap_or_default()
            )),
        }
    }

    /// Delete every cluster (with its data); errors are reported, not fatal.
    pub async fn delete_all(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let names: Vec<shoal_api::ClusterView> =
            self.call(&Request::List).await.unwrap_or_default();
        for c in names {
            let req = Request::Delete {
                name: c.name.clone(),
                purge: true,
            };
            match self.call::<OpView>(&req).await {
                Ok(op) => {
                    if let Err(e) = self.wait(&op, Duration::from_secs(120)).await {
                        problems.push(e);
                    }
                }
                Err(e) => problems.push(format!("delete {}: {e}", c.name)),
            }
        }
        problems
    }

    /// The home directory, when kept.
    pub fn kept_home(&self) -> Option<PathBuf> {
        self.keep.then(|| self.home.path().to_path_buf())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.serve.take() {
            // SIGTERM first: the daemon stops what it runs in order.
            // SAFETY: kill only sends a signal to the child we started.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        stop_endpoint_process(self.home.path());
        if self.keep {
            // Keep the directory: TempDir would remove it.
            let dir = std::mem::replace(
                &mut self.home,
                match tempfile::tempdir() {
                    Ok(d) => d,
                    Err(_) => return,
                },
            );
            let _ = dir.keep();
        }
    }
}

/// The endpoint process outlives its daemon by design; the kit's own must not.
fn stop_endpoint_process(home: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let needle = home.as_os_str().as_encoded_bytes();
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let is_endpoints = cmdline.split(|b| *b == 0).any(|a| a == b"endpoints");
        let ours = environ
            .split(|b| *b == 0)
            .any(|kv| kv.strip_prefix(b"SHOAL_HOME=") == Some(needle));
        if is_endpoints && ours {
            // SAFETY: signals a process of this kit's own home.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}
