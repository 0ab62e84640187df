//! `shoal addon call FILE HOOK`: run one hook by hand, for debugging an addon against a real
//! server. The instance the hook sees is built from flags; the addon may connect only to
//! `--endpoint` and `--member` addresses (plus `--grant connect:…`), see only `--data-dir`,
//! `--config-dir` and `--preopen` directories, and run only `--grant exec:…` programs.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use shoal_runtime::wit::{
    Account, AccountRole, BackupInfo, Credentials, Endpoint, Hook, Instance, Member, NamedPort,
    Param, ParamChange, RecoveryTarget, Resources,
};
use shoal_runtime::{CallContext, CallError, Caller, HostSink, HostSource, LoadedAddon, RunAs};

use crate::output::{self, Format};
use crate::runtime_opts::RuntimeOpts;
use crate::Failure;

#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// The addon component (.wasm).
    pub file: PathBuf,
    /// The hook to call (manifest, run-spec, render-config, post-provision, pre-terminate,
    /// member-join, member-leave, account-provision, probe, promote, demote, switchover,
    /// rebuild, backup, restore, archive-continuous, restore-to-time, validate, classify,
    /// apply-dynamic, metrics).
    pub hook: String,
    /// Client endpoint of the instance (HOST:PORT); the addon may connect to it.
    #[arg(long, value_name = "HOST:PORT")]
    pub endpoint: Option<String>,
    /// Another named port of the instance (NAME=PORT). Repeatable.
    #[arg(long = "port", value_name = "NAME=PORT")]
    pub ports: Vec<String>,
    /// Instance name.
    #[arg(long, default_value = "cli-0")]
    pub name: String,
    /// Cluster name.
    #[arg(long, default_value = "cli")]
    pub cluster: String,
    /// Component name.
    #[arg(long, default_value = "main")]
    pub component: String,
    /// Engine version (default: the manifest's default version).
    #[arg(long)]
    pub engine_version: Option<String>,
    /// Role the host believes the instance holds.
    #[arg(long)]
    pub role: Option<String>,
    /// Term (fencing token) of the instance, and the term `promote` promotes to.
    #[arg(long, default_value_t = 1)]
    pub term: u64,
    /// set-sync: how many of the standbys (the --member list) must hold a commit.
    #[arg(long, default_value_t = 1)]
    pub quorum: u32,
    /// The platform account the hook connects with (`instance.credentials`), USER:PASSWORD.
    #[arg(long, value_name = "USER:PASSWORD")]
    pub credentials: Option<String>,
    /// Another member of the component (NAME=HOST:PORT, optionally @ROLE: `pg-0=127.0.0.1:5432@primary`);
    /// the addon may connect to it. Repeatable.
    #[arg(long = "member", value_name = "NAME=HOST:PORT[@ROLE]")]
    pub members: Vec<String>,
    /// The member a hook acts toward: joining/leaving member, demote's new primary,
    /// switchover candidate, rebuild source.
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
    /// Host directory shown to the addon as the instance's data directory (/data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Host directory shown to the addon as the instance's config directory (/config).
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Another directory for the addon (HOST_DIR:GUEST_PATH[:ro]). Repeatable.
    #[arg(long = "preopen", value_name = "HOST:GUEST[:ro]")]
    pub preopens: Vec<String>,
    /// Parameter NAME=VALUE, typed by the manifest's schema ("64MB", "30s"). Repeatable.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Backup method (backup).
    #[arg(long)]
    pub method: Option<String>,
    /// File the backup or archive stream is written to (backup, archive-continuous).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// File the restore stream is read from (restore).
    #[arg(long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Backup info as printed by `call … backup -o json` (restore, restore-to-time).
    #[arg(long, value_name = "FILE")]
    pub info: Option<PathBuf>,
    /// Archive unit to continue after (archive-continuous).
    #[arg(long)]
    pub after: Option<String>,
    /// Recovery target: latest, time:UNIX_MS or position:POS (restore-to-time).
    #[arg(long, default_value = "latest")]
    pub recovery_target: String,
    /// Guest path of the staged archive (restore-to-time).
    #[arg(long, default_value = "/archive")]
    pub archive_dir: String,
    /// write-marker, read-markers: a marker key (read-markers takes several).
    #[arg(long = "key", value_name = "KEY")]
    pub keys: Vec<String>,
    /// write-marker: the value to store.
    #[arg(long, value_name = "TEXT")]
    pub value: Option<String>,
    /// Account USER:PASSWORD to provision (account-provision).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub account: Option<String>,
    /// Role of the provisioned account: superuser, read-write, read-only, replication, monitor.
    #[arg(long, default_value = "read-write")]
    pub account_role: String,
    /// OS user that programs run by the addon's `exec` run as.
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// Call the hook this many times and report timings.
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// Keep one addon instance across repeated calls (how the probe loop runs).
    #[arg(long)]
    pub live: bool,
    #[arg(short, long, value_enum, default_value_t = Format::Json)]
    pub output: Format,
    #[command(flatten)]
    pub runtime: RuntimeOpts,
}

