//! Shoal's control plane for local mode.
//!
//! * [`config`]: the host configuration and its home directory.
//! * [`store`]: the embedded SQLite state store (clusters, instances, ports, operations, events).
//! * [`engines`]: the addons this host loaded, by engine name.
//! * [`controller`]: validation, the per-cluster operation queue, the read views.
//! * [`ops`]: create, scale, stop, start, restart, delete.
//! * [`ha`]: failover, switchover, rebuild, synchronous replication; leases in `shoal-dcs`.
//! * [`proxy`]: the stable read-write / read-only endpoints.
//! * `node`: one instance: directories, config files, init, process, readiness.
//! * [`supervisor`]: re-adoption at start, probes, restarts with backoff.
//! * [`server`]: the local API over a Unix socket.
//!
//! Engine knowledge comes only from addons; the local runtime (`shoal-local`) runs what their
//! run-specs say.

pub mod config;
pub mod controller;
pub mod engines;
pub mod ha;
mod node;
pub mod ops;
pub mod proxy;
pub mod quantity;
pub mod secrets;
pub mod server;
pub mod store;
pub mod supervisor;

pub use config::{default_home, HostConfig};
pub use controller::Controller;

/// Run the host: open everything, re-adopt running instances, serve the API and supervise
/// until the process is stopped. Prints where it listens once ready.
pub async fn serve(home: std::path::PathBuf, cfg: HostConfig) -> Result<(), String> {
    std::fs::create_dir_all(&home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
    let listener = server::bind(&home).await?;
    let c = Controller::open(home.clone(), cfg).await?;
    let adopted = supervisor::adopt(&c);
    tracing::info!(
        home = %home.display(),
        engines = ?c.engines.names(),
        adopted,
        "shoal serve ready; resource limits {}",
        c.limits_text()
    );
    eprintln!(
        "shoal serve: ready on {} (engines: {}; re-adopted {adopted} running instance(s); resource limits {})",
        home.join(shoal_api::SOCKET).display(),
        c.engines.names().join(", "),
        c.limits_text()
    );
    tokio::spawn(supervisor::run(c.clone()));
    server::serve(c, listener).await;
    Ok(())
}
