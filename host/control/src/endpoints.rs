//! The data path of the stable endpoints, out of the host's process: a small process of its
//! own (`shoal endpoints`, started detached by `shoal serve`) owns every cluster's
//! read-write and read-only listeners and relays connections ([`crate::proxy`] does the
//! relaying). The host tells it where each endpoint leads over a Unix socket
//! (`<home>/endpoints/<host>.sock`, 0600); it writes what it was told to
//! `<home>/endpoints/<host>.json` and starts from that file, so a restart or crash of the
//! control plane never interrupts the data path: connections go on, and new ones reach the
//! primary the host last named while no host runs (nobody fails over meanwhile; the host
//! reconciles the routes when it is back).
//!
//! [`Endpoints`] is the host's side: the same calls as the in-process proxy, each a line of
//! JSON answered by a line. It remembers what it last sent and sends only changes; it starts
//! the process when none answers (the new one starts from the state file).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::proxy::{Proxy, Routes};

/// A command to the endpoint process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Command {
    /// Who are you (pid), and which clusters do you serve?
    Ping,
    /// Listen on `rw` and `ro` of `host` for `cluster` (nothing when already listening).
    Ensure {
        cluster: String,
        host: String,
        rw: u16,
        ro: u16,
    },
    /// Lead `cluster`'s endpoints to these backends (cutting connections that lost theirs).
    Routes {
        cluster: String,
        rw: Option<SocketAddr>,
        ro: Vec<SocketAddr>,
    },
    /// Stop serving `cluster`.
    Remove { cluster: String },
    /// Stop serving every cluster not in `keep`.
    Retain { keep: Vec<String> },
}

/// The answer to a [`Command`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    pub pid: u32,
    #[serde(default)]
    pub clusters: Vec<String>,
}

/// What the process serves for one cluster: what it was told last.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Served {
    host: String,
    rw_port: u16,
    ro_port: u16,
    rw: Option<SocketAddr>,
    ro: Vec<SocketAddr>,
}

/// The file form of everything the process serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    clusters: BTreeMap<String, Served>,
}

/// The directory of the endpoint processes of a home.
fn dir(home: &Path) -> PathBuf {
    home.join("endpoints")
}

/// The control socket of host `id`'s endpoint process.
pub fn socket_path(home: &Path, id: &str) -> PathBuf {
    dir(home).join(format!("{}.sock", crate::config::file_safe(id)))
}

fn state_path(home: &Path, id: &str) -> PathBuf {
    dir(home).join(format!("{}.json", crate::config::file_safe(id)))
}

/// Where the endpoint process of host `id` writes its pid (and the tests find it).
pub fn pid_path(home: &Path, id: &str) -> PathBuf {
    dir(home).join(format!("{}.pid", crate::config::file_safe(id)))
}

fn log_path(home: &Path, id: &str) -> PathBuf {
    dir(home).join(format!("{}.log", crate::config::file_safe(id)))
}

// ----- the process -----

