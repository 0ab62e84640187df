//! `shoal serve` and `shoal cluster …`: the daemon, and the kubectl-style commands that talk
//! to it over its local socket. Mutating commands wait for their operation and show its
//! events as they happen (`--no-wait` returns at once); reads take `-o table|json|yaml`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use shoal_api::{
    ClientError, ClusterSpec, ClusterView, ConnectInfo, EngineView, ErrorKind, EventView, OpState,
    OpView, Reply, Request,
};

use crate::output;
use crate::Failure;

/// Output of read commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Shoal home (state, clusters, socket). Default: $SHOAL_HOME; as root /var/lib/shoal;
    /// else ~/.local/share/shoal.
    #[arg(long, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Host configuration file (default: HOME/config.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Addon files or directories to load (default: HOME/addons). Repeatable.
    #[arg(long = "addons", value_name = "PATH")]
    pub addons: Vec<PathBuf>,
    /// This host's name in the coordination store (overrides `[ha] host_id`). Two hosts
    /// sharing a home with etcd need different ones.
    #[arg(long, value_name = "ID")]
    pub host_id: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct EndpointsArgs {
    /// Shoal home (default as for `shoal serve`).
    #[arg(long, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// The host whose endpoints these are.
    #[arg(long, value_name = "ID")]
    pub host_id: String,
}

