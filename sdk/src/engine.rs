//! The [`Engine`] trait an addon implements, with a default for every optional hook, and small
//! conveniences on the shared types ([`HookError`], [`Instance`], [`Value`]).

use crate::backup::{ArchiveUnit, BackupInfo, RecoveryTarget};
use crate::config::{ClassifiedChange, ParamChange, ParamError};
use crate::ha::RoleReport;
use crate::host::{SinkWriter, SourceReader};
use crate::lifecycle::{Account, Command, RunPlan};
use crate::manifest::AddonManifest;
use crate::telemetry::Sample;
use crate::{Endpoint, File, HookError, Instance, Member, Param, Resources, Value};

/// What every hook returns.
pub type HookResult<T> = Result<T, HookError>;

/// A database engine, as Shoal sees it. Implement [`Engine::new`] and [`Engine::manifest`];
/// override the hooks the engine supports. See `docs/wit.md` for when the host calls each hook
/// and what it expects (idempotency, purity, deadlines).
#[allow(unused_variables)]
pub trait Engine: 'static {
    /// Create the engine value. Called once per addon instance, before its first hook.
    fn new() -> Self
    where
        Self: Sized;

    /// Describe the addon: engine name, versions, topologies, roles, ports, backup methods,
    /// parameter schema, capabilities and per-hook limits. Must be pure.
    fn manifest(&self) -> AddonManifest;

    /// The backup methods (other than continuous ones) and their functions: the default
    /// [`Engine::backup`] and [`Engine::restore`] dispatch through them. See
    /// [`crate::methods`]; none (the default): backups are unsupported.
    const BACKUP_METHODS: crate::methods::Methods<Self> = crate::methods::Methods(&[]);

    // ----- lifecycle -----

    /// How to run `instance` with the effective `params`: server command, init commands,
    /// readiness, stop behaviour.
    fn run_spec(
        &mut self,
        instance: &Instance,
        members: &[Member],
        params: &[Param],
    ) -> HookResult<RunPlan> {
        Err(HookError::Unsupported)
    }

    /// The config files of `instance` for the effective parameters.
    fn render_config(
        &mut self,
        instance: &Instance,
        members: &[Member],
        params: &[Param],
    ) -> HookResult<Vec<File>> {
        Err(HookError::Unsupported)
    }

    /// One-time set-up after the component's first instance is ready. Idempotent.
    fn post_provision(&mut self, instance: &Instance, members: &[Member]) -> HookResult<()> {
        Err(HookError::Unsupported)
    }

    /// Clean-up before `instance` is deleted.
    fn pre_terminate(&mut self, instance: &Instance, members: &[Member]) -> HookResult<()> {
        Err(HookError::Unsupported)
    }

    /// Tell `instance` that `joining` was added. Idempotent.
    fn member_join(
        &mut self,
        instance: &Instance,
        joining: &Member,
        members: &[Member],
    ) -> HookResult<()> {
        Err(HookError::Unsupported)
    }

    /// Tell `instance` that `leaving` is about to be removed. Idempotent.
    fn member_leave(
        &mut self,
        instance: &Instance,
        leaving: &Member,
        members: &[Member],
    ) -> HookResult<()> {
        Err(HookError::Unsupported)
    }

    /// Sharded clusters: make one engine cluster of `instance` and `members` (each with its
    /// `shard`) and return once it is whole. Idempotent.
    fn form_shards(&mut self, instance: &Instance, members: &[Member]) -> HookResult<()> {
        Err(HookError::Unsupported)
    }

    /// Create or update `account` on `instance`. Idempotent.
    fn account_provision(&mut self, instance: &Instance, account: &Account) -> HookResult<()> {
        Err(HookError::Unsupported)
    }

    // ----- HA -----

    /// Observe role and health. Read-only; called every probe interval.
    fn probe(&mut self, instance: &Instance, members: &[Member]) -> HookResult<RoleReport> {
        Err(HookError::Unsupported)
    }

    /// Make `instance` the writable primary at `term`. Idempotent.
    fn promote(&mut self, instance: &Instance, term: u64, members: &[Member]) -> HookResult<()> {
        Err(HookError::Unsupported)
    }

    /// Make `instance` read-only, following `new_primary` when given. Idempotent.
    fn demote(
        &mut self,
        instance: &Instance,
        new_primary: Option<&Member>,
        members: &[Member],
    ) -> HookResult<()> {
        Err(HookError::Unsupported)
    }

    /// Engine steps of a planned switchover from `instance` to `candidate`.
    fn switchover(
        &mut self,
        instance: &Instance,
        candidate: &Member,
        members: &[Member],
    ) -> HookResult<()> {
        Err(HookError::Unsupported)
    }

    /// The commands that re-seed the stopped `instance` from `source` in place (a rewind).
    /// The host runs them; if one fails (or this is unsupported) it seeds a fresh copy with
    /// the run-spec's `init` commands instead.
    fn rebuild(
        &mut self,
        instance: &Instance,
        source: &Member,
        members: &[Member],
    ) -> HookResult<Vec<Command>> {
        Err(HookError::Unsupported)
    }

    /// Configure synchronous replication on the primary `instance`: commits wait for
    /// `quorum` of `standbys`; an empty list means asynchronous. Idempotent.
    fn set_sync(
        &mut self,
        instance: &Instance,
        standbys: &[Member],
        quorum: u32,
    ) -> HookResult<()> {
        Err(HookError::Unsupported)
    }

    /// Lost quorum: how to start `instance` alone as a new one-member cluster keeping its
    /// data (etcd's `--force-new-cluster`).
    fn recover_quorum(&mut self, instance: &Instance, params: &[Param]) -> HookResult<RunPlan> {
        Err(HookError::Unsupported)
    }

    // ----- backup -----

    /// Write a backup made with `method` into `into`.
    fn backup(
        &mut self,
        instance: &Instance,
        method: &str,
        params: &[Param],
        into: &mut SinkWriter<'_>,
    ) -> HookResult<BackupInfo> {
        if Self::BACKUP_METHODS.0.is_empty() {
            return Err(HookError::Unsupported);
        }
        Self::BACKUP_METHODS.backup(self, instance, method, params, into)
    }

    /// Restore `info` from `from` into the stopped, empty data directory of `instance`.
    /// `members`: the other members of the cluster being created, none started yet (a
    /// quorum engine restoring a physical copy into every member builds its initial
    /// membership from them; empty for a single instance). `recovery_follows`:
    /// `restore_to_time` comes next, so leave the data exactly as the backup made it.
    fn restore(
        &mut self,
        instance: &Instance,
        members: &[Member],
        info: &BackupInfo,
        from: &mut SourceReader<'_>,
        recovery_follows: bool,
    ) -> HookResult<()> {
        if Self::BACKUP_METHODS.0.is_empty() {
            return Err(HookError::Unsupported);
        }
        Self::BACKUP_METHODS.restore(self, instance, members, info, from, recovery_follows)
    }

    /// Ship the next complete archive unit into `into`; `after` is the unit the host stored
    /// last (safe to forget). `None` when no complete unit is waiting.
    fn archive_continuous(
        &mut self,
        instance: &Instance,
        after: Option<&str>,
        into: &mut SinkWriter<'_>,
    ) -> HookResult<Option<ArchiveUnit>> {
        Err(HookError::Unsupported)
    }

    /// Replay the staged, verified archive in `archive_dir` (a host path) up to `target` on
    /// top of a restore made with `recovery_follows`.
    fn restore_to_time(
        &mut self,
        instance: &Instance,
        base: &BackupInfo,
        target: &RecoveryTarget,
        archive_dir: &str,
    ) -> HookResult<()> {
        Err(HookError::Unsupported)
    }

    // ----- parameters -----

    /// Engine rules beyond the schema. The default checks `params` against the manifest's
    /// parameter schema (names, types, ranges, choices) with [`crate::params::validate`].
    fn validate(&mut self, params: &[Param]) -> HookResult<Vec<ParamError>> {
        Ok(crate::params::validate(&self.manifest().parameters, params))
    }

    /// Live or restart, per change. The default follows each parameter's `apply` mode in the
    /// manifest ([`crate::params::classify`]).
    fn classify(&mut self, changes: &[ParamChange]) -> HookResult<Vec<ClassifiedChange>> {
        crate::params::classify(&self.manifest().parameters, changes)
    }

    /// Apply dynamic changes to the running `instance` and read them back. Idempotent.
    fn apply_dynamic(&mut self, instance: &Instance, changes: &[ParamChange]) -> HookResult<()> {
        Err(HookError::Unsupported)
    }

    /// Every schema parameter's value for `resources` and the user's `params`. The default:
    /// the user's values, else the schema's defaults ([`crate::params::effective`]); override
    /// it when the addon derives values (from memory, from other parameters).
    fn effective(&mut self, params: &[Param], resources: &Resources) -> HookResult<Vec<Param>> {
        Ok(crate::params::effective(
            &self.manifest().parameters,
            params,
        ))
    }

    // ----- metrics -----

    /// Read the instance's metrics now.
    fn metrics(&mut self, instance: &Instance) -> HookResult<Vec<Sample>> {
        Err(HookError::Unsupported)
    }

    // ----- data (markers for the conformance kit; API 0.2.0) -----

    /// Store `value` under `key` on the writer, apart from users' data (own table, key
    /// prefix or path), as durably as an acknowledged client write; return once the engine
    /// acknowledged it. `retryable` while the instance does not take writes. Leave it
    /// unsupported when the engine cannot keep a value truthfully (a cache): the kit then
    /// reports its data scenarios as not declared.
    fn write_marker(
        &mut self,
        instance: &Instance,
        members: &[Member],
        key: &str,
        value: &str,
    ) -> HookResult<()> {
        Err(HookError::Unsupported)
    }

    /// The values stored under `keys` as this instance sees them now, one per key in order
    /// (`None`: absent). Read-only.
    fn read_markers(
        &mut self,
        instance: &Instance,
        members: &[Member],
        keys: &[String],
    ) -> HookResult<Vec<Option<String>>> {
        Err(HookError::Unsupported)
    }
}

