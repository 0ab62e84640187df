//! The seam between the control logic and where instances' processes run. [`Nodes`] starts
//! an instance's server, runs its init commands to their end, tells whether a server still
//! runs, waits for one to exit, stops and kills it. The control logic touches processes only
//! through it (`Controller::nodes`): [`LocalNodes`] runs them as processes on this machine
//! (`shoal-local`: own session, identity by pid and start time, cgroup confinement beside);
//! a Kubernetes runtime will implement the same trait with pods.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use shoal_local::{ProcessId, ProcessSpec};

use crate::store::InstanceRow;

/// A future a [`Nodes`] method returns (boxed: the trait is used as `dyn Nodes`).
pub type NodeFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where instance processes run.
pub trait Nodes: Send + Sync {
    /// Start a long-running server detached; the handle that names it from now on.
    fn start(&self, spec: &ProcessSpec) -> Result<ProcessId, String>;

    /// Run a command (an init step) to its end within `timeout`; an error carries the tail of
    /// its output.
    fn run<'a>(
        &'a self,
        spec: &'a ProcessSpec,
        timeout: Duration,
    ) -> NodeFuture<'a, Result<(), String>>;

    /// Whether this very process (not another that took its pid) still runs.
    fn is_running(&self, p: ProcessId) -> bool;

    /// Send `signal`, wait up to `grace`, then kill it and its group; whether it had to be
    /// killed.
    fn stop(&self, p: ProcessId, signal: i32, grace: Duration) -> NodeFuture<'_, bool>;

    /// Kill the process and everything it started now (fencing); how many were killed.
    fn kill(&self, p: ProcessId) -> usize;

    /// Kill what is left of an exited server's group (children it left behind); how many.
    fn kill_leftovers(&self, p: ProcessId) -> usize;

    /// Wait up to `limit` until the process is gone from the machine, not only exited;
    /// whether it is.
    fn wait_gone(&self, p: ProcessId, limit: Duration) -> NodeFuture<'_, bool>;

    /// Resolve when the process exits.
    fn exited(&self, p: ProcessId) -> NodeFuture<'static, ()>;

    /// Whether `i`'s server is running now.
    fn alive(&self, i: &InstanceRow) -> bool {
        i.process.is_some_and(|p| self.is_running(p))
    }
}

/// Instances as processes on this machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalNodes;

impl Nodes for LocalNodes {
    fn start(&self, spec: &ProcessSpec) -> Result<ProcessId, String> {
        spec.spawn().map_err(|e| e.to_string())
    }

    fn run<'a>(
        &'a self,
        spec: &'a ProcessSpec,
        timeout: Duration,
    ) -> NodeFuture<'a, Result<(), String>> {
        Box::pin(async move { spec.run(timeout).await.map_err(|e| e.to_string()) })
    }

    fn is_running(&self, p: ProcessId) -> bool {
        p.is_running()
    }

    fn stop(&self, p: ProcessId, signal: i32, grace: Duration) -> NodeFuture<'_, bool> {
        Box::pin(async move { p.stop(signal, grace).await })
    }

    fn kill(&self, p: ProcessId) -> usize {
        p.kill_tree()
    }

    fn kill_leftovers(&self, p: ProcessId) -> usize {
        p.kill_leftovers()
    }

    fn wait_gone(&self, p: ProcessId, limit: Duration) -> NodeFuture<'_, bool> {
        Box::pin(async move { p.wait_gone(limit).await })
    }

    fn exited(&self, p: ProcessId) -> NodeFuture<'static, ()> {
        Box::pin(async move { p.exited().await })
    }
}
