//! What the end-to-end tests share: a `shoal serve` of their own (home, port range) that
//! kills everything it started when dropped, and `psql` helpers.
#![allow(dead_code)]

pub mod etcd;

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shoal_sdk::postgres::PgConn;
use shoal_sdk::Endpoint;

use shoal_tests::wasm;

/// A `shoal serve` with its own home; kills it and everything it started when dropped.
pub struct Host {
    pub home: tempfile::TempDir,
    serve: Option<Child>,
    /// PATH of the daemon, when not the test's own.
    path: Option<String>,
    /// A failpoint for the next daemon started (`SHOAL_FAILPOINT`).
    pub failpoint: Option<String>,
    /// `--host-id` of the daemon.
    host_id: Option<String>,
}

impl Host {
    /// Start a host with the PostgreSQL addon whose instances take ports from `ports`.
    pub fn start(ports: (u16, u16)) -> Host {
        Host::start_with(ports, &["shoal_addon_postgresql.wasm"], None)
    }

    /// Start a host with the PostgreSQL addon and `extra` lines in its config.toml.
    pub fn start_configured(ports: (u16, u16), extra: &str) -> Host {
        Host::start_full(ports, &["shoal_addon_postgresql.wasm"], None, extra, None)
    }

    /// Start a host with `addons` and `extra` lines in its config.toml.
    pub fn start_with_config(ports: (u16, u16), addons: &[&str], extra: &str) -> Host {
        Host::start_full(ports, addons, None, extra, None)
    }

    /// As `start_configured`, for a daemon named `host_id` in the coordination store.
    pub fn start_as(ports: (u16, u16), extra: &str, host_id: &str) -> Host {
        Host::start_full(
            ports,
            &["shoal_addon_postgresql.wasm"],
            None,
            extra,
            Some(host_id),
        )
    }

    /// Start a host with `addons`, optionally with another `PATH`.
    pub fn start_with(ports: (u16, u16), addons: &[&str], path: Option<&str>) -> Host {
        Host::start_full(ports, addons, path, "", None)
    }

    fn start_full(
        ports: (u16, u16),
        addons: &[&str],
        path: Option<&str>,
        extra: &str,
        host_id: Option<&str>,
    ) -> Host {
        let home = tempfile::tempdir().expect("home");
        std::fs::create_dir_all(home.path().join("addons")).unwrap();
        for a in addons {
            std::fs::copy(wasm(a), home.path().join("addons").join(a)).unwrap();
        }
        std::fs::write(
            home.path().join("config.toml"),
            format!(
                "port_range = [{}, {}]\n{}{extra}\n",
                ports.0,
                ports.1,
                if extra.contains("probe_interval_ms") {
                    ""
                } else {
                    "probe_interval_ms = 300\n"
                }
            ),
        )
        .unwrap();
        let mut h = Host {
            home,
            serve: None,
            path: path.map(str::to_string),
            failpoint: None,
            host_id: host_id.map(str::to_string),
        };
        h.spawn_serve();
        h
    }