/// Most calls `--repeat` makes.
const MAX_REPEAT: u32 = 1_000_000;

/// Labels the CLI adds to backup info to verify the file on restore.
const SIZE_LABEL: &str = "shoal.size";
const SHA256_LABEL: &str = "shoal.sha256";

pub async fn run(args: CallArgs) -> Result<(), Failure> {
    let hook = Hook::from_name(&args.hook).ok_or_else(|| {
        let names: Vec<&str> = Hook::ALL.iter().map(|h| h.name()).collect();
        Failure::usage(format!(
            "unknown hook {:?}; hooks: {}",
            args.hook,
            names.join(", ")
        ))
    })?;
    if args.repeat == 0 || args.repeat > MAX_REPEAT {
        return Err(Failure::usage(format!(
            "--repeat must be between 1 and {MAX_REPEAT}"
        )));
    }
    let (_rt, addon) = args.runtime.load(&args.file).await?;
    let (mut instance, members, mut endpoints) = topology(&args, &addon)?;
    if matches!(hook, Hook::RunSpec | Hook::RenderConfig) {
        // These hooks describe the server process, which sees the host paths themselves.
        let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
        instance.data_dir = args.data_dir.as_ref().map(|p| abs(p).display().to_string());
        instance.config_dir = args
            .config_dir
            .as_ref()
            .map(|p| abs(p).display().to_string());
    }
    let params = parse_params(&args.params, &addon)?;
    endpoints.sort();
    endpoints.dedup();
    let ctx = if matches!(hook, Hook::RunSpec | Hook::RenderConfig) {
        // Pure hooks: no directories.
        CallContext::endpoints(endpoints)
    } else {
        call_context(&args, endpoints)?
    };

    let live = args.live.then(|| addon.live(ctx.clone()));
    let mut times = Vec::with_capacity(args.repeat as usize);
    let mut last = None;
    for _ in 0..args.repeat {
        let caller = match &live {
            Some(l) => l.call(),
            None => addon.call(&ctx),
        };
        let started = Instant::now();
        let out = dispatch(&caller, hook, &args, &instance, &members, &params).await;
        times.push(started.elapsed());
        if let Some(stats) = caller.last_stats() {
            if stats.logs.dropped_lines > 0 {
                eprintln!(
                    "shoal: the addon's log budget ran out: {} lines ({}) dropped",
                    stats.logs.dropped_lines,
                    output::bytes(stats.logs.dropped_bytes)
                );
            }
        }
        match out {
            Ok(v) => last = Some(v),
            Err(e) => return Err(e.into()),
        }
    }
    if args.repeat > 1 {
        report_times(&mut times);
    }
    let value = last.unwrap_or(serde_json::Value::Null);
    output::emit(args.output, &value, || {
        output::printable_lines(&text_of(&value))
    })
}