impl HookError {
    /// A [`HookError::Failed`] with `message`.
    pub fn failed(message: impl Into<String>) -> Self {
        HookError::Failed(message.into())
    }

    /// A [`HookError::Retryable`] with `message`.
    pub fn retryable(message: impl Into<String>) -> Self {
        HookError::Retryable(message.into())
    }

    /// A [`HookError::InvalidInput`] with `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        HookError::InvalidInput(message.into())
    }

    /// Prefix the message with `context` ("probe 127.0.0.1:11211: …"), keeping the kind.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        match self {
            HookError::Unsupported => HookError::Unsupported,
            HookError::InvalidInput(m) => HookError::InvalidInput(format!("{context}: {m}")),
            HookError::Retryable(m) => HookError::Retryable(format!("{context}: {m}")),
            HookError::Failed(m) => HookError::Failed(format!("{context}: {m}")),
        }
    }
}

/// I/O errors become hook errors: refused, reset and timed-out connections are `retryable`
/// (the engine may be starting or busy); a sandbox denial and everything else is `failed`.
/// WASI's `EIO`, which a socket read or write past its timeout reports on wasm32-wasip2
/// (shown as "I/O error (os error 29)", which says nothing to a reader).
const WASI_EIO: i32 = 29;

/// Whether `e` is the `EIO` WASI reports for a socket connect, read or write past its timeout.
pub(crate) fn is_wasi_timeout(e: &std::io::Error) -> bool {
    cfg!(target_os = "wasi") && e.raw_os_error() == Some(WASI_EIO)
}