/// `shoal endpoints`: serve the stable endpoints of `--host-id`'s clusters until killed.
pub async fn endpoints(args: EndpointsArgs) -> Result<(), Failure> {
    shoal_control::endpoints::run(home_or_default(&args.home), args.host_id)
        .await
        .map_err(Failure::call)
}

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Shoal home of the daemon to talk to (default as for `shoal serve`).
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster and wait until it is ready.
    Create(Box<CreateArgs>),
    /// List clusters.
    List {
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Table)]
        output: ReadFormat,
    },
    /// Show a cluster: instances, roles, ports, health, lag, data directories, resources.
    Describe {
        name: String,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Table)]
        output: ReadFormat,
    },
    /// Print how to connect (or open the engine's shell with --shell).
    Connect {
        name: String,
        /// Open the engine's interactive client (psql for PostgreSQL).
        #[arg(long)]
        shell: bool,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Table)]
        output: ReadFormat,
    },
    /// Change the password of the account users get (a new random one, or one read from
    /// stdin with --password-stdin), on every instance; then print how to connect. The
    /// platform's own account is not touched. Change passwords here, not inside the engine:
    /// a password Shoal does not know is not the one `connect` hands out.
    Password {
        name: String,
        /// Read the new password from the first line of stdin (12-128 printable characters,
        /// no quotes, backslashes or spaces) instead of generating one.
        #[arg(long)]
        password_stdin: bool,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Table)]
        output: ReadFormat,
    },
    /// Stop every instance (replicas first, primary last).
    Stop(OpArgs),
    /// Start every instance (primary first).
    Start(OpArgs),
    /// Rolling restart: replicas one at a time, then the primary.
    Restart(OpArgs),
    /// Change the number of instances (--replicas), or the CPU and memory of every instance
    /// (--cpu, --memory: a rolling restart; memory-derived settings follow).
    Scale {
        name: String,
        #[arg(long, conflicts_with_all = ["cpu", "memory"], required_unless_present_any = ["cpu", "memory"], allow_negative_numbers = true, value_parser = positive_u32)]
        replicas: Option<u32>,
        /// CPU per instance ("500m", "2").
        #[arg(long)]
        cpu: Option<String>,
        /// Memory per instance ("512Mi", "2Gi").
        #[arg(long)]
        memory: Option<String>,
        /// Show what would change (instances added or removed, parameters re-derived);
        /// change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        follow: Follow,
    },
    /// Show or change a cluster's parameters: `config NAME`, `config set NAME k=v …`,
    /// `config unset NAME k …`, `config history NAME`, `config rollback NAME [--to N]`.
    Config(crate::config::ConfigArgs),
    /// Delete a cluster; its data stays (moved aside, the name free again) unless --purge.
    /// With --purge and no cluster of that name, removes the data kept by earlier deletes.
    Delete {
        name: String,
        /// Remove the data directories, credentials and OS user too (asks for the cluster's
        /// name first on a terminal; --yes in scripts).
        #[arg(long)]
        purge: bool,
        /// Do not ask for confirmation (scripts).
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        follow: Follow,
    },
    /// Planned change of primary: to --to, or the most caught-up healthy replica. Refused
    /// when the candidate is unhealthy or lagging.
    Switchover {
        name: String,
        /// The replica to promote.
        #[arg(long, value_name = "INSTANCE")]
        to: Option<String>,
        #[command(flatten)]
        follow: Follow,
    },
    /// Create a new cluster from a backup (its checksums verified before the database
    /// starts), with the backed-up cluster's engine, version and settings.
    Restore {
        name: String,
        /// Backup id (`shoal backup list`).
        #[arg(long, value_name = "ID")]
        from_backup: String,
        /// Instances of the new cluster (default: as the backed-up cluster).
        #[arg(long)]
        replicas: Option<u32>,
        /// Replay the backed-up cluster's continuous archive up to this moment
        /// ('2026-11-24T08:02:59Z', '2026-11-24 08:02:59.540+00'; no zone: UTC).
        #[arg(long, value_name = "TIME")]
        to_time: Option<String>,
        #[command(flatten)]
        follow: Follow,
    },
    /// Re-seed a replica from the primary: rewind it, or copy it afresh if that fails.
    Rebuild {
        name: String,
        instance: String,
        #[command(flatten)]
        follow: Follow,
    },
    /// Recover a quorum cluster that lost its quorum: the most advanced member restarts
    /// alone as a new cluster keeping its data (etcd's --force-new-cluster), then the others
    /// are added back with fresh data. Writes only the lost members had are gone.
    Recover {
        name: String,
        /// Required: say that you accept losing what only the lost members had.
        #[arg(long)]
        force_new_cluster: bool,
        #[command(flatten)]
        follow: Follow,
    },
    /// Recent events of a cluster.
    Events {
        name: String,
        /// The newest this many.
        #[arg(long, default_value_t = 100, allow_negative_numbers = true, value_parser = positive_u32)]
        limit: u32,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Table)]
        output: ReadFormat,
    },
    /// Every running instance's metrics, read now through its addon.
    Metrics {
        name: String,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Table)]
        output: ReadFormat,
        /// Print the Prometheus text exposition format (labels `cluster` and `instance`
        /// added), e.g. for a node-exporter textfile collector.
        #[arg(long, conflicts_with = "output")]
        prometheus: bool,
    },
    /// Instance logs (all instances, or one).
    Logs {
        name: String,
        instance: Option<String>,
        /// Lines from the end of each log.
        #[arg(long, default_value_t = 100, allow_negative_numbers = true, value_parser = positive_u32)]
        tail: u32,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
    },
    /// Follow an operation (one started with --no-wait, say) to its end, printing its
    /// events; exit code 0 when it succeeded, 1 when it failed.
    Wait {
        /// The operation's id (printed when it was queued).
        #[arg(value_parser = positive_i64)]
        op: i64,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Table)]
        output: ReadFormat,
    },
    /// Engines the daemon has loaded.
    Engines {
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Table)]
        output: ReadFormat,
    },
}

#[derive(Debug, clap::Args)]
pub struct OpArgs {
    pub name: String,
    #[command(flatten)]
    pub follow: Follow,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Cluster name (or take it from -f): 1-40 lowercase letters, digits and dashes.
    pub name: Option<String>,
    /// The engine: the name of a loaded addon (`shoal cluster engines` lists them).
    #[arg(long)]
    pub engine: Option<String>,
    /// The engine version (default: the addon's default; `shoal cluster engines` lists
    /// them).
    #[arg(long)]
    pub version: Option<String>,
    /// Instances: 1 = standalone, more = a primary and replicas. With --shards, the members
    /// of each shard.
    #[arg(long, allow_negative_numbers = true, value_parser = positive_u32)]
    pub replicas: Option<u32>,
    /// Split the data across this many shards (engines with a sharded topology), each a
    /// group of --replicas members the engine fails over itself.
    #[arg(long, allow_negative_numbers = true, value_parser = positive_u32)]
    pub shards: Option<u32>,
    /// CPU per instance ("500m", "2").
    #[arg(long)]
    pub cpu: Option<String>,
    /// Memory per instance ("512Mi", "4Gi").
    #[arg(long)]
    pub memory: Option<String>,
    /// Storage per instance ("10Gi").
    #[arg(long)]
    pub storage: Option<String>,
    /// Engine parameter NAME=VALUE (`shoal addon inspect` lists them). Repeatable.
    #[arg(long = "set", visible_alias = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// A cluster spec (YAML or JSON); flags override its fields.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub follow: Follow,
}