fn text_of(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "ok\n".into(),
        other => serde_yaml::to_string(other).unwrap_or_else(|_| format!("{other}\n")),
    }
}

fn report_times(times: &mut [Duration]) {
    times.sort();
    let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "shoal: {} calls: median {:?}, p99 {:?}, max {:?}",
        times.len(),
        pick(0.5),
        pick(0.99),
        times[times.len() - 1]
    );
}

fn json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

async fn dispatch(
    c: &Caller<'_>,
    hook: Hook,
    args: &CallArgs,
    instance: &Instance,
    members: &[Member],
    params: &[Param],
) -> Result<serde_json::Value, CallOrUsage> {
    let target = || -> Result<&Member, CallOrUsage> {
        let name = args.target.as_deref().ok_or_else(|| {
            usage(format!(
                "{hook} needs --target NAME (one of the --member names)"
            ))
        })?;
        members
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| usage(format!("--target {name}: no --member of that name")))
    };
    let changes: Vec<ParamChange> = params
        .iter()
        .map(|p| ParamChange {
            name: p.name.clone(),
            old_value: None,
            new_value: Some(p.value.clone()),
        })
        .collect();
    Ok(match hook {
        Hook::Manifest => json(&c.manifest().await?),
        Hook::RunSpec => json(&c.run_spec(instance, members, params).await?),
        Hook::RenderConfig => {
            let files = c.render_config(instance, members, params).await?;
            let rendered: Vec<serde_json::Value> = files
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "path": f.path,
                        "mode": format!("{:o}", f.mode),
                        "contents": String::from_utf8_lossy(&f.contents),
                    })
                })
                .collect();
            serde_json::Value::Array(rendered)
        }
        Hook::PostProvision => json(&c.post_provision(instance, members).await?),
        Hook::PreTerminate => json(&c.pre_terminate(instance, members).await?),
        Hook::MemberJoin => json(&c.member_join(instance, target()?, members).await?),
        Hook::MemberLeave => json(&c.member_leave(instance, target()?, members).await?),
        Hook::FormShards => json(&c.form_shards(instance, members).await?),
        Hook::AccountProvision => {
            let (user, password) = split_credentials(
                args.account
                    .as_deref()
                    .ok_or_else(|| usage("account-provision needs --account USER:PASSWORD"))?,
            )
            .map_err(usage)?;
            let role = parse_account_role(&args.account_role).map_err(usage)?;
            let account = Account {
                credentials: Credentials {
                    username: user,
                    password,
                },
                role,
            };
            json(&c.account_provision(instance, &account).await?)
        }
        Hook::Probe => json(&c.probe(instance, members).await?),
        Hook::Promote => json(&c.promote(instance, args.term, members).await?),
        Hook::Demote => {
            let new_primary = match &args.target {
                Some(_) => Some(target()?),
                None => None,
            };
            json(&c.demote(instance, new_primary, members).await?)
        }
        Hook::Switchover => json(&c.switchover(instance, target()?, members).await?),
        Hook::Rebuild => json(&c.rebuild(instance, target()?, members).await?),
        Hook::SetSync => json(&c.set_sync(instance, members, args.quorum).await?),
        Hook::RecoverQuorum => json(&c.recover_quorum(instance, params).await?),
        Hook::Backup => {
            let method = args
                .method
                .as_deref()
                .ok_or_else(|| usage("backup needs --method (see `shoal addon inspect`)"))?;
            let (file, path) = create_out(args.out.as_ref(), "backup")?;
            let (writer, digest) = Digesting::new(&file, &path)?;
            let (mut info, sink) = c
                .backup(instance, method, params, HostSink::new(writer))
                .await
                .inspect_err(|_| discard(&path))?;
            if let Err(e) = file.sync_all() {
                discard(&path);
                return Err(usage(format!("cannot sync {}: {e}", path.display())));
            }
            let (size, sha256) = digest.finish();
            info.labels
                .retain(|(k, _)| k != SIZE_LABEL && k != SHA256_LABEL);
            info.labels.push((SIZE_LABEL.into(), size.to_string()));
            info.labels.push((SHA256_LABEL.into(), sha256.clone()));
            eprintln!(
                "shoal: wrote {} to {} (sha256 {})",
                output::bytes(sink.bytes_written()),
                path.display(),
                &sha256[..16]
            );
            json(&info)
        }
        Hook::Restore => {
            let info = read_info(args.info.as_ref())?;
            let path = args
                .input
                .as_ref()
                .ok_or_else(|| usage("restore needs --in FILE"))?;
            let expected = verify_file(path, &info)?;
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|e| usage(format!("cannot open {}: {e}", path.display())))?;
            let read = c
                .restore(instance, members, &info, HostSource::new(file), false)
                .await?;
            if let Some(size) = expected {
                if read != size {
                    return Err(CallOrUsage::Call(CallError {
                        addon: instance.cluster.clone(),
                        hook,
                        failure: shoal_runtime::CallFailure::Stream(format!(
                            "the addon read {read} of the backup's {size} bytes and reported \
                             success; the restore is incomplete"
                        )),
                    }));
                }
            }
            eprintln!(
                "shoal: restored {} from {}",
                output::bytes(read),
                path.display()
            );
            serde_json::Value::Null
        }
        Hook::ArchiveContinuous => {
            let (file, path) = create_out(args.out.as_ref(), "archive-continuous")?;
            let (unit, sink) = c
                .archive_continuous(
                    instance,
                    args.after.as_deref(),
                    HostSink::new(tokio::fs::File::from_std(file)),
                )
                .await
                .inspect_err(|_| discard(&path))?;
            if unit.is_none() {
                discard(&path);
                eprintln!("shoal: no new archive unit yet; nothing written");
            } else {
                eprintln!(
                    "shoal: wrote {} to {}",
                    output::bytes(sink.bytes_written()),
                    path.display()
                );
            }
            json(&unit)
        }
        Hook::RestoreToTime => {
            let info = read_info(args.info.as_ref())?;
            let target = parse_recovery_target(&args.recovery_target).map_err(usage)?;
            json(
                &c.restore_to_time(instance, &info, &target, &args.archive_dir)
                    .await?,
            )
        }
        Hook::Validate => json(&c.validate(params).await?),
        Hook::Classify => json(&c.classify(&changes).await?),
        Hook::ApplyDynamic => json(&c.apply_dynamic(instance, &changes).await?),
        Hook::Effective => json(&c.effective(params, instance.resources).await?),
        Hook::Metrics => json(&c.metrics(instance).await?),
        Hook::WriteMarker => {
            let (Some(key), Some(value)) = (args.keys.first(), args.value.as_deref()) else {
                return Err(usage("write-marker needs --key KEY and --value TEXT"));
            };
            json(&c.write_marker(instance, members, key, value).await?)
        }
        Hook::ReadMarkers => json(&c.read_markers(instance, members, &args.keys).await?),
    })
}