/// Run the endpoint process of host `id` on `home` until it is killed: restore what the
/// state file says, then take commands on the control socket.
pub async fn run(home: PathBuf, id: String) -> Result<(), String> {
    // SAFETY: umask only sets the process's file mode creation mask.
    unsafe {
        libc::umask(0o077);
    }
    crate::node::private_dir(&dir(&home), None)?;
    let path = socket_path(&home, &id);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(format!(
                "an endpoint process already answers on {}",
                path.display()
            ));
        }
        std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(&path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::fs::write(pid_path(&home, &id), format!("{}\n", std::process::id()))
        .map_err(|e| format!("cannot write the pid file: {e}"))?;
    let proxy = Arc::new(Proxy::default());
    let state = Arc::new(tokio::sync::Mutex::new(State::default()));
    // What an earlier process served: served again, at once.
    let saved: State = std::fs::read(state_path(&home, &id))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for (name, s) in &saved.clusters {
        match proxy.ensure(name, &s.host, s.rw_port, s.ro_port).await {
            Ok(()) => {
                proxy.set_routes(
                    name,
                    Routes {
                        rw: s.rw,
                        ro: s.ro.clone(),
                    },
                );
                state.lock().await.clusters.insert(name.clone(), s.clone());
            }
            Err(e) => tracing::warn!("endpoints of {name} not restored: {e}"),
        }
    }
    tracing::info!(
        clusters = saved.clusters.len(),
        "endpoint process ready on {}",
        path.display()
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (proxy, state, home, id) = (proxy.clone(), state.clone(), home.clone(), id.clone());
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = match serde_json::from_str::<Command>(&line) {
                    Ok(cmd) => apply(&proxy, &state, &home, &id, cmd).await,
                    Err(e) => Answer {
                        ok: false,
                        error: Some(format!("malformed command: {e}")),
                        pid: std::process::id(),
                        clusters: vec![],
                    },
                };
                let Ok(mut text) = serde_json::to_string(&answer) else {
                    return;
                };
                text.push('\n');
                if w.write_all(text.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Carry out `cmd`, keep the state file current, answer.
async fn apply(
    proxy: &Proxy,
    state: &tokio::sync::Mutex<State>,
    home: &Path,
    id: &str,
    cmd: Command,
) -> Answer {
    let mut st = state.lock().await;
    let before = st.clone();
    let result = match cmd {
        Command::Ping => Ok(()),
        Command::Ensure {
            cluster,
            host,
            rw,
            ro,
        } => {
            let same = st
                .clusters
                .get(&cluster)
                .is_some_and(|s| s.host == host && s.rw_port == rw && s.ro_port == ro);
            if !same && st.clusters.contains_key(&cluster) {
                proxy.remove(&cluster);
                st.clusters.remove(&cluster);
            }
            match proxy.ensure(&cluster, &host, rw, ro).await {
                Ok(()) => {
                    let s = st.clusters.entry(cluster).or_default();
                    s.host = host;
                    s.rw_port = rw;
                    s.ro_port = ro;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Command::Routes { cluster, rw, ro } => match st.clusters.get_mut(&cluster) {
            Some(s) => {
                proxy.set_routes(&cluster, Routes { rw, ro: ro.clone() });
                s.rw = rw;
                s.ro = ro;
                Ok(())
            }
            None => Err(format!(
                "no endpoints of {cluster} here (ensure them first)"
            )),
        },
        Command::Remove { cluster } => {
            proxy.remove(&cluster);
            st.clusters.remove(&cluster);
            Ok(())
        }
        Command::Retain { keep } => {
            let gone: Vec<String> = st
                .clusters
                .keys()
                .filter(|c| !keep.contains(c))
                .cloned()
                .collect();
            for c in gone {
                proxy.remove(&c);
                st.clusters.remove(&c);
            }
            Ok(())
        }
    };
    let saved = if *st != before {
        serde_json::to_vec_pretty(&*st)
            .map_err(|e| e.to_string())
            .and_then(|body| {
                crate::secrets::write_private_at(&state_path(home, id), &body)
                    .map_err(|e| format!("cannot save the endpoint state: {e}"))
            })
    } else {
        Ok(())
    };
    let error = result.err().or(saved.err());
    Answer {
        ok: error.is_none(),
        error,
        pid: std::process::id(),
        clusters: st.clusters.keys().cloned().collect(),
    }
}

// ----- the host's side -----

/// What the host last had the endpoint process do for one cluster.
#[derive(Debug, Clone, Default, PartialEq)]
struct Sent {
    ports: Option<(String, u16, u16)>,
    routes: Option<Routes>,
}

/// The host's handle on its endpoint process.
pub struct Endpoints {
    home: PathBuf,
    id: String,
    conn: tokio::sync::Mutex<
        Option<(
            BufReader<tokio::net::unix::OwnedReadHalf>,
            tokio::net::unix::OwnedWriteHalf,
        )>,
    >,
    /// What was sent, per cluster; forgotten whenever the connection is new.
    sent: std::sync::Mutex<BTreeMap<String, Sent>>,
    /// The clusters the process said it serves in its last answer (none yet: unknown).
    served: std::sync::Mutex<Option<std::collections::BTreeSet<String>>>,
}

impl Endpoints {
    pub fn new(home: &Path, id: &str) -> Endpoints {
        Endpoints {
            home: home.to_path_buf(),
            id: id.to_string(),
            conn: tokio::sync::Mutex::new(None),
            sent: std::sync::Mutex::new(BTreeMap::new()),
            served: std::sync::Mutex::new(None),
        }
    }

    fn sent(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Sent>> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send `cmd`, starting the endpoint process when none answers.
    async fn call(&self, cmd: &Command) -> Result<Answer, String> {
        let mut line = serde_json::to_string(cmd).map_err(|e| e.to_string())?;
        line.push('\n');
        let mut guard = self.conn.lock().await;
        for attempt in 0..2 {
            if guard.is_none() {
                let s = self.connect_or_start().await?;
                let (r, w) = s.into_split();
                *guard = Some((BufReader::new(r), w));
                // A new connection may be a new process: nothing is known to be sent.
                self.sent().clear();
            }
            let Some((r, w)) = guard.as_mut() else {
                continue;
            };
            let mut answer = String::new();
            let io = async {
                w.write_all(line.as_bytes()).await?;
                r.read_line(&mut answer).await
            };
            match tokio::time::timeout(Duration::from_secs(10), io).await {
                Ok(Ok(n)) if n > 0 => {
                    let a: Answer = serde_json::from_str(&answer).map_err(|e| {
                        format!("the endpoint process said something unreadable: {e}")
                    })?;
                    *self.served.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(a.clusters.iter().cloned().collect());
                    return Ok(a);
                }
                _ => {
                    *guard = None;
                    if attempt == 1 {
                        return Err("the endpoint process does not answer".into());
                    }
                }
            }
        }
        Err("the endpoint process does not answer".into())
    }

    /// A connection to the endpoint process; when none answers, start it (detached, in a
    /// session of its own, so that it outlives this host) and wait for it.
    async fn connect_or_start(&self) -> Result<UnixStream, String> {
        let path = socket_path(&self.home, &self.id);
        if let Ok(s) = UnixStream::connect(&path).await {
            return Ok(s);
        }
        crate::node::private_dir(&dir(&self.home), None)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path(&self.home, &self.id))
            .map_err(|e| format!("cannot open the endpoint process's log: {e}"))?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["endpoints", "--host-id", &self.id])
            .env("SHOAL_HOME", &self.home)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the endpoint process: {e}"))?;
        // Reap it if it exits early; once the host is gone it belongs to init.
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = UnixStream::connect(&path).await {
                tokio::task::spawn_blocking(move || child.wait());
                return Ok(s);
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the endpoint process exited at once ({status}); see {}",
                    log_path(&self.home, &self.id).display()
                ));
            }
            if tokio::time::Instant::now() >= until {
                return Err("the endpoint process did not come up within 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn failed(a: Answer) -> Result<(), String> {
        if a.ok {
            Ok(())
        } else {
            Err(a.error.unwrap_or_else(|| "refused".into()))
        }
    }

    /// Listen on `rw` and `ro` of `host` for `cluster`. When another host's endpoint
    /// process on this machine still holds the ports (a host that managed the cluster and is
    /// gone: its data path outlives it), it is told to let them go first.
    pub async fn ensure(&self, cluster: &str, host: &str, rw: u16, ro: u16) -> Result<(), String> {
        let want = Some((host.to_string(), rw, ro));
        if self.sent().get(cluster).is_some_and(|s| s.ports == want) {
            return Ok(());
        }
        let cmd = Command::Ensure {
            cluster: cluster.into(),
            host: host.into(),
            rw,
            ro,
        };
        let mut answer = self.call(&cmd).await?;
        if !answer.ok && self.release_elsewhere(cluster).await > 0 {
            answer = self.call(&cmd).await?;
        }
        Self::failed(answer)?;
        self.sent().entry(cluster.to_string()).or_default().ports = want;
        Ok(())
    }

    /// Tell the endpoint processes of other hosts on this machine (sharing the home) to stop
    /// serving `cluster`; how many did.
    async fn release_elsewhere(&self, cluster: &str) -> usize {
        let own = socket_path(&self.home, &self.id);
        let mut released = 0;
        for e in std::fs::read_dir(dir(&self.home))
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = e.path();
            if p == own || p.extension().is_none_or(|x| x != "sock") {
                continue;
            }
            let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(&p)).await
            else {
                continue;
            };
            let (r, mut w) = s.into_split();
            let Ok(mut line) = serde_json::to_string(&Command::Remove {
                cluster: cluster.into(),
            }) else {
                continue;
            };
            line.push('\n');
            let mut answer = String::new();
            let exchange = async {
                w.write_all(line.as_bytes()).await?;
                BufReader::new(r).read_line(&mut answer).await
            };
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), exchange).await {
                if n > 0 {
                    tracing::warn!(
                        cluster,
                        "took the stable endpoints over from the endpoint process at {}",
                        p.display()
                    );
                    released += 1;
                }
            }
        }
        released
    }

    /// Lead `cluster`'s endpoints to `routes`.
    pub async fn set_routes(&self, cluster: &str, routes: Routes) -> Result<(), String> {
        if self
            .sent()
            .get(cluster)
            .is_some_and(|s| s.routes.as_ref() == Some(&routes))
        {
            return Ok(());
        }
        Self::failed(
            self.call(&Command::Routes {
                cluster: cluster.into(),
                rw: routes.rw,
                ro: routes.ro.clone(),
            })
            .await?,
        )?;
        self.sent().entry(cluster.to_string()).or_default().routes = Some(routes);
        Ok(())
    }

    /// Stop serving `cluster`.
    pub async fn remove(&self, cluster: &str) -> Result<(), String> {
        let known_absent = self
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|s| !s.contains(cluster));
        if known_absent {
            return Ok(());
        }
        Self::failed(
            self.call(&Command::Remove {
                cluster: cluster.into(),
            })
            .await?,
        )?;
        self.sent().remove(cluster);
        Ok(())
    }

    /// Stop serving every cluster but `keep` (clusters deleted while no host ran).
    pub async fn retain(&self, keep: Vec<String>) -> Result<(), String> {
        self.sent().retain(|c, _| keep.contains(c));
        Self::failed(self.call(&Command::Retain { keep }).await?)
    }

    /// The endpoint process's pid (starting it if needed).
    pub async fn pid(&self) -> Result<u32, String> {
        Ok(self.call(&Command::Ping).await?.pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_read_as_json_lines() {
        let c = Command::Routes {
            cluster: "pg".into(),
            rw: Some("127.0.0.1:5432".parse().unwrap()),
            ro: vec![],
        };
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(
            text,
            r#"{"cmd":"routes","cluster":"pg","rw":"127.0.0.1:5432","ro":[]}"#
        );
        assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), c);
    }

    #[tokio::test]
    async fn the_state_file_carries_what_was_served_into_a_new_process() {
        let home = tempfile::tempdir().unwrap();
        let proxy = Proxy::default();
        let state = tokio::sync::Mutex::new(State::default());
        std::fs::create_dir_all(dir(home.path())).unwrap();
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (rw, ro) = (free(), free());
        let a = apply(
            &proxy,
            &state,
            home.path(),
            "h",
            Command::Ensure {
                cluster: "c".into(),
                host: "127.0.0.1".into(),
                rw,
                ro,
            },
        )
        .await;
        assert!(a.ok, "{a:?}");
        let backend: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let a = apply(
            &proxy,
            &state,
            home.path(),
            "h",
            Command::Routes {
                cluster: "c".into(),
                rw: Some(backend),
                ro: vec![],
            },
        )
        .await;
        assert!(a.ok, "{a:?}");
        let saved: State =
            serde_json::from_slice(&std::fs::read(state_path(home.path(), "h")).unwrap()).unwrap();
        assert_eq!(saved.clusters["c"].rw, Some(backend));
        assert_eq!(saved.clusters["c"].rw_port, rw);
        // Routes for a cluster it does not serve are refused, and change nothing.
        let a = apply(
            &proxy,
            &state,
            home.path(),
            "h",
            Command::Routes {
                cluster: "x".into(),
                rw: None,
                ro: vec![],
            },
        )
        .await;
        assert!(!a.ok);
        let a = apply(
            &proxy,
            &state,
            home.path(),
            "h",
            Command::Retain { keep: vec![] },
        )
        .await;
        assert!(a.ok && a.clusters.is_empty(), "{a:?}");
    }
}