fn home_or_default(h: &Option<PathBuf>) -> PathBuf {
    h.clone().unwrap_or_else(shoal_control::default_home)
}

/// `shoal serve`.
pub async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let home = home_or_default(&args.home);
    let mut cfg =
        shoal_control::HostConfig::load(&home, args.config.as_deref()).map_err(Failure::usage)?;
    if !args.addons.is_empty() {
        cfg.addons = args.addons.clone();
    }
    if let Some(id) = &args.host_id {
        cfg.ha.host_id = Some(id.clone());
        cfg.validate().map_err(Failure::usage)?;
    }
    shoal_control::serve(home, cfg)
        .await
        .map_err(Failure::usage)
}

pub(crate) fn api_failure(e: ClientError) -> Failure {
    match &e {
        ClientError::Api(a) => match a.kind {
            ErrorKind::Invalid | ErrorKind::NotFound | ErrorKind::Conflict => {
                Failure::usage(a.message.clone())
            }
            ErrorKind::Internal | ErrorKind::Failed => Failure::call(a.message.clone()),
        },
        ClientError::Connect { .. } => Failure::usage(e.to_string()),
        _ => Failure::call(e.to_string()),
    }
}

pub(crate) async fn client(home: &Option<PathBuf>) -> Result<shoal_api::Client, Failure> {
    shoal_api::Client::connect(&home_or_default(home))
        .await
        .map_err(api_failure)
}