/// A failed call, or bad flags discovered while dispatching.
enum CallOrUsage {
    Call(CallError),
    Usage(String),
}

impl From<CallError> for CallOrUsage {
    fn from(e: CallError) -> Self {
        CallOrUsage::Call(e)
    }
}

impl std::fmt::Display for CallOrUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallOrUsage::Call(e) => write!(f, "{e}"),
            CallOrUsage::Usage(m) => f.write_str(m),
        }
    }
}

fn usage(m: impl Into<String>) -> CallOrUsage {
    CallOrUsage::Usage(m.into())
}

impl From<CallOrUsage> for Failure {
    fn from(e: CallOrUsage) -> Self {
        match e {
            CallOrUsage::Call(e) => Failure::call(e.to_string()),
            CallOrUsage::Usage(m) => Failure::usage(m),
        }
    }
}

fn create_out(path: Option<&PathBuf>, hook: &str) -> Result<(std::fs::File, PathBuf), CallOrUsage> {
    let path = path.ok_or_else(|| usage(format!("{hook} needs --out FILE")))?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            usage(format!(
                "cannot create {} (it must not exist yet): {e}",
                path.display()
            ))
        })?;
    Ok((file, path.clone()))
}

/// A file writer that counts and hashes what passes through.
struct Digesting {
    inner: tokio::fs::File,
    state: std::sync::Arc<std::sync::Mutex<(u64, sha2::Sha256)>>,
}