/// The message a timed-out socket operation carries instead of WASI's "os error 29".
pub(crate) const NO_ANSWER_IN_TIME: &str =
    "no answer in time (timed out: the server is frozen, overloaded or unreachable)";

impl From<&std::io::Error> for HookError {
    fn from(e: &std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        if is_wasi_timeout(e) {
            return HookError::Retryable(NO_ANSWER_IN_TIME.into());
        }
        match e.kind() {
            // A bare read or write timeout ("Resource temporarily unavailable").
            TimedOut | WouldBlock if e.get_ref().is_none() => {
                HookError::Retryable(NO_ANSWER_IN_TIME.into())
            }
            ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut | WouldBlock
            | UnexpectedEof | Interrupted => HookError::Retryable(e.to_string()),
            PermissionDenied => HookError::Failed(format!("denied by the sandbox: {e}")),
            _ => HookError::Failed(e.to_string()),
        }
    }
}

impl From<std::io::Error> for HookError {
    fn from(e: std::io::Error) -> Self {
        HookError::from(&e)
    }
}

impl Instance {
    /// The port the host allocated under manifest port name `name`.
    pub fn port(&self, name: &str) -> Option<u16> {
        self.ports.iter().find(|p| p.name == name).map(|p| p.port)
    }

    /// [`Instance::port`], an `invalid-input` error naming the port when the host gave none.
    pub fn need_port(&self, name: &str) -> HookResult<u16> {
        self.port(name)
            .ok_or_else(|| HookError::invalid(format!("no port named {name:?} was allocated")))
    }