/// `shoal cluster …`.
pub async fn run(args: ClusterArgs) -> Result<(), Failure> {
    let mut c = client(&args.home).await?;
    match args.command {
        ClusterCommand::Create(a) => {
            let spec = create_spec(&a)?;
            let op: OpView = c
                .call_as(&Request::Create { spec }, |_| {})
                .await
                .map_err(api_failure)?;
            finish_op(&mut c, op, a.follow).await
        }
        ClusterCommand::List { output } => {
            let v: Vec<ClusterView> = c
                .call_as(&Request::List, |_| {})
                .await
                .map_err(api_failure)?;
            emit(output, &v, || list_table(&v))
        }
        ClusterCommand::Describe { name, output } => {
            let v: ClusterView = c
                .call_as(&Request::Describe { name }, |_| {})
                .await
                .map_err(api_failure)?;
            emit(output, &v, || describe_text(&v))
        }
        ClusterCommand::Connect {
            name,
            shell,
            output,
        } => {
            let v: ConnectInfo = c
                .call_as(&Request::Connect { name }, |_| {})
                .await
                .map_err(api_failure)?;
            if shell {
                return open_shell(&v);
            }
            emit(output, &v, || connect_text(&v))
        }
        ClusterCommand::Stop(a) => {
            simple_op(&mut c, Request::Stop { name: a.name }, a.follow).await
        }
        ClusterCommand::Start(a) => {
            simple_op(&mut c, Request::Start { name: a.name }, a.follow).await
        }
        ClusterCommand::Restart(a) => {
            simple_op(&mut c, Request::Restart { name: a.name }, a.follow).await
        }
        ClusterCommand::Scale {
            name,
            replicas: Some(replicas),
            dry_run,
            follow,
            ..
        } => {
            let plan: shoal_api::ScalePlanView = c
                .call_as(
                    &Request::Scale {
                        name,
                        replicas,
                        dry_run,
                    },
                    |_| {},
                )
                .await
                .map_err(api_failure)?;
            eprintln!(
                "{}: {} -> {} instance(s){}{}{}",
                plan.cluster,
                plan.from,
                plan.to,
                if plan.add.is_empty() {
                    String::new()
                } else {
                    format!("; adds {}", plan.add.join(", "))
                },
                if plan.remove.is_empty() {
                    String::new()
                } else {
                    format!("; removes {} (with their data)", plan.remove.join(", "))
                },
                if dry_run {
                    " (dry run: nothing changed)"
                } else {
                    ""
                }
            );
            match plan.op {
                Some(op) => finish_op(&mut c, op, follow).await,
                None => Ok(()),
            }
        }
        ClusterCommand::Scale {
            name,
            replicas: None,
            cpu,
            memory,
            dry_run,
            follow,
        } => crate::config::resize(&mut c, name, cpu, memory, dry_run, follow).await,
        ClusterCommand::Config(a) => crate::config::run(&mut c, a).await,
        ClusterCommand::Wait { op, output } => wait_op(&mut c, op, output).await,
        ClusterCommand::Password {
            name,
            password_stdin,
            output,
        } => {
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
                Some(line.trim_end_matches(['\n', '\r']).to_string())
            } else {
                None
            };
            let op: OpView = c
                .call_as(
                    &Request::Password {
                        name: name.clone(),
                        password,
                    },
                    |_| {},
                )
                .await
                .map_err(api_failure)?;
            wait_op(&mut c, op.id, ReadFormat::Table).await?;
            let v: ConnectInfo = c
                .call_as(&Request::Connect { name }, |_| {})
                .await
                .map_err(api_failure)?;
            emit(output, &v, || connect_text(&v))
        }
        ClusterCommand::Delete {
            name,
            purge,
            yes,
            follow,
        } => {
            if purge {
                confirm(
                    &format!(
                        "This deletes cluster {name} with its data (or the data kept from an \
                         earlier delete of it) for good."
                    ),
                    &name,
                    yes,
                )?;
            }
            let req = Request::Delete {
                name: name.clone(),
                purge,
            };
            match c.call_as::<OpView>(&req, |_| {}).await {
                Ok(op) => finish_op(&mut c, op, follow).await,
                // No such cluster: with --purge, the data earlier deletes kept.
                Err(ClientError::Api(a)) if purge && a.kind == ErrorKind::NotFound => {
                    let removed: Vec<String> = c
                        .call_as(&Request::PurgeKept { name }, |_| {})
                        .await
                        .map_err(api_failure)?;
                    for d in removed {
                        println!("removed {d}");
                    }
                    Ok(())
                }
                Err(e) => Err(api_failure(e)),
            }
        }
        ClusterCommand::Switchover { name, to, follow } => {
            simple_op(&mut c, Request::Switchover { name, to }, follow).await
        }
        ClusterCommand::Restore {
            name,
            from_backup,
            replicas,
            to_time,
            follow,
        } => {
            let to_unix_ms = to_time
                .as_deref()
                .map(crate::backup::parse_time)
                .transpose()?;
            simple_op(
                &mut c,
                Request::Restore {
                    name,
                    backup: from_backup,
                    replicas,
                    to_unix_ms,
                },
                follow,
            )
            .await
        }
        ClusterCommand::Rebuild {
            name,
            instance,
            follow,
        } => simple_op(&mut c, Request::Rebuild { name, instance }, follow).await,
        ClusterCommand::Recover {
            name,
            force_new_cluster,
            follow,
        } => {
            simple_op(
                &mut c,
                Request::Recover {
                    name,
                    force_new_cluster,
                },
                follow,
            )
            .await
        }
        ClusterCommand::Events {
            name,
            limit,
            output,
        } => {
            let v: Vec<EventView> = c
                .call_as(&Request::Events { name, limit }, |_| {})
                .await
                .map_err(api_failure)?;
            emit(output, &v, || v.iter().map(event_line).collect())
        }
        ClusterCommand::Metrics {
            name,
            output,
            prometheus,
        } => {
            let v: Vec<shoal_api::InstanceMetrics> = c
                .call_as(&Request::Metrics { name: name.clone() }, |_| {})
                .await
                .map_err(api_failure)?;
            if prometheus {
                print!("{}", prometheus_text(&name, &v));
                return Ok(());
            }
            emit(output, &v, || metrics_table(&v))
        }
        ClusterCommand::Logs {
            name,
            instance,
            tail,
            follow,
        } => {
            let several = instance.is_none();
            c.call(
                &Request::Logs {
                    name,
                    instance,
                    lines: tail,
                    follow,
                },
                |r| {
                    if let Reply::Log(l) = r {
                        let line = if several {
                            format!("{}: {}\n", l.instance, output::printable(&l.line))
                        } else {
                            format!("{}\n", output::printable(&l.line))
                        };
                        let _ = output::write_stdout(&line);
                    }
                },
            )
            .await
            .map_err(api_failure)?;
            Ok(())
        }
        ClusterCommand::Engines { output } => {
            let v: Vec<EngineView> = c
                .call_as(&Request::Engines, |_| {})
                .await
                .map_err(api_failure)?;
            emit(output, &v, || {
                let mut s = format!(
                    "{:<14} {:<12} {:<10} {:<8} {}\n",
                    "ENGINE", "VERSIONS", "DEFAULT", "ADDON", "DIGEST"
                );
                for e in &v {
                    s.push_str(&format!(
                        "{:<14} {:<12} {:<10} {:<8} {}\n",
                        e.engine,
                        e.versions.join(","),
                        e.default_version,
                        e.addon_version,
                        &e.digest[..e.digest.len().min(19)]
                    ));
                }
                s
            })
        }
    }
}