/// The running count and hash of a [`Digesting`] writer.
struct DigestHandle(std::sync::Arc<std::sync::Mutex<(u64, sha2::Sha256)>>);

impl Digesting {
    fn new(
        file: &std::fs::File,
        path: &std::path::Path,
    ) -> Result<(Digesting, DigestHandle), CallOrUsage> {
        use sha2::Digest;
        let clone = file
            .try_clone()
            .map_err(|e| usage(format!("cannot use {}: {e}", path.display())))?;
        let state = std::sync::Arc::new(std::sync::Mutex::new((0, sha2::Sha256::new())));
        Ok((
            Digesting {
                inner: tokio::fs::File::from_std(clone),
                state: state.clone(),
            },
            DigestHandle(state),
        ))
    }
}

impl DigestHandle {
    fn finish(self) -> (u64, String) {
        use sha2::Digest;
        let guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (guard.0, hex::encode(guard.1.clone().finalize()))
    }
}

impl tokio::io::AsyncWrite for Digesting {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use sha2::Digest;
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.0 += *n as u64;
            s.1.update(&buf[..*n]);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Check `path` against the size and sha256 the backup recorded; returns the size to expect
/// the restore to read. A file without recorded checksums is restored with a warning.
fn verify_file(path: &std::path::Path, info: &BackupInfo) -> Result<Option<u64>, CallOrUsage> {
    use sha2::Digest;
    use std::io::Read;
    let label = |k: &str| {
        info.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let (Some(size), Some(sha)) = (label(SIZE_LABEL), label(SHA256_LABEL)) else {
        eprintln!(
            "shoal: warning: the backup info records no size or checksum; the file is not verified"
        );
        return Ok(None);
    };
    let size: u64 = size.parse().map_err(|_| {
        usage(format!(
            "backup info: {SIZE_LABEL} {size:?} is not a number"
        ))
    })?;
    let mut file = std::fs::File::open(path)
        .map_err(|e| usage(format!("cannot open {}: {e}", path.display())))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let actual = hex::encode(hasher.finalize());
    if total != size || !actual.eq_ignore_ascii_case(&sha) {
        return Err(usage(format!(
            "{} is damaged: {total} bytes with sha256 {actual}, but the backup recorded {size} \
             bytes with sha256 {sha}; nothing was restored",
            path.display()
        )));
    }
    Ok(Some(size))
}

/// Remove an output file this command created, after the hook that was filling it failed: a
/// partial backup must not look like a finished one.
fn discard(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path) {
        eprintln!(
            "shoal: could not remove the partial output {}: {e}",
            path.display()
        );
    }
}

fn read_info(path: Option<&PathBuf>) -> Result<BackupInfo, CallOrUsage> {
    let path = path.ok_or_else(|| usage("needs --info FILE (the JSON `call … backup` printed)"))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| usage(format!("{}: not backup info JSON: {e}", path.display())))
}