    pub fn spawn_serve(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
        if let Some(p) = &self.path {
            cmd.env("PATH", p);
        }
        if let Some(f) = &self.failpoint {
            cmd.env("SHOAL_FAILPOINT", f);
        }
        if let Some(id) = &self.host_id {
            cmd.args(["serve", "--host-id", id]);
        } else {
            cmd.arg("serve");
        }
        // The daemon's own output goes to `<home>/serve.log` (appended across restarts), so
        // a daemon that does not come up says why. Private to its owner, like every file
        // in the home (the isolation test checks that).
        let log_path = self.home.path().join("serve.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .expect("open serve.log");
        let child = cmd
            .env("SHOAL_HOME", self.home.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start shoal serve");
        self.serve = Some(child);
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < Duration::from_secs(60) {
            let o = self.shoal(&["cluster", "engines"]);
            if o.status.success() {
                return;
            }
            last = Some(o);
            if let Some(Ok(Some(status))) = self.serve.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "shoal serve exited ({status}) instead of coming up; its log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "shoal serve did not come up in {:?}; last answer: {}; its log:\n{}",
            started.elapsed(),
            last.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default(),
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    /// Process id of the daemon.
    pub fn serve_pid(&self) -> u32 {
        self.serve.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL the daemon (its instances keep running).
    pub fn kill_serve(&mut self) {
        if let Some(mut c) = self.serve.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn shoal(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(args)
            .env("SHOAL_HOME", self.home.path())
            .output()
            .expect("run shoal")
    }

    /// Run and require success.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.shoal(args);
        assert!(
            o.status.success(),
            "shoal {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The platform account's password of cluster `name`, from the host's secrets (the
    /// tests run as the host's user): what the hooks use, never handed to users.
    pub fn platform_password(&self, name: &str) -> String {
        let path = self
            .home
            .path()
            .join("secrets")
            .join(format!("{name}.json"));
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("secrets")).expect("json");
        v["platform"]["password"]
            .as_str()
            .expect("a platform account")
            .to_string()
    }

    pub fn describe(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["cluster", "describe", name, "-o", "json"])).expect("json")
    }

    pub fn uri(&self, name: &str) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["cluster", "connect", name, "-o", "json"])).unwrap();
        v["uri"].as_str().unwrap().to_string()
    }

    /// Wait until every instance of `name` is running and healthy.
    pub fn wait_healthy(&self, name: &str) -> serde_json::Value {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let d = self.describe(name);
            let all = d["instances"].as_array().unwrap();
            if all
                .iter()
                .all(|i| i["state"] == "running" && i["health"] == "healthy")
            {
                return d;
            }
            assert!(Instant::now() < until, "not healthy: {d:#}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let clusters = self.home.path().join("clusters");
        for c in std::fs::read_dir(clusters).into_iter().flatten().flatten() {
            for i in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
                if let Ok(t) = std::fs::read_to_string(i.path().join("server.pid")) {
                    if let Some(p) = t.split_whitespace().next().and_then(|p| p.parse().ok()) {
                        out.push(p);
                    }
                }
            }
        }
        out
    }
}

/// A second `shoal serve` on a host's home (with etcd as the coordination store), listening
/// on its own socket; killed when dropped.
pub struct Peer {
    serve: Child,
    pub socket: std::path::PathBuf,
    home: std::path::PathBuf,
}

impl Host {
    /// Start a second daemon named `host_id` on this home; returns once it answers.
    pub fn spawn_peer(&self, host_id: &str) -> Peer {
        let serve = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["serve", "--host-id", host_id])
            .env("SHOAL_HOME", self.home.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the second shoal serve");
        let p = Peer {
            serve,
            socket: self
                .home
                .path()
                .join("hosts")
                .join(format!("{host_id}.sock")),
            home: self.home.path().to_path_buf(),
        };
        let until = Instant::now() + Duration::from_secs(30);
        while !p.shoal(&["cluster", "engines"]).status.success() {
            assert!(
                Instant::now() < until,
                "the second shoal serve did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }
}

impl Peer {
    /// Run `shoal` against this daemon's own socket.
    pub fn shoal(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(args)
            .env("SHOAL_HOME", &self.home)
            .env("SHOAL_SOCKET", &self.socket)
            .output()
            .expect("run shoal")
    }

    pub fn describe(&self, name: &str) -> serde_json::Value {
        let o = self.shoal(&["cluster", "describe", name, "-o", "json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).expect("json")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.serve.kill();
        let _ = self.serve.wait();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill_serve();
        for pid in self.pids() {
            // Engines lead their own process groups.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
        for pid in endpoint_pids(self.home.path()) {
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        remove_cluster_users(self.home.path());
    }
}

/// The endpoint processes of `home` (every host's), by their pid files.
pub fn endpoint_pids(home: &Path) -> Vec<u32> {
    std::fs::read_dir(home.join("endpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| t.trim().parse().ok())
        .collect()
}

/// The OS users of the clusters of `home` (`shoal-<6 hex of the home>-<uid>`).
pub fn cluster_users(home: &Path) -> Vec<String> {
    use sha2::Digest;
    let prefix = format!(
        "shoal-{}-",
        &hex::encode(sha2::Sha256::digest(home.as_os_str().as_encoded_bytes()))[..6]
    );
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').next())
        .filter(|u| u.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Remove the OS users the host made for `home`'s clusters (once their processes are gone).
pub fn remove_cluster_users(home: &Path) {
    for user in cluster_users(home) {
        for _ in 0..50 {
            let ok = Command::new("userdel")
                .arg(&user)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            // Its processes are still exiting.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

pub fn psql(uri: &str, sql: &str) -> Result<String, String> {
    let o = Command::new("psql")
        .args([uri, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "3")
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
    }
}

pub fn instance_uri(primary_uri: &str, port: u64) -> String {
    let (head, tail) = primary_uri.rsplit_once(':').unwrap();
    let db = tail.split_once('/').map(|(_, d)| d).unwrap_or("postgres");
    format!("{head}:{port}/{db}")
}

pub fn ports(d: &serde_json::Value) -> Vec<(String, u64, String)> {
    d["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["ports"]["client"].as_u64().unwrap(),
                i["role"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Read `sql` on `uri` until it returns `want` (replication is asynchronous).
/// Wait until `f` holds, polling every 50 ms; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn eventually(uri: &str, sql: &str, want: &str) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if psql(uri, sql).as_deref() == Ok(want) {
            return;
        }
        assert!(
            Instant::now() < until,
            "{uri}: {sql} never returned {want}: {:?}",
            psql(uri, sql)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One client session of a [`Writer`]: commits value n and returns the server port that
/// acknowledged it (0 when the engine cannot tell).
pub type Commit = Box<dyn FnMut(u64) -> Result<u16, String> + Send>;

/// A client committing n = 1, 2, … as fast as it can, reconnecting after errors; records
/// every acknowledged n with its time. `Writer::start` writes `INSERT INTO w VALUES (n)` to
/// PostgreSQL; `Writer::redis` writes `SET w:n 1`.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(u64, Instant)>>>,
    /// The server port that acknowledged each commit, in the same order.
    servers: Arc<Mutex<Vec<u16>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn start(port: u16, password: &str) -> Writer {
        Writer::start_at(port, password, 1)
    }

    /// A PostgreSQL writer whose first value is `first` (several writers on one table must
    /// not collide).
    pub fn start_at(port: u16, password: &str, first: u64) -> Writer {
        let pw = password.to_string();
        Writer::start_with(first, move || {
            let ep = Endpoint {
                host: "127.0.0.1".into(),
                port,
            };
            let mut c = PgConn::connect(
                &ep,
                "postgres",
                Some(&pw),
                "postgres",
                Duration::from_secs(2),
            )
            .map_err(|e| e.to_string())?;
            Ok(Box::new(move |n: u64| -> Result<u16, String> {
                let rows = c
                    .query(&format!(
                        "INSERT INTO w VALUES ({n}) RETURNING inet_server_port()"
                    ))
                    .map_err(|e| e.to_string())?;
                Ok(rows
                    .first()
                    .and_then(|r| r.get(0))
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0))
            }) as Commit)
        })
    }

    /// A Redis writer: `SET w:n 1` through `port` as the `default` user.
    pub fn redis(port: u16, password: &str) -> Writer {
        Writer::redis_at(port, password, 1)
    }

    /// A Redis writer whose first value is `first`.
    pub fn redis_at(port: u16, password: &str, first: u64) -> Writer {
        let pw = password.to_string();
        Writer::start_with(first, move || {
            let mut c = RespConn::connect(port, &pw)?;
            // Which server the endpoint led to (users' accounts have no CONFIG).
            let info = c.call(&["INFO", "server"])?.join("");
            let server: u16 = info
                .lines()
                .find_map(|l| l.trim().strip_prefix("tcp_port:"))
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            Ok(Box::new(move |n: u64| -> Result<u16, String> {
                c.call(&["SET", &format!("w:{n}"), "1"])?;
                Ok(server)
            }) as Commit)
        })
    }

    /// A writer whose sessions come from `connect`.
    pub fn start_with(
        first: u64,
        mut connect: impl FnMut() -> Result<Commit, String> + Send + 'static,
    ) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let servers = Arc::new(Mutex::new(Vec::new()));
        let (s, a, sp) = (stop.clone(), acked.clone(), servers.clone());
        let thread = std::thread::spawn(move || {
            let mut session: Option<Commit> = None;
            let mut n = first - 1;
            while !s.load(Ordering::Relaxed) {
                let commit = match session.as_mut() {
                    Some(c) => c,
                    None => match connect() {
                        Ok(c) => session.insert(c),
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    },
                };
                n += 1;
                match commit(n) {
                    Ok(port) => {
                        a.lock().unwrap().push((n, Instant::now()));
                        sp.lock().unwrap().push(port);
                    }
                    Err(_) => session = None,
                }
            }
        });
        Writer {
            stop,
            acked,
            servers,
            thread: Some(thread),
        }
    }

    pub fn acked(&self) -> Vec<(u64, Instant)> {
        self.acked.lock().unwrap().clone()
    }

    /// The server port that acknowledged each commit so far.
    pub fn servers(&self) -> Vec<u16> {
        self.servers.lock().unwrap().clone()
    }

    /// Stop; returns every acknowledged (n, time).
    pub fn finish(self) -> Vec<(u64, Instant)> {
        self.finish_with_servers().0
    }

    /// Stop; returns every acknowledged (n, time) and the server port that acknowledged it.
    pub fn finish_with_servers(mut self) -> (Vec<(u64, Instant)>, Vec<u16>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let servers = self.servers.lock().unwrap().clone();
        (self.acked(), servers)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub fn password(h: &Host, name: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&h.ok(&["cluster", "connect", name, "-o", "json"])).unwrap();
    v["password"].as_str().unwrap().to_string()
}

pub fn rw_port(d: &serde_json::Value) -> u16 {
    d["read_write"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap()
}

pub fn primary_of(d: &serde_json::Value) -> (String, u32, u64) {
    let p = d["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["role"] == "primary")
        .expect("a primary");
    (
        p["name"].as_str().unwrap().to_string(),
        p["pid"].as_u64().unwrap() as u32,
        p["ports"]["client"].as_u64().unwrap(),
    )
}

/// Acknowledged commits missing on the current primary.
pub fn lost(h: &Host, name: &str, acked: &[(u64, Instant)]) -> Vec<u64> {
    let rows = psql(&h.uri(name), "SELECT n FROM w").unwrap();
    let present: std::collections::HashSet<u64> =
        rows.lines().filter_map(|l| l.parse().ok()).collect();
    acked
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !present.contains(n))
        .collect()
}

/// Acknowledged `SET w:n` writes of a [`Writer::redis`] missing on Redis at `port`.
pub fn lost_redis(port: u16, password: &str, acked: &[(u64, Instant)]) -> Vec<u64> {
    let mut c = RespConn::connect(port, password).unwrap();
    let present: std::collections::HashSet<u64> = c
        .call(&["KEYS", "w:*"])
        .unwrap()
        .iter()
        .filter_map(|k| k.strip_prefix("w:")?.parse().ok())
        .collect();
    acked
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !present.contains(n))
        .collect()
}

/// A minimal RESP2 client for tests and benches (the addon's own client lives in the guest).
pub struct RespConn {
    reader: std::io::BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
}

impl RespConn {
    /// Connect to 127.0.0.1:`port` and `AUTH default password`.
    pub fn connect(port: u16, password: &str) -> Result<RespConn, String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut c = RespConn {
            reader: std::io::BufReader::new(stream),
            writer,
        };
        c.call(&["AUTH", "default", password])?;
        Ok(c)
    }

    /// Send one command; the reply flattened to strings (an error reply is `Err`).
    pub fn call(&mut self, args: &[&str]) -> Result<Vec<String>, String> {
        use std::io::Write as _;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.writer
            .write_all(req.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        self.read(&mut out)?;
        Ok(out)
    }

    fn line(&mut self) -> Result<String, String> {
        use std::io::BufRead as _;
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) => Err("connection closed".into()),
            Ok(_) => Ok(l.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn read(&mut self, out: &mut Vec<String>) -> Result<(), String> {
        use std::io::Read as _;
        let l = self.line()?;
        let (kind, rest) = l.split_at(l.len().min(1));
        match kind {
            "+" | ":" => out.push(rest.to_string()),
            "-" => return Err(rest.to_string()),
            "$" => {
                let n: i64 = rest.parse().map_err(|_| format!("bad reply {l:?}"))?;
                if n >= 0 {
                    let mut buf = vec![0; n as usize + 2];
                    self.reader
                        .read_exact(&mut buf)
                        .map_err(|e| e.to_string())?;
                    buf.truncate(n as usize);
                    out.push(String::from_utf8_lossy(&buf).into_owned());
                }
            }
            "*" => {
                let n: i64 = rest.parse().map_err(|_| format!("bad reply {l:?}"))?;
                for _ in 0..n.max(0) {
                    self.read(out)?;
                }
            }
            _ => return Err(format!("bad reply {l:?}")),
        }
        Ok(())
    }
}

/// Longest gap between consecutive acknowledged commits.
pub fn longest_gap(acked: &[(u64, Instant)]) -> Duration {
    acked
        .windows(2)
        .map(|p| p[1].1 - p[0].1)
        .max()
        .unwrap_or_default()
}

/// Create `name` from a spec with `ha` lines (indented YAML under `ha:`), wait until it is
/// healthy, and create the writer's table `w`.
pub fn create_cluster(h: &Host, name: &str, replicas: u32, ha: &str) -> serde_json::Value {
    let spec = h.home.path().join(format!("{name}.yaml"));
    std::fs::write(
        &spec,
        format!("name: {name}\nengine: postgresql\nreplicas: {replicas}\nha:\n{ha}\n"),
    )
    .unwrap();
    h.ok(&["cluster", "create", "-f", spec.to_str().unwrap()]);
    let d = h.wait_healthy(name);
    psql(&h.uri(name), "CREATE TABLE w (n bigint PRIMARY KEY)").unwrap();
    d
}

/// `pid` and its children (PostgreSQL's workers).
pub fn server_processes(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if rest.split_whitespace().nth(1) == Some(&pid.to_string()) {
            out.push(p);
        }
    }
    out
}

/// Move the calling thread, and every thread and process it starts afterwards, into a new
/// network namespace of its own with loopback up, so that firewall rules the test adds touch
/// nothing else on the machine; the namespace ends with the test's last process. Needs root.
pub fn private_network() {
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        r,
        0,
        "unshare(CLONE_NEWNET) failed (this test needs root): {}",
        std::io::Error::last_os_error()
    );
    let o = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .output()
        .expect("run ip (apt-get install iproute2)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Drop (`-A`) or stop dropping (`-D`) every TCP packet to or from local `port`: the server
/// there is cut off from everyone — the host's probes, its replicas, the proxy.
pub fn partition(op: &str, port: u64) {
    for dir in ["--dport", "--sport"] {
        let o = Command::new("iptables")
            .args([
                op,
                "INPUT",
                "-p",
                "tcp",
                dir,
                &port.to_string(),
                "-j",
                "DROP",
            ])
            .output()
            .expect("run iptables (apt-get install iptables)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

/// Move the calling thread, and every process it starts afterwards, into a mount namespace
/// of its own (mounts made there are private: nothing else on the machine sees them, and they
/// end with the test's last process). Needs root.
pub fn private_mounts() {
    let r = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    assert_eq!(
        r,
        0,
        "unshare(CLONE_NEWNS) failed (this test needs root): {}",
        std::io::Error::last_os_error()
    );
    let o = Command::new("mount")
        .args(["--make-rprivate", "/"])
        .output()
        .expect("run mount");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Mount a tmpfs of `size` ("1m") on `dir`: a disk that fills up. Call [`private_mounts`]
/// first.
pub fn small_disk(dir: &std::path::Path, size: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let o = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .expect("run mount");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `shoal args -o json`, parsed.
pub fn json(h: &Host, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&h.ok(&a)).expect("json")
}

/// `shoal args` is refused as bad input (exit code 2) with a message containing `want`.
pub fn refused(h: &Host, args: &[&str], want: &str) {
    let o = h.shoal(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(want), "{args:?}: {err}");
}

/// Create PostgreSQL cluster `name` with `replicas` instances (and `extra` flags) and wait
/// until it is healthy; returns its description.
pub fn create_pg(h: &Host, name: &str, replicas: u32, extra: &[&str]) -> serde_json::Value {
    let n = replicas.to_string();
    let mut args = vec![
        "cluster",
        "create",
        name,
        "--engine",
        "postgresql",
        "--replicas",
        &n,
    ];
    args.extend(extra);
    h.ok(&args);
    h.wait_healthy(name)
}

/// Start a host with the Redis addon whose instances take ports from `ports`.
pub fn start_redis_host(ports: (u16, u16)) -> Host {
    Host::start_with(ports, &["shoal_addon_redis.wasm"], None)
}

/// Run `redis-cli` against 127.0.0.1:`port` as the default user with `password`; its output
/// (trimmed) or its error. Redis reports command errors on stdout with exit code 0, so a
/// reply starting with an error word is an error too.
pub fn redis_cli(port: u64, password: &str, args: &[&str]) -> Result<String, String> {
    redis_cli_as(port, "default", password, args)
}

/// [`redis_cli`] as `user`.
pub fn redis_cli_as(
    port: u64,
    user: &str,
    password: &str,
    args: &[&str],
) -> Result<String, String> {
    let o = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--user", user])
        .arg("--no-auth-warning")
        .args(args)
        .env("REDISCLI_AUTH", password)
        .output()
        .map_err(|e| format!("run redis-cli (apt-get install redis-tools): {e}"))?;
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let first = out.split_whitespace().next().unwrap_or("");
    let is_error = [
        "ERR",
        "WRONGPASS",
        "NOAUTH",
        "READONLY",
        "NOPERM",
        "NOREPLICAS",
        "LOADING",
    ]
    .contains(&first)
        || out.starts_with("(error)");
    if o.status.success() && !is_error {
        Ok(out)
    } else {
        Err(format!(
            "{out}{}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// Ask `redis-cli` on `port` until it answers `want` (replication is asynchronous).
pub fn redis_eventually(port: u64, password: &str, args: &[&str], want: &str) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let got = redis_cli(port, password, args);
        if got.as_deref() == Ok(want) {
            return;
        }
        assert!(
            Instant::now() < until,
            "127.0.0.1:{port}: redis-cli {args:?} never returned {want:?}: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Create Redis cluster `name` with `replicas` instances (and `extra` flags) and wait until
/// it is healthy; returns its description.
pub fn create_redis(h: &Host, name: &str, replicas: u32, extra: &[&str]) -> serde_json::Value {
    let n = replicas.to_string();
    let mut args = vec![
        "cluster",
        "create",
        name,
        "--engine",
        "redis",
        "--replicas",
        &n,
    ];
    args.extend(extra);
    h.ok(&args);
    h.wait_healthy(name)
}

/// Start a host with the MariaDB addon whose instances take ports from `ports`.
pub fn start_mariadb_host(ports: (u16, u16)) -> Host {
    Host::start_with(ports, &["shoal_addon_mysql.wasm"], None)
}

/// A MariaDB session on 127.0.0.1:`port` as `root` with `password` (the SDK's client, run
/// natively).
pub fn mariadb(port: u64, password: &str) -> Result<shoal_sdk::mysql::MyConn, String> {
    let ep = Endpoint {
        host: "127.0.0.1".into(),
        port: port as u16,
    };
    shoal_sdk::mysql::MyConn::connect(&ep, "root", password, Duration::from_secs(5))
        .map_err(|e| e.to_string())
}

/// Run `sql` on 127.0.0.1:`port` as root; the rows, tab-separated, one per line (NULL as
/// "NULL"), or the error.
pub fn mariadb_sql(port: u64, password: &str, sql: &str) -> Result<String, String> {
    let mut c = mariadb(port, password)?;
    let r = c.query(sql).map_err(|e| e.to_string())?;
    Ok(r.rows
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| row.get(i).unwrap_or("NULL"))
                .collect::<Vec<_>>()
                .join("\t")
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Run `sql` on `port` until it returns `want` (replication is asynchronous).
pub fn mariadb_eventually(port: u64, password: &str, sql: &str, want: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let got = mariadb_sql(port, password, sql);
        if got.as_deref() == Ok(want) {
            return;
        }
        assert!(
            Instant::now() < until,
            "127.0.0.1:{port}: {sql} never returned {want:?}: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Create MariaDB cluster `name` with `replicas` instances (and `extra` flags), wait until it
/// is healthy and create the writer's table `app.w`; returns its description.
pub fn create_mariadb(h: &Host, name: &str, replicas: u32, extra: &[&str]) -> serde_json::Value {
    let n = replicas.to_string();
    let mut args = vec![
        "cluster",
        "create",
        name,
        "--engine",
        "mariadb",
        "--replicas",
        &n,
    ];
    args.extend(extra);
    h.ok(&args);
    let d = h.wait_healthy(name);
    let pw = password(h, name);
    mariadb_sql(rw_port(&d) as u64, &pw, "CREATE DATABASE IF NOT EXISTS app").unwrap();
    mariadb_sql(
        rw_port(&d) as u64,
        &pw,
        "CREATE TABLE IF NOT EXISTS app.w (n BIGINT PRIMARY KEY)",
    )
    .unwrap();
    d
}

impl Writer {
    /// A MariaDB writer: `INSERT INTO app.w VALUES (n)` through `port` as root (autocommit:
    /// each insert is acknowledged when it returns).
    pub fn mariadb(port: u16, password: &str) -> Writer {
        Writer::mariadb_at(port, password, 1)
    }

    /// A MariaDB writer whose first value is `first`.
    pub fn mariadb_at(port: u16, password: &str, first: u64) -> Writer {
        let pw = password.to_string();
        Writer::start_with(first, move || {
            let mut c = mariadb(port as u64, &pw)?;
            let server: u16 = c
                .query_value("SELECT @@port")
                .map_err(|e| e.to_string())?
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            Ok(Box::new(move |n: u64| -> Result<u16, String> {
                c.execute(&format!("INSERT INTO app.w VALUES ({n})"))
                    .map_err(|e| e.to_string())?;
                Ok(server)
            }) as Commit)
        })
    }
}

/// Acknowledged `app.w` inserts of a [`Writer::mariadb`] missing on the server at `port`.
pub fn lost_mariadb(port: u16, password: &str, acked: &[(u64, Instant)]) -> Vec<u64> {
    let rows = mariadb_sql(port as u64, password, "SELECT n FROM app.w").unwrap();
    let present: std::collections::HashSet<u64> =
        rows.lines().filter_map(|l| l.parse().ok()).collect();
    acked
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !present.contains(n))
        .collect()
}

/// Wait until `name` has a primary other than `old`, every instance running and healthy.
pub fn wait_new_primary(h: &Host, name: &str, old: &str) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let d = h.describe(name);
        let all = d["instances"].as_array().unwrap();
        let primary = all.iter().find(|i| i["role"] == "primary");
        let settled = all
            .iter()
            .all(|i| i["state"] == "running" && i["health"] == "healthy");
        if settled && primary.is_some_and(|p| p["name"] != old) {
            return d;
        }
        assert!(Instant::now() < until, "no new primary: {d:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How many of `writer`'s writes so far the server on `port` acknowledged.
pub fn writer_acked_by(writer: &Writer, port: u16) -> usize {
    writer.servers().iter().filter(|s| **s == port).count()
}

/// The value of metric `metric` of instance `inst` in `shoal cluster metrics -o json`.
pub fn metric_of(m: &serde_json::Value, inst: &str, metric: &str) -> Option<f64> {
    m.as_array()?.iter().find(|i| i["instance"] == inst)?["samples"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == metric)?["value"]
        .as_f64()
}

/// Acknowledged-write accounting of a failover under a writer with asynchronous
/// replication: writes the old primary acknowledged after the last one a replica received
/// may be lost, but replication is ordered, so what is lost (`lost`) is a suffix of the old
/// primary's acknowledgements, and nothing the new primary (`new_port`) acknowledged is lost.
/// Asserts that, and that at least `min_new` writes were acknowledged by the new primary;
/// returns how many each side acknowledged.
pub fn check_async_loss(
    acked: &[(u64, Instant)],
    servers: &[u16],
    new_port: u16,
    lost: &[u64],
    min_new: usize,
) -> (usize, usize) {
    let old_acks: Vec<u64> = acked
        .iter()
        .zip(servers)
        .filter(|(_, s)| **s != new_port)
        .map(|((n, _), _)| *n)
        .collect();
    let new_acks = acked.len() - old_acks.len();
    assert!(new_acks >= min_new, "writes resumed on the new primary");
    for n in lost {
        assert!(
            old_acks.contains(n),
            "{n} was acknowledged by the new primary and is lost"
        );
    }
    let kept = old_acks.len() - lost.len();
    assert!(
        old_acks[kept..].iter().all(|n| lost.contains(n)),
        "the lost writes are not a suffix of the old primary's: {lost:?}"
    );
    (old_acks.len(), new_acks)
}
