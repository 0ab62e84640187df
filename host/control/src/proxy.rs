//! Stable endpoints: a host-side L4 (TCP) proxy per cluster. The read-write port always
//! leads to the current primary; the read-only port spreads connections over healthy
//! replicas (the primary when there are none). Routes change with failovers, switchovers
//! and fencing; connections to a backend that lost its route are cut, so a client of a
//! fenced primary reconnects and reaches the new one. While a cluster has no writable
//! primary (mid-failover), new read-write connections wait up to [`ROUTE_WAIT`] for one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// How long a new connection waits for a route before it is closed.
pub const ROUTE_WAIT: Duration = Duration::from_secs(10);

/// Which endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    ReadWrite,
    ReadOnly,
}

/// Where a cluster's endpoints lead now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    pub rw: Option<SocketAddr>,
    pub ro: Vec<SocketAddr>,
}

struct Conn {
    cluster: String,
    kind: Kind,
    backend: SocketAddr,
    /// The task waiting for a route and connecting.
    abort: AbortHandle,
    /// Once relaying: both sockets, shut down to cut the connection.
    sockets: Vec<std::net::TcpStream>,
}

impl Conn {
    fn cut(&self) {
        self.abort.abort();
        for s in &self.sockets {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

struct ClusterProxy {
    routes: watch::Sender<Routes>,
    listeners: Vec<AbortHandle>,
}

/// Every cluster's endpoints.
#[derive(Default)]
pub struct Proxy {
    clusters: Mutex<HashMap<String, ClusterProxy>>,
    conns: Arc<Mutex<HashMap<u64, Conn>>>,
    next: Arc<AtomicU64>,
}

impl Proxy {
    /// Listen on `rw` and `ro` (loopback) for `cluster`, unless already listening.
    pub async fn ensure(&self, cluster: &str, host: &str, rw: u16, ro: u16) -> Result<(), String> {
        if self.lock().contains_key(cluster) {
            return Ok(());
        }
        let (tx, _) = watch::channel(Routes::default());
        let mut listeners = Vec::new();
        for (port, kind) in [(rw, Kind::ReadWrite), (ro, Kind::ReadOnly)] {
            let l = match TcpListener::bind((host, port)).await {
                Ok(l) => l,
                Err(e) => {
                    for h in &listeners {
                        AbortHandle::abort(h);
                    }
                    return Err(format!("cannot listen on {host}:{port}: {e}"));
                }
            };
            let routes = tx.subscribe();
            let conns = self.conns.clone();
            let next = self.next.clone();
            let name = cluster.to_string();
            let task = tokio::spawn(accept_loop(l, kind, name, routes, conns, next));
            listeners.push(task.abort_handle());
        }
        self.lock().insert(
            cluster.to_string(),
            ClusterProxy {
                routes: tx,
                listeners,
            },
        );
        Ok(())
    }

    /// Point `cluster`'s endpoints at `routes`, cutting connections whose backend lost its
    /// place: read-write ones not to the new primary, read-only ones to a backend no longer
    /// listed.
    pub fn set_routes(&self, cluster: &str, routes: Routes) {
        let changed = {
            let map = self.lock();
            let Some(p) = map.get(cluster) else { return };
            let changed = *p.routes.borrow() != routes;
            if changed {
                p.routes.send_replace(routes.clone());
            }
            changed
        };
        if !changed {
            return;
        }
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|_, c| {
            if c.cluster != cluster || c.backend.port() == 0 {
                return true;
            }
            let keep = match c.kind {
                Kind::ReadWrite => routes.rw == Some(c.backend),
                Kind::ReadOnly => routes.ro.contains(&c.backend),
            };
            if !keep {
                c.cut();
            }
            keep
        });
    }

    /// The routes of `cluster` now.
    pub fn routes(&self, cluster: &str) -> Option<Routes> {
        self.lock().get(cluster).map(|p| p.routes.borrow().clone())
    }

    /// Stop listening for `cluster` and cut its connections.
    pub fn remove(&self, cluster: &str) {
        if let Some(p) = self.lock().remove(cluster) {
            for h in p.listeners {
                h.abort();
            }
        }
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, c| {
                if c.cluster == cluster {
                    c.cut();
                    false
                } else {
                    true
                }
            });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ClusterProxy>> {
        self.clusters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn accept_loop(
    l: TcpListener,
    kind: Kind,
    cluster: String,
    routes: watch::Receiver<Routes>,
    conns: Arc<Mutex<HashMap<u64, Conn>>>,
    next: Arc<AtomicU64>,
) {
    loop {
        let Ok((client, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = client.set_nodelay(true);
        let id = next.fetch_add(1, Ordering::Relaxed);
        let mut routes = routes.clone();
        let conns2 = conns.clone();
        let cluster2 = cluster.clone();
        // Hold the registry lock across spawn + insert so the task cannot finish (and try to
        // remove itself) before it is registered.
        let mut registry = conns.lock().unwrap_or_else(|p| p.into_inner());
        let task = tokio::spawn(async move {
            let Some(backend) = pick(&mut routes, kind, id).await else {
                return;
            };
            if let Some(c) = conns2
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&id)
            {
                c.backend = backend;
            }
            // A route may have changed while we connected; the registry entry now names the
            // backend, so set_routes cuts it if needed.
            let Ok(server) = TcpStream::connect(backend).await else {
                conns2.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                return;
            };
            if relay(client, server, id, &conns2).is_err() {
                conns2.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            }
        });
        registry.insert(
            id,
            Conn {
                cluster: cluster2,
                kind,
                // Until a backend is picked, no real address: a route change does not cut it.
                backend: SocketAddr::from(([0, 0, 0, 0], 0)),
                abort: task.abort_handle(),
                sockets: Vec::new(),
            },
        );
        drop(registry);
    }
}

/// Relay bytes between `client` and `server` on two blocking threads (one per direction):
/// for request/response protocols this costs fewer wake-ups than an event loop. The
/// registry keeps clones of both sockets so a route change can shut them down; the last
/// thread to finish removes the entry.
fn relay(
    client: TcpStream,
    server: TcpStream,
    id: u64,
    conns: &Arc<Mutex<HashMap<u64, Conn>>>,
) -> std::io::Result<()> {
    let client = client.into_std()?;
    let server = server.into_std()?;
    client.set_nonblocking(false)?;
    server.set_nonblocking(false)?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    {
        let mut map = conns.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = map.get_mut(&id) else {
            return Ok(());
        };
        c.sockets = vec![client.try_clone()?, server.try_clone()?];
    }
    let left = Arc::new(AtomicU64::new(2));
    for (mut from, mut to) in [(client.try_clone()?, server.try_clone()?), (server, client)] {
        let (left, conns) = (left.clone(), conns.clone());
        std::thread::Builder::new()
            .name("shoal-proxy".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(std::net::Shutdown::Write);
                if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                    conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                }
            })?;
    }
    Ok(())
}

/// A backend for a new connection, waiting up to [`ROUTE_WAIT`] for one to exist.
async fn pick(routes: &mut watch::Receiver<Routes>, kind: Kind, n: u64) -> Option<SocketAddr> {
    let choose = |r: &Routes| match kind {
        Kind::ReadWrite => r.rw,
        Kind::ReadOnly if r.ro.is_empty() => r.rw,
        Kind::ReadOnly => r.ro.get((n as usize) % r.ro.len()).copied(),
    };
    let deadline = tokio::time::Instant::now() + ROUTE_WAIT;
    loop {
        if let Some(b) = choose(&routes.borrow_and_update()) {
            return Some(b);
        }
        match tokio::time::timeout_at(deadline, routes.changed()).await {
            Ok(Ok(())) => continue,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server that prefixes answers with its tag.
    async fn tagged_echo(tag: u8) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    while s.read_exact(&mut b).await.is_ok() {
                        if s.write_all(&[tag, b[0]]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn free() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn ask(s: &mut TcpStream) -> Option<u8> {
        s.write_all(b"x").await.ok()?;
        let mut b = [0u8; 2];
        s.read_exact(&mut b).await.ok()?;
        Some(b[0])
    }

    #[tokio::test]
    async fn read_write_follows_the_primary_and_cuts_the_old_one() {
        let (a, b) = (tagged_echo(b'a').await, tagged_echo(b'b').await);
        let p = Proxy::default();
        let (rw, ro) = (free(), free());
        p.ensure("c", "127.0.0.1", rw, ro).await.unwrap();
        p.set_routes(
            "c",
            Routes {
                rw: Some(a),
                ro: vec![b],
            },
        );
        let mut w = TcpStream::connect(("127.0.0.1", rw)).await.unwrap();
        assert_eq!(ask(&mut w).await, Some(b'a'));
        let mut r = TcpStream::connect(("127.0.0.1", ro)).await.unwrap();
        assert_eq!(ask(&mut r).await, Some(b'b'));
        // Failover: b is the primary now, no replicas left.
        p.set_routes(
            "c",
            Routes {
                rw: Some(b),
                ro: vec![],
            },
        );
        assert_eq!(
            ask(&mut w).await,
            None,
            "the old primary's connection is cut"
        );
        let mut w2 = TcpStream::connect(("127.0.0.1", rw)).await.unwrap();
        assert_eq!(ask(&mut w2).await, Some(b'b'));
        // Read-only falls back to the primary.
        let mut r2 = TcpStream::connect(("127.0.0.1", ro)).await.unwrap();
        assert_eq!(ask(&mut r2).await, Some(b'b'));
        p.remove("c");
        assert!(TcpStream::connect(("127.0.0.1", rw)).await.is_err());
    }

    #[tokio::test]
    async fn a_new_connection_waits_for_a_primary() {
        let a = tagged_echo(b'a').await;
        let p = Arc::new(Proxy::default());
        let (rw, ro) = (free(), free());
        p.ensure("c", "127.0.0.1", rw, ro).await.unwrap();
        let mut w = TcpStream::connect(("127.0.0.1", rw)).await.unwrap();
        let p2 = p.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            p2.set_routes(
                "c",
                Routes {
                    rw: Some(a),
                    ro: vec![],
                },
            );
        });
        assert_eq!(ask(&mut w).await, Some(b'a'));
    }
}
