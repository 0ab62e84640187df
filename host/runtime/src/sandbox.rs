//! What one call may touch. A [`CallContext`] names the endpoints, directories and OS user the
//! call is about; [`Sandbox`] combines it with the manifest's declared capabilities and the
//! operator's grants into the WASI context of the call: TCP only to allowed addresses, no name
//! lookup unless granted, files only under the preopened directories, and no environment.
//! Everything refused is recorded as a denial so the caller learns what the addon tried.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use crate::config::Grants;
use crate::logs::Logs;
use crate::wit::{AddonManifest, Capability};

/// A host directory made visible to the addon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// Directory on the host.
    pub host: PathBuf,
    /// Path the addon sees it at ("/data").
    pub guest: String,
    /// Whether the addon may create, change and delete files in it.
    pub writable: bool,
}

/// The OS user programs started by `host.exec` run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Progress reported by a long hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: Option<u64>,
    pub message: String,
}

/// Receives progress reports of a call.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// What a call is about: the caller (control plane, CLI) fills it in per call.
#[derive(Clone, Default)]
pub struct CallContext {
    /// Addresses of the instances the call is about; the addon may connect to these.
    pub endpoints: Vec<SocketAddr>,
    /// Directories the addon may see.
    pub preopens: Vec<Preopen>,
    /// User for `host.exec` children; `None` runs them as the host's own user.
    pub run_as: Option<RunAs>,
    /// Receives `host.progress` reports; `None` logs them at debug level.
    pub progress: Option<ProgressFn>,
    /// Directories the host grants for this call: a program the manifest declares as an
    /// `exec` capability and the operator did not grant is looked up here (in local mode, the
    /// engine version's own programs for backup and restore calls).
    pub exec_dirs: Vec<PathBuf>,
}

impl std::fmt::Debug for CallContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallContext")
            .field("endpoints", &self.endpoints)
            .field("preopens", &self.preopens)
            .field("run_as", &self.run_as)
            .field("progress", &self.progress.is_some())
            .field("exec_dirs", &self.exec_dirs)
            .finish()
    }
}

impl CallContext {
    /// A context allowing connections to `endpoints` and nothing else.
    pub fn endpoints(endpoints: impl IntoIterator<Item = SocketAddr>) -> Self {
        CallContext {
            endpoints: endpoints.into_iter().collect(),
            ..Default::default()
        }
    }

    /// Add a preopened directory.
    pub fn preopen(
        mut self,
        host: impl Into<PathBuf>,
        guest: impl Into<String>,
        writable: bool,
    ) -> Self {
        self.preopens.push(Preopen {
            host: host.into(),
            guest: guest.into(),
            writable,
        });
        self
    }
}

/// Everything the addon attempted that the sandbox refused, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Denials(Arc<Mutex<Vec<String>>>);

impl Denials {
    pub(crate) fn record(&self, what: String) {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a guest looping over denied connects must not grow host memory.
        if v.len() < 32 {
            v.push(what);
        }
    }

    pub(crate) fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }
}

/// The effective permissions of one addon: manifest declarations intersected with grants.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sandbox {
    /// Extra connect addresses declared and granted.
    pub connect: Vec<SocketAddr>,
    /// Name lookup declared and granted.
    pub name_lookup: bool,
    /// Programs declared and granted, with their resolved paths (None: not found on disk).
    pub exec: BTreeMap<String, Option<PathBuf>>,
    /// Programs declared but not granted, for clear denial messages.
    pub exec_not_granted: Vec<String>,
}

impl Sandbox {
    /// Intersect what `manifest` declares with what `grants` allow.
    pub(crate) fn new(manifest: &AddonManifest, grants: &Grants) -> Self {
        let mut sb = Sandbox::default();
        for cap in &manifest.capabilities {
            match cap {
                Capability::Exec(name) => match grants.exec.get(name) {
                    Some(path) => {
                        let resolved = match path.as_ref().filter(|p| !p.as_os_str().is_empty()) {
                            Some(p) => Some(p.clone()).filter(|p| p.is_file()),
                            None => find_program(name, &grants.exec_search_path),
                        };
                        sb.exec.insert(name.clone(), resolved);
                    }
                    None => sb.exec_not_granted.push(name.clone()),
                },
                Capability::Connect(addr) => {
                    if let Ok(a) = addr.parse::<SocketAddr>() {
                        if grants.connect.contains(&a) {
                            sb.connect.push(a);
                        }
                    }
                }
                Capability::NameLookup => sb.name_lookup = grants.name_lookup,
            }
        }
        sb
    }