fn create_spec(a: &CreateArgs) -> Result<ClusterSpec, Failure> {
    let mut spec = match &a.file {
        Some(path) => {
            let text = read_spec(path)?;
            serde_yaml::from_str::<ClusterSpec>(&text)
                .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?
        }
        None => ClusterSpec {
            replicas: 1,
            ..Default::default()
        },
    };
    if let Some(n) = &a.name {
        spec.name = n.clone();
    }
    if let Some(e) = &a.engine {
        spec.engine = e.clone();
    }
    if a.version.is_some() {
        spec.version = a.version.clone();
    }
    if let Some(r) = a.replicas {
        spec.replicas = r;
    }
    if a.shards.is_some() {
        spec.shards = a.shards;
    }
    let r = &mut spec.resources;
    if a.cpu.is_some() {
        r.cpu = a.cpu.clone();
    }
    if a.memory.is_some() {
        r.memory = a.memory.clone();
    }
    if a.storage.is_some() {
        r.storage = a.storage.clone();
    }
    for (k, v) in name_values(&a.params)? {
        spec.parameters.insert(k, v);
    }
    if spec.name.is_empty() {
        return Err(Failure::usage(
            "give the cluster a name (shoal cluster create NAME …)",
        ));
    }
    if spec.engine.is_empty() {
        return Err(Failure::usage(
            "say which engine: --engine NAME (`shoal cluster engines` lists the loaded addons)",
        ));
    }
    Ok(spec)
}

/// A count users give (`--replicas 3`): a whole number of at least 1, said plainly when not.
pub(crate) fn positive_u32(text: &str) -> Result<u32, String> {
    match text.trim().parse::<i64>() {
        Ok(n) if n >= 1 && n <= i64::from(u32::MAX) => Ok(n as u32),
        Ok(n) => Err(format!(
            "{n} is not allowed: give a whole number of at least 1"
        )),
        Err(_) => Err(format!(
            "{} is not a whole number",
            shoal_control::quantity::shown(text)
        )),
    }
}

/// An id users give: a whole number of at least 1.
pub(crate) fn positive_i64(text: &str) -> Result<i64, String> {
    match text.trim().parse::<i64>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(n) => Err(format!(
            "{n} is not allowed: give a whole number of at least 1"
        )),
        Err(_) => Err(format!(
            "{} is not a whole number",
            shoal_control::quantity::shown(text)
        )),
    }
}

/// Largest cluster spec file read (`create -f`).
const MAX_SPEC: u64 = 1 << 20;

