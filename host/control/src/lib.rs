//! Shoal's control plane for local mode.
//!
//! * [`accounts`]: rotating the password of the account users get.
//! * [`config`]: the host configuration and its home directory.
//! * [`store`]: the embedded SQLite state store (clusters, instances, ports, operations, events).
//! * [`engines`]: the addons this host loaded, by engine name.
//! * [`controller`]: validation, the per-cluster operation queue, the read views.
//! * [`ops`]: create, scale, stop, start, restart, delete.
//! * [`backups`]: backup repositories, the backup operation, verification, restores.
//! * [`restore_test`]: restoring a backup into a throwaway instance to prove it restores.
//! * [`ha`]: failover, switchover, rebuild, synchronous replication; leases in `shoal-dcs`.
//! * [`proxy`]: the stable read-write / read-only endpoints (the relaying).
//! * [`endpoints`]: the process that serves them, apart from the host's, and the host's
//!   handle on it.
//! * `node`: one instance: directories, config files, init, process, readiness.
//! * [`supervisor`]: re-adoption at start, probes, restarts with backoff.
//! * [`server`]: the local API over a Unix socket.
//!
//! Engine knowledge comes only from addons; the local runtime (`shoal-local`) runs what their
//! run-specs say.

pub mod accounts;
pub mod archive;
pub mod backups;
pub mod config;
pub mod controller;
pub mod endpoints;
pub mod engines;
pub mod error;
pub mod events;
pub mod ha;
mod hooks;
pub mod markers;
mod node;
pub mod nodes;
pub mod operation;
pub mod ops;
pub mod primary_replica;
pub mod proxy;
pub mod quantity;
pub mod reconfigure;
pub mod restore_test;
pub mod secrets;
pub mod server;
pub mod sharded;
pub mod store;
pub mod supervisor;
pub mod topology;
pub mod users;

pub use config::{default_home, HostConfig};
pub use controller::Controller;

/// Run the host: open everything, re-adopt running instances, serve the API and supervise
/// until the process is stopped. Prints where it listens once ready.
///
/// With etcd as the coordination store a second host may share the home (its state store on
/// shared storage): it listens on `<home>/hosts/<host id>.sock`, stands by while the first
/// manages the clusters, takes over `<home>/shoal.sock` once that daemon is gone, and adopts
/// each cluster whose manager lease lapses.
pub async fn serve(home: std::path::PathBuf, cfg: HostConfig) -> Result<(), String> {
    // Everything the host writes (state, secrets, logs, backups in a directory repository)
    // is its owner's alone unless a file says otherwise; engine processes inherit it.
    // SAFETY: umask only sets the process's file mode creation mask.
    unsafe {
        libc::umask(0o077);
    }
    std::fs::create_dir_all(&home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
    // Engines get as many open files as this machine allows; addons validate against it.
    shoal_runtime::set_engine_open_files(shoal_local::process::raise_open_files());
    let (listener, path) = match server::bind(&home.join(shoal_api::SOCKET)).await {
        Ok(l) => (l, home.join(shoal_api::SOCKET)),
        Err(server::BindError::Busy(other)) if cfg.ha.dcs == "etcd" => {
            let id = cfg.ha.host_id(&home);
            if other.host_id == id {
                return Err(format!(
                    "another shoal serve (pid {}) runs on {} as host {id:?}; a second host on \
                     this home needs its own --host-id",
                    other.pid,
                    home.display()
                ));
            }
            let dir = home.join("hosts");
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let path = dir.join(format!("{}.sock", config::file_safe(&id)));
            let l = server::bind(&path).await.map_err(|e| e.to_string())?;
            (l, path)
        }
        Err(e) => return Err(e.to_string()),
    };
    let c = Controller::open(home.clone(), cfg).await?;
    let adopted = supervisor::adopt(&c).await;
    tracing::info!(
        home = %home.display(),
        host = %c.host_id,
        engines = ?c.engines.names(),
        adopted,
        "shoal serve ready; resource limits {}",
        c.limits_text()
    );
    eprintln!(
        "shoal serve: host {} ready on {} (engines: {}; re-adopted {adopted} running instance(s); coordination: {}; resource limits {})",
        c.host_id,
        path.display(),
        c.engines.names().join(", "),
        c.dcs.describe(),
        c.limits_text()
    );
    tokio::spawn(supervisor::run(c.clone()));
    if path != home.join(shoal_api::SOCKET) {
        tokio::spawn(server::take_over_socket(
            c.clone(),
            home.join(shoal_api::SOCKET),
        ));
    }
    server::serve(c, listener).await;
    Ok(())
}
