//! Support for Shoal's end-to-end tests: where the built addon components are, free loopback
//! ports, and real engine processes that are stopped (and their files removed) when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_runtime::wit::{Endpoint, Instance, NamedPort, Resources};
use shoal_runtime::{AddonRuntime, LoadedAddon, RuntimeConfig};

/// Directory holding the built `.wasm` components (`SHOAL_WASM_DIR`, else the workspace's
/// `target/wasm32-wasip2/release`).
pub fn wasm_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SHOAL_WASM_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    target.join("wasm32-wasip2/release")
}

/// Path of the built component `name` (e.g. `shoal_example_memcached.wasm`). Panics with the
/// command to run when it has not been built.
pub fn wasm(name: &str) -> PathBuf {
    let path = wasm_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the addons first with scripts/build-addons.sh",
        path.display()
    );
    path
}

/// A runtime with default settings plus `edit`.
pub fn runtime_with(edit: impl FnOnce(&mut RuntimeConfig)) -> AddonRuntime {
    let mut cfg = RuntimeConfig::default();
    edit(&mut cfg);
    match AddonRuntime::new(cfg) {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    }
}

/// Load the built component `name` into `rt`.
pub async fn load(rt: &AddonRuntime, name: &str) -> LoadedAddon {
    match rt.load_file(&wasm(name)).await {
        Ok(a) => a,
        Err(e) => panic!("loading {name}: {e}"),
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it next).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// An instance record for a process listening on `addr`, with `name` and extra named ports.
pub fn instance(name: &str, addr: SocketAddr, extra_ports: &[(&str, u16)]) -> Instance {
    let mut ports = vec![NamedPort {
        name: "client".into(),
        port: addr.port(),
    }];
    ports.extend(extra_ports.iter().map(|(n, p)| NamedPort {
        name: (*n).into(),
        port: *p,
    }));
    Instance {
        cluster: "test".into(),
        component: "main".into(),
        name: name.into(),
        engine_version: "1".into(),
        endpoint: Endpoint {
            host: addr.ip().to_string(),
            port: addr.port(),
        },
        ports,
        data_dir: None,
        config_dir: None,
        archive_dir: None,
        role: None,
        shard: None,
        term: 0,
        credentials: None,
        resources: Resources {
            cpu_millis: 0,
            memory_bytes: 0,
            storage_bytes: 0,
        },
    }
}

/// Whether the process runs as root (engines then need an unprivileged user).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Wait until `addr` accepts TCP connections, up to `limit`.
pub fn wait_for_port(addr: SocketAddr, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A real memcached server on a free loopback port, killed when dropped.
pub struct Memcached {
    child: Child,
    pub addr: SocketAddr,
}

impl Memcached {
    /// Start memcached (from the Debian package) on a free port.
    pub fn start() -> Memcached {
        Self::spawn(free_port, &[])
    }

    /// Start memcached on `port` (e.g. again after stopping it).
    pub fn start_on(port: u16) -> Memcached {
        Self::spawn(|| port, &[])
    }

    /// Start memcached on a free port with extra flags (`["-c", "4096"]`).
    pub fn start_with(extra: &[&str]) -> Memcached {
        Self::spawn(free_port, extra)
    }

    fn spawn(mut pick: impl FnMut() -> u16, extra: &[&str]) -> Memcached {
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = pick();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut cmd = Command::new("memcached");
            cmd.args([
                "-l",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-m",
                "16",
                "-t",
                "1",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            if is_root() {
                cmd.args(["-u", "nobody"]);
            }
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => panic!("cannot start memcached (apt-get install memcached): {e}"),
            };
            if wait_for_port(addr, Duration::from_secs(5)) {
                return Memcached { child, addr };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_err = format!("memcached did not listen on {addr}");
        }
        panic!("{last_err}");
    }

    /// Ask the server for one `stats` value over a native connection.
    pub fn stat(&self, name: &str) -> Option<u64> {
        use std::io::{BufRead, BufReader, Write};
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        s.write_all(b"stats\r\n").ok()?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let l = line.trim_end();
            if l == "END" {
                return None;
            }
            let mut parts = l.split(' ');
            if let (Some("STAT"), Some(n), Some(v)) = (parts.next(), parts.next(), parts.next()) {
                if n == name {
                    return v.parse().ok();
                }
            }
        }
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP listener that accepts connections and never answers (for blocked-I/O tests).
pub struct SilentServer {
    pub addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentServer {
    /// Listen on a free loopback port.
    pub fn start() -> SilentServer {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (s, a) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        held.push(conn);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        SilentServer {
            addr,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A single-node etcd (Debian's etcd-server) on free loopback ports with its own data
/// directory; killed when dropped.
pub struct Etcd {
    child: Child,
    /// Client URL, `http://127.0.0.1:PORT`.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cp, pp) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{cp}");
        let peer = format!("http://127.0.0.1:{pp}");
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian package etcd-server) must be installed: scripts/test.sh checks");
        assert!(
            wait_for_port(
                SocketAddr::from(([127, 0, 0, 1], cp)),
                Duration::from_secs(20)
            ),
            "etcd did not listen within 20 s"
        );
        Etcd {
            child,
            url,
            _dir: dir,
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An S3-compatible server (PyPI `moto[server]`, in memory) on a free loopback port with one
/// bucket, `shoal-test`; killed when dropped.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub port: u16,
    pub bucket: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        let port = free_port();
        // `python3 -m moto.server`, not the `moto_server` script: no PATH or shim needed.
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 must be installed (and moto: pip install 'moto[server]'; scripts/test.sh checks)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            wait_for_port(addr, Duration::from_secs(30)),
            "moto_server did not listen within 30 s"
        );
        let s = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            bucket: "shoal-test".into(),
        };
        // Create the bucket (moto takes an unsigned request).
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(addr).expect("connect moto");
        write!(
            c,
            "PUT /{} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            s.bucket
        )
        .unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "create bucket: {answer}"
        );
        s
    }

    /// Stop the server now (a repository that becomes unreachable).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