/// Read a spec file whole, but no more than [`MAX_SPEC`] bytes (`/dev/zero` is refused, not
/// read forever); `-` is stdin.
fn read_spec(path: &std::path::Path) -> Result<String, Failure> {
    use std::io::Read;
    let mut r: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(path)
                .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?,
        )
    };
    let mut bytes = Vec::new();
    r.by_ref()
        .take(MAX_SPEC + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_SPEC {
        return Err(Failure::usage(format!(
            "{} is larger than 1 MiB: not a cluster spec",
            path.display()
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| Failure::usage(format!("{} is not UTF-8 text", path.display())))
}

/// `NAME=VALUE` pairs into a map; a name given twice is refused (which one was meant?).
pub(crate) fn name_values(
    pairs: &[String],
) -> Result<std::collections::BTreeMap<String, String>, Failure> {
    let mut out = std::collections::BTreeMap::new();
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| {
            Failure::usage(format!(
                "{}: expected NAME=VALUE",
                shoal_control::quantity::shown(p)
            ))
        })?;
        let k = k.trim();
        if out.insert(k.to_string(), v.trim().to_string()).is_some() {
            return Err(Failure::usage(format!(
                "parameter {k} is given twice; give it once"
            )));
        }
    }
    Ok(out)
}

/// Ask before something that cannot be undone: on a terminal, the user types `expect`; in a
/// script, `--yes` must say so. Refusing changes nothing.
pub(crate) fn confirm(what: &str, expect: &str, yes: bool) -> Result<(), Failure> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::usage(format!(
            "{what} Not asking without a terminal: pass --yes to confirm (nothing changed)"
        )));
    }
    eprint!("{what}\nType {expect:?} to go on: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::usage(format!("cannot read the answer: {e}")))?;
    if line.trim() == expect {
        Ok(())
    } else {
        Err(Failure::call("not confirmed; nothing changed"))
    }
}

pub(crate) async fn simple_op(
    c: &mut shoal_api::Client,
    req: Request,
    follow: Follow,
) -> Result<(), Failure> {
    let op: OpView = c.call_as(&req, |_| {}).await.map_err(api_failure)?;
    finish_op(c, op, follow).await
}

/// How a command that starts an operation ends.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Follow {
    /// Return once the operation is queued (`shoal cluster wait ID` follows it later).
    #[arg(long)]
    pub no_wait: bool,
    /// Print the operation (finished, or queued with --no-wait) on stdout as json or yaml;
    /// its events go to stderr as always.
    #[arg(short, long, value_enum, default_value_t = ReadFormat::Table)]
    pub output: ReadFormat,
}

/// Wait for an operation, printing its events; exit code 1 when it fails.
pub(crate) async fn finish_op(
    c: &mut shoal_api::Client,
    op: OpView,
    follow: Follow,
) -> Result<(), Failure> {
    if follow.no_wait {
        eprintln!(
            "shoal: {} of {} queued as operation {} (follow it: shoal cluster wait {})",
            op.kind, op.cluster, op.id, op.id
        );
        if follow.output != ReadFormat::Table {
            emit(follow.output, &op, String::new)?;
        }
        return Ok(());
    }
    wait_op(c, op.id, follow.output).await
}

/// Follow operation `id` to its end, printing its events on stderr (and the finished
/// operation on stdout in `output` unless a table); exit code 1 when it failed.
pub(crate) async fn wait_op(
    c: &mut shoal_api::Client,
    id: i64,
    output: ReadFormat,
) -> Result<(), Failure> {
    let done: OpView = c
        .call_as(&Request::Wait { op: id }, |r| {
            if let Reply::Event(e) = r {
                eprint!("{}", event_line(e));
            }
        })
        .await
        .map_err(api_failure)?;
    if output != ReadFormat::Table {
        emit(output, &done, String::new)?;
    }
    match done.state {
        OpState::Succeeded => Ok(()),
        _ => Err(Failure::call(format!(
            "{} of {} failed: {}",
            done.kind,
            done.cluster,
            done.reason.unwrap_or_else(|| "no reason recorded".into())
        ))),
    }
}

pub(crate) fn emit<T: serde::Serialize>(
    f: ReadFormat,
    v: &T,
    table: impl FnOnce() -> String,
) -> Result<(), Failure> {
    let format = match f {
        ReadFormat::Table => output::Format::Text,
        ReadFormat::Json => output::Format::Json,
        ReadFormat::Yaml => output::Format::Yaml,
    };
    output::emit(format, v, || output::printable_lines(&table()))
}

fn time(ms: i64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}.{:03}", ms % 1000)
}

fn metrics_table(v: &[shoal_api::InstanceMetrics]) -> String {
    let mut s = format!(
        "{:<16} {:<8} {:<52} {}\n",
        "INSTANCE", "ROLE", "METRIC", "VALUE"
    );
    for i in v {
        if let Some(e) = &i.error {
            s.push_str(&format!(
                "{:<16} {:<8} (no metrics: {e})\n",
                i.instance, i.role
            ));
        }
        for m in &i.samples {
            s.push_str(&format!(
                "{:<16} {:<8} {:<52} {}\n",
                i.instance,
                i.role,
                format!("{}{}", m.name, label_set(&m.labels, &[])),
                m.value
            ));
        }
    }
    s
}