    /// Build the WASI context of one call.
    pub(crate) fn wasi(
        &self,
        ctx: &CallContext,
        logs: &Logs,
        denials: &Denials,
    ) -> Result<WasiCtx, String> {
        let mut b = WasiCtxBuilder::new();
        b.stdout(logs.stdio(0)).stderr(logs.stdio(1));
        for p in &ctx.preopens {
            if !p.host.is_dir() {
                return Err(format!("preopen {} is not a directory", p.host.display()));
            }
            let perms = if p.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            b.preopened_dir(&p.host, &p.guest, perms)
                .map_err(|e| format!("preopen {}: {e:#}", p.host.display()))?;
        }
        let mut allowed: Vec<SocketAddr> = ctx.endpoints.clone();
        allowed.extend(self.connect.iter().copied());
        let allowed: Arc<[SocketAddr]> = allowed.into();
        let denials = denials.clone();
        b.allow_tcp(!allowed.is_empty());
        b.allow_udp(false);
        b.allow_ip_name_lookup(self.name_lookup);
        b.socket_addr_check(move |addr, usage| {
            let ok = socket_allowed(&allowed, addr, usage);
            if !ok {
                denials.record(format!("{} {addr}", describe_use(usage)));
            }
            Box::pin(async move { ok })
        });
        Ok(b.build())
    }
}

/// A connect is allowed to a granted address; a bind only to the wildcard address with port 0
/// (the implicit bind a connect does first). Listening and UDP are never allowed.
fn socket_allowed(allowed: &[SocketAddr], addr: SocketAddr, usage: SocketAddrUse) -> bool {
    match usage {
        SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
        SocketAddrUse::TcpConnect => allowed.iter().any(|a| same_endpoint(*a, addr)),
        _ => false,
    }
}

/// Equal addresses, treating an IPv4-mapped IPv6 address as its IPv4 form.
fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    fn canon(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        }
    }
    a.port() == b.port() && canon(a.ip()) == canon(b.ip())
}

fn describe_use(usage: SocketAddrUse) -> &'static str {
    match usage {
        SocketAddrUse::TcpBind => "TCP bind to",
        SocketAddrUse::TcpConnect => "TCP connect to",
        SocketAddrUse::TcpListen => "TCP listen on",
        SocketAddrUse::TcpAccept => "TCP accept on",
        _ => "socket use of",
    }
}

/// `name` in the first of `dirs` holding an executable file of that name.
pub(crate) fn find_program(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_only_wildcard_port_zero() {
        let allowed = ["127.0.0.1:5000".parse().unwrap()];
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let any6: SocketAddr = "[::]:0".parse().unwrap();
        assert!(socket_allowed(&allowed, any, SocketAddrUse::TcpBind));
        assert!(socket_allowed(&allowed, any6, SocketAddrUse::TcpBind));
        assert!(!socket_allowed(
            &allowed,
            "0.0.0.0:80".parse().unwrap(),
            SocketAddrUse::TcpBind
        ));
        assert!(!socket_allowed(
            &allowed,
            "127.0.0.1:0".parse().unwrap(),
            SocketAddrUse::TcpBind
        ));
    }

    #[test]
    fn connects_only_to_granted_endpoints() {
        let allowed = ["127.0.0.1:5000".parse().unwrap()];
        let ok: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        assert!(socket_allowed(&allowed, ok, SocketAddrUse::TcpConnect));
        assert!(socket_allowed(&allowed, mapped, SocketAddrUse::TcpConnect));
        assert!(!socket_allowed(
            &allowed,
            "127.0.0.1:5001".parse().unwrap(),
            SocketAddrUse::TcpConnect
        ));
        assert!(!socket_allowed(
            &allowed,
            "[::1]:5000".parse().unwrap(),
            SocketAddrUse::TcpConnect
        ));
        assert!(!socket_allowed(&allowed, ok, SocketAddrUse::TcpListen));
    }
}