/// The instance, its members and every address they resolve to (the call's endpoints).
fn topology(
    args: &CallArgs,
    addon: &LoadedAddon,
) -> Result<(Instance, Vec<Member>, Vec<SocketAddr>), Failure> {
    let mut endpoints = Vec::new();
    let (endpoint, mut ports) = match &args.endpoint {
        Some(text) => {
            let addr = resolve(text)?;
            endpoints.push(addr);
            (
                Endpoint {
                    host: addr.ip().to_string(),
                    port: addr.port(),
                },
                vec![NamedPort {
                    name: "client".into(),
                    port: addr.port(),
                }],
            )
        }
        None => (
            Endpoint {
                host: "127.0.0.1".into(),
                port: 0,
            },
            Vec::new(),
        ),
    };
    for p in &args.ports {
        let (name, port) = p
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("--port {p:?}: expected NAME=PORT")))?;
        let port: u16 = port
            .parse()
            .map_err(|_| Failure::usage(format!("--port {p:?}: {port:?} is not a port number")))?;
        ports.push(NamedPort {
            name: name.to_string(),
            port,
        });
    }
    let mut members = Vec::new();
    for m in &args.members {
        let (name, rest) = m.split_once('=').ok_or_else(|| {
            Failure::usage(format!("--member {m:?}: expected NAME=HOST:PORT[@ROLE]"))
        })?;
        let (addr, role) = match rest.rsplit_once('@') {
            Some((a, r)) => (a, Some(r.to_string())),
            None => (rest, None),
        };
        let addr = resolve(addr)?;
        endpoints.push(addr);
        members.push(Member {
            name: name.to_string(),
            endpoint: Endpoint {
                host: addr.ip().to_string(),
                port: addr.port(),
            },
            ports: vec![NamedPort {
                name: "client".into(),
                port: addr.port(),
            }],
            role,
            healthy: true,
            shard: None,
        });
    }
    let engine_version = match &args.engine_version {
        Some(v) => {
            if !addon.manifest().versions.iter().any(|x| &x.version == v) {
                let known: Vec<&str> = addon
                    .manifest()
                    .versions
                    .iter()
                    .map(|x| x.version.as_str())
                    .collect();
                return Err(Failure::usage(format!(
                    "--engine-version {v}: {} supports {}",
                    addon.engine(),
                    known.join(", ")
                )));
            }
            v.clone()
        }
        None => addon
            .manifest()
            .versions
            .iter()
            .find(|v| v.is_default)
            .map(|v| v.version.clone())
            .unwrap_or_default(),
    };
    let credentials = match &args.credentials {
        Some(c) => {
            let (username, password) = split_credentials(c).map_err(Failure::usage)?;
            Some(Credentials { username, password })
        }
        None => None,
    };
    let instance = Instance {
        cluster: args.cluster.clone(),
        component: args.component.clone(),
        name: args.name.clone(),
        engine_version,
        endpoint,
        ports,
        data_dir: args.data_dir.as_ref().map(|_| "/data".to_string()),
        config_dir: args.config_dir.as_ref().map(|_| "/config".to_string()),
        archive_dir: None,
        role: args.role.clone(),
        shard: None,
        term: args.term,
        credentials,
        resources: Resources {
            cpu_millis: 0,
            memory_bytes: 0,
            storage_bytes: 0,
        },
    };
    Ok((instance, members, endpoints))
}

fn resolve(text: &str) -> Result<SocketAddr, Failure> {
    text.to_socket_addrs()
        .map_err(|e| Failure::usage(format!("{text:?} is not a HOST:PORT address: {e}")))?
        .next()
        .ok_or_else(|| Failure::usage(format!("{text:?} resolves to no address")))
}