/// `{a="1",b="2"}` (Prometheus escaping), or nothing without labels.
fn label_set(labels: &[(String, String)], extra: &[(&str, &str)]) -> String {
    let all: Vec<String> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(labels.iter().cloned())
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    if all.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", all.join(","))
    }
}

/// The Prometheus text exposition format: one HELP/TYPE block per metric name, every
/// instance's sample under it.
fn prometheus_text(cluster: &str, v: &[shoal_api::InstanceMetrics]) -> String {
    let mut by_name: BTreeMap<&str, Vec<(&shoal_api::InstanceMetrics, &shoal_api::MetricSample)>> =
        BTreeMap::new();
    for i in v {
        for m in &i.samples {
            by_name.entry(m.name.as_str()).or_default().push((i, m));
        }
    }
    let mut s = String::new();
    for (name, rows) in by_name {
        if let Some((_, first)) = rows.first() {
            s.push_str(&format!(
                "# HELP {name} {}\n# TYPE {name} {}\n",
                first.help.replace('\n', " "),
                first.kind
            ));
        }
        for (i, m) in rows {
            let extra = [("cluster", cluster), ("instance", i.instance.as_str())];
            s.push_str(&format!(
                "{name}{} {}\n",
                label_set(&m.labels, &extra),
                m.value
            ));
        }
    }
    s
}

pub(crate) fn event_line(e: &EventView) -> String {
    format!(
        "{} {:<7} {:<14} {}\n",
        time(e.unix_ms),
        e.level,
        e.instance.as_deref().unwrap_or(&e.cluster),
        e.message
    )
}

fn list_table(v: &[ClusterView]) -> String {
    let mut s = format!(
        "{:<20} {:<12} {:<8} {:<9} {:<10} {}\n",
        "NAME", "ENGINE", "VERSION", "READY", "STATE", "PRIMARY"
    );
    for c in v {
        let ready = c
            .instances
            .iter()
            .filter(|i| i.state == "running" && i.health == "healthy")
            .count();
        let primary = c
            .instances
            .iter()
            .find(|i| i.role == "primary")
            .map(|i| format!("{}:{}", i.host, i.ports.get("client").copied().unwrap_or(0)))
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<20} {:<12} {:<8} {:<9} {:<10} {}\n",
            c.name,
            c.engine,
            c.version,
            format!("{ready}/{}", c.instances.len()),
            c.state,
            primary
        ));
    }
    s
}