    /// `"host:port"` of the client endpoint.
    pub fn address(&self) -> String {
        self.endpoint.to_string()
    }

    /// The data directory, an `invalid-input` error when the host gave none.
    pub fn need_data_dir(&self) -> HookResult<&str> {
        need_dir(&self.data_dir, "data")
    }

    /// The config directory, an `invalid-input` error when the host gave none.
    pub fn need_config_dir(&self) -> HookResult<&str> {
        need_dir(&self.config_dir, "config")
    }
}

fn need_dir<'a>(d: &'a Option<String>, what: &str) -> HookResult<&'a str> {
    d.as_deref()
        .ok_or_else(|| HookError::invalid(format!("the host gave no {what} directory")))
}

impl RunPlan {
    /// Run `program` with `args` as the server, with the usual rest: no init commands, ready
    /// once the "client" port accepts connections, stopped by SIGTERM with 5 s of grace, run
    /// as an unprivileged user, no container image. Set fields on the value to change them.
    pub fn server<S: Into<String>>(program: &str, args: impl IntoIterator<Item = S>) -> Self {
        RunPlan {
            server: Command {
                program: program.to_string(),
                args: args.into_iter().map(Into::into).collect(),
                env: vec![],
            },
            init: vec![],
            readiness: crate::lifecycle::Readiness::TcpPort("client".into()),
            stop_signal: crate::lifecycle::StopSignal::Term,
            stop_timeout_ms: 5000,
            unprivileged: true,
            image: None,
        }
    }
}

impl crate::ha::RoleReport {
    /// A healthy instance in `role` with no replication position or lag: what a standalone
    /// engine's probe reports. Set the other fields on the value for more.
    pub fn healthy(role: &str, writable: bool, detail: impl Into<String>) -> Self {
        crate::ha::RoleReport {
            role: role.to_string(),
            writable,
            term: None,
            lag_bytes: None,
            lag_ms: None,
            health: crate::ha::Health::Healthy,
            position: None,
            detail: detail.into(),
        }
    }
}

impl Member {
    /// The port the host allocated under manifest port name `name`.
    pub fn port(&self, name: &str) -> Option<u16> {
        self.ports.iter().find(|p| p.name == name).map(|p| p.port)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Boolean(b) => write!(f, "{b}"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(s) => write!(f, "{s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_retryable_or_failed() {
        use std::io::{Error, ErrorKind};
        let slow = HookError::from(Error::from(ErrorKind::WouldBlock));
        assert!(matches!(slow, HookError::Retryable(ref m) if m.contains("no answer in time")));
        let named = HookError::from(Error::new(ErrorKind::TimedOut, "reading from x: 1s"));
        assert!(matches!(named, HookError::Retryable(ref m) if m == "reading from x: 1s"));
        let refused = HookError::from(Error::from(ErrorKind::ConnectionRefused));
        assert!(matches!(refused, HookError::Retryable(_)));
        let denied = HookError::from(Error::from(ErrorKind::PermissionDenied));
        assert!(matches!(denied, HookError::Failed(ref m) if m.contains("sandbox")));
        let ctx = HookError::retryable("x").context("probe 1.2.3.4:5");
        assert!(matches!(ctx, HookError::Retryable(ref m) if m == "probe 1.2.3.4:5: x"));
    }

    #[test]
    fn endpoints_print_ipv6_in_brackets() {
        let v4 = Endpoint {
            host: "10.0.0.1".into(),
            port: 5432,
        };
        let v6 = Endpoint {
            host: "::1".into(),
            port: 5432,
        };
        assert_eq!(v4.to_string(), "10.0.0.1:5432");
        assert_eq!(v6.to_string(), "[::1]:5432");
    }
}