fn call_context(args: &CallArgs, endpoints: Vec<SocketAddr>) -> Result<CallContext, Failure> {
    let mut ctx = CallContext::endpoints(endpoints);
    if let Some(d) = &args.data_dir {
        ctx = ctx.preopen(d, "/data", true);
    }
    if let Some(d) = &args.config_dir {
        ctx = ctx.preopen(d, "/config", true);
    }
    for p in &args.preopens {
        let mut parts = p.splitn(3, ':');
        let (Some(host), Some(guest)) = (parts.next(), parts.next()) else {
            return Err(Failure::usage(format!(
                "--preopen {p:?}: expected HOST_DIR:GUEST_PATH[:ro]"
            )));
        };
        let writable = match parts.next() {
            None | Some("rw") => true,
            Some("ro") => false,
            Some(other) => {
                return Err(Failure::usage(format!(
                    "--preopen {p:?}: {other:?} is neither ro nor rw"
                )))
            }
        };
        ctx = ctx.preopen(host, guest, writable);
    }
    if let Some(user) = &args.run_as {
        ctx.run_as = Some(lookup_user(user)?);
    }
    ctx.progress = Some(std::sync::Arc::new(|p: &shoal_runtime::Progress| {
        match p.total {
            Some(t) if t > 0 => eprintln!(
                "shoal: {:5.1}% {}",
                p.done as f64 * 100.0 / t as f64,
                p.message
            ),
            _ => eprintln!("shoal: {} {}", p.done, p.message),
        }
    }));
    Ok(ctx)
}

fn lookup_user(name: &str) -> Result<RunAs, Failure> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| Failure::usage(format!("--run-as {name:?}: not a user name")))?;
    // SAFETY: getpwnam takes a NUL-terminated string and returns a pointer into static
    // storage (or null); the fields are copied out before any other call.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(Failure::usage(format!("--run-as {name}: no such user")));
    }
    // SAFETY: `pw` is non-null and points to a valid passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(RunAs { uid, gid })
}

fn split_credentials(text: &str) -> Result<(String, String), String> {
    text.split_once(':')
        .map(|(u, p)| (u.to_string(), p.to_string()))
        .filter(|(u, _)| !u.is_empty())
        .ok_or_else(|| format!("{text:?}: expected USER:PASSWORD"))
}

fn parse_account_role(text: &str) -> Result<AccountRole, String> {
    Ok(match text {
        "superuser" => AccountRole::Superuser,
        "read-write" => AccountRole::ReadWrite,
        "read-only" => AccountRole::ReadOnly,
        "replication" => AccountRole::Replication,
        "monitor" => AccountRole::Monitor,
        other => {
            return Err(format!(
                "--account-role {other:?}: expected superuser, read-write, read-only, replication or monitor"
            ))
        }
    })
}

fn parse_recovery_target(text: &str) -> Result<RecoveryTarget, String> {
    if text == "latest" {
        return Ok(RecoveryTarget::Latest);
    }
    if let Some(ms) = text.strip_prefix("time:") {
        return ms
            .parse()
            .map(RecoveryTarget::TimeUnixMs)
            .map_err(|_| format!("--recovery-target {text:?}: time must be Unix milliseconds"));
    }
    if let Some(pos) = text.strip_prefix("position:") {
        return Ok(RecoveryTarget::Position(pos.to_string()));
    }
    Err(format!(
        "--recovery-target {text:?}: expected latest, time:UNIX_MS or position:POS"
    ))
}

/// Parse `NAME=VALUE` flags into typed parameters using the addon's schema.
fn parse_params(flags: &[String], addon: &LoadedAddon) -> Result<Vec<Param>, Failure> {
    let schema = &addon.manifest().parameters;
    flags
        .iter()
        .map(|f| {
            let (name, text) = f
                .split_once('=')
                .ok_or_else(|| Failure::usage(format!("--param {f:?}: expected NAME=VALUE")))?;
            let spec = schema.iter().find(|s| s.name == name).ok_or_else(|| {
                let known: Vec<&str> = schema.iter().map(|s| s.name.as_str()).collect();
                Failure::usage(format!(
                    "--param {name}: {} has no such parameter (it has: {})",
                    addon.engine(),
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ))
            })?;
            let value = shoal_runtime::params::parse_value(&spec.type_, text)
                .map_err(|e| Failure::usage(format!("--param {name}: {e}")))?;
            Ok(Param {
                name: name.to_string(),
                value,
            })
        })
        .collect()
}