fn describe_text(c: &ClusterView) -> String {
    let r = &c.resources;
    let mut s = String::new();
    s.push_str(&format!("Name:        {}\n", c.name));
    s.push_str(&format!(
        "Engine:      {} {} (addon {})\n",
        c.engine, c.version, c.addon_digest
    ));
    s.push_str(&format!("State:       {}\n", c.state));
    s.push_str(&format!("Replicas:    {}\n", c.replicas));
    if let Some(sh) = &c.shards {
        s.push_str(&format!(
            "HA:          {sh} (the engine fails each shard over; Shoal routes, restarts and \
             replaces)\n"
        ));
    } else if let Some(q) = &c.quorum {
        s.push_str(&format!(
            "HA:          {q} (the engine elects its leader; Shoal routes and restarts)\n"
        ));
    } else {
        s.push_str(&format!(
            "HA:          {} replication{}, max-lag-on-failover {}, auto-failover {}\n",
            match c.ha.mode {
                shoal_api::ReplicationMode::Async => "async",
                shoal_api::ReplicationMode::Sync => "sync",
            },
            if c.ha.mode == shoal_api::ReplicationMode::Sync {
                format!(" (quorum {})", c.ha.sync_quorum)
            } else {
                String::new()
            },
            c.ha.max_lag_on_failover,
            if c.ha.auto_failover { "on" } else { "off" }
        ));
    }
    s.push_str(&format!(
        "Leader:      {}\n",
        match (&c.leader, c.term) {
            (Some(l), Some(t)) => format!("{l} (term {t})"),
            _ => "-".into(),
        }
    ));
    s.push_str(&format!(
        "Managed by:  {}\n",
        c.manager.as_deref().unwrap_or("- (no live manager lease)")
    ));
    if let (Some(rw), Some(ro)) = (&c.read_write, &c.read_only) {
        s.push_str(&format!("Endpoints:   read-write {rw}, read-only {ro}\n"));
    }
    s.push_str(&format!(
        "Resources:   cpu {}, memory {}, storage {} ({})\n",
        r.cpu.as_deref().unwrap_or("-"),
        r.memory.as_deref().unwrap_or("-"),
        r.storage.as_deref().unwrap_or("-"),
        c.resource_limits
    ));
    if !c.parameters.is_empty() {
        let p: BTreeMap<_, _> = c.parameters.iter().collect();
        s.push_str(&format!(
            "Parameters:  {}\n",
            p.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(op) = &c.last_op {
        s.push_str(&format!(
            "Last op:     {} #{} {}{}\n",
            op.kind,
            op.id,
            op.state.as_str(),
            op.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ));
    }
    s.push_str(&format!(
        "\n{:<14} {:<8} {:<9} {:<9} {:<8} {:<17} {:<10} {:<9} {}\n",
        "INSTANCE", "ROLE", "STATE", "HEALTH", "PID", "ENDPOINT", "LAG", "RESTARTS", "DETAIL"
    ));
    for i in &c.instances {
        s.push_str(&format!(
            "{:<14} {:<8} {:<9} {:<9} {:<8} {:<17} {:<10} {:<9} {}\n",
            i.name,
            match i.observed_role.as_deref() {
                // The engine decides these members' roles: what the probe saw is the role.
                Some(o) if i.role == "member" || i.role == "shard-member" => o.to_string(),
                Some(o) if o != i.role => format!("{}({o}?)", i.role),
                _ => i.role.clone(),
            },
            i.state,
            i.health,
            i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            format!("{}:{}", i.host, i.ports.get("client").copied().unwrap_or(0)),
            i.lag_bytes
                .map(|l| format!("{l} B"))
                .unwrap_or_else(|| "-".into()),
            i.restarts,
            i.detail
        ));
    }
    s.push('\n');
    for i in &c.instances {
        s.push_str(&format!(
            "{}: data {}  log {}\n",
            i.name, i.data_dir, i.log_file
        ));
    }
    s
}

fn connect_text(v: &ConnectInfo) -> String {
    let mut s = String::new();
    if let Some(uri) = &v.uri {
        s.push_str(&format!("{uri}\n"));
    }
    match (&v.read_write, &v.read_only) {
        (Some(rw), Some(ro)) => {
            s.push_str(&format!(
                "# {} read-write endpoint {rw} (follows the primary, now {}), user {}\n",
                v.cluster, v.instance, v.user
            ));
            s.push_str(&format!("# read-only endpoint {ro} (replicas)\n"));
            if let Some(u) = &v.read_only_uri {
                s.push_str(&format!("# {u}\n"));
            }
        }
        _ => s.push_str(&format!(
            "# {} primary {} at {}:{}, user {}\n",
            v.cluster, v.instance, v.host, v.port, v.user
        )),
    }
    if !v.shell.is_empty() {
        s.push_str(&format!(
            "# shell: shoal cluster connect {} --shell\n",
            v.cluster
        ));
    }
    s
}

/// Run the engine's client in place of this process: leading `NAME=VALUE` elements of the
/// addon's shell command go to its environment (the password among them: never argv, which
/// every user of the machine can read with `ps`).
fn open_shell(v: &ConnectInfo) -> Result<(), Failure> {
    use std::os::unix::process::CommandExt;
    let (env, argv) = split_shell(&v.shell);
    let Some((program, args)) = argv.split_first() else {
        return Err(Failure::usage(format!(
            "the engine of {} has no interactive client",
            v.cluster
        )));
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    for (k, val) in env {
        cmd.env(k, val);
    }
    let err = cmd.exec();
    Err(Failure::usage(format!("cannot run {program}: {err}")))
}

/// A client shell command split into its environment (leading `NAME=VALUE` elements) and
/// its argv.
fn split_shell(shell: &[String]) -> (Vec<(&str, &str)>, &[String]) {
    let n = shell
        .iter()
        .take_while(|a| shoal_runtime::is_env_assignment(a))
        .count();
    let env = shell[..n]
        .iter()
        .filter_map(|a| a.split_once('='))
        .collect();
    (env, &shell[n..])
}
