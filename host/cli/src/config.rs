//! `shoal cluster config …` and `shoal cluster scale --cpu/--memory`: a cluster's parameters
//! and resources — show them with their sources, change them as one validated change (live or
//! by a rolling restart), see the history, roll back.

use shoal_api::{ConfigPlanView, ConfigVersionView, ConfigView, Request};

use crate::cluster::{api_failure, emit, finish_op, Follow, ReadFormat};
use crate::Failure;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ConfigArgs {
    /// Show the effective parameters of this cluster: value, source (user, default, derived),
    /// and whether a change applies live or needs a restart.
    pub name: Option<String>,
    #[arg(short, long, value_enum, default_value_t = ReadFormat::Table)]
    pub output: ReadFormat,
    #[command(subcommand)]
    pub command: Option<ConfigCommand>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Set parameters in one change, validated as a whole: applied live when every change is
    /// dynamic, else by a rolling restart (replicas, a switchover, the old primary) that
    /// stops and rolls back at the first instance that does not come back healthy.
    Set {
        name: String,
        #[arg(required = true, value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Show what would change and whether it needs a restart; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        follow: Follow,
    },
    /// Go back to the addon's default (or derived value) for parameters.
    Unset {
        name: String,
        #[arg(required = true, value_name = "NAME")]
        params: Vec<String>,
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        follow: Follow,
    },
    /// The versions of the cluster's configuration, oldest first.
    History {
        name: String,
        #[arg(short, long, value_enum, default_value_t = ReadFormat::Table)]
        output: ReadFormat,
    },
    /// Apply an earlier version again (default: the one before the current).
    Rollback {
        name: String,
        #[arg(long, value_name = "VERSION", allow_negative_numbers = true, value_parser = crate::cluster::positive_u32)]
        to: Option<u32>,
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        follow: Follow,
    },
}

fn config_table(v: &ConfigView) -> String {
    let mut s = format!(
        "{} — configuration version {}{}\n{:<28} {:<14} {:<8} {}\n",
        v.cluster,
        v.version,
        match (&v.resources.cpu, &v.resources.memory) {
            (None, None) => String::new(),
            (cpu, mem) => format!(
                " (cpu {}, memory {})",
                cpu.as_deref().unwrap_or("-"),
                mem.as_deref().unwrap_or("-")
            ),
        },
        "PARAMETER",
        "VALUE",
        "SOURCE",
        "APPLY"
    );
    for p in &v.params {
        s.push_str(&format!(
            "{:<28} {:<14} {:<8} {}\n",
            p.name,
            p.value.as_deref().unwrap_or("-"),
            p.source,
            p.apply
        ));
    }
    s
}

fn plan_text(p: &ConfigPlanView) -> String {
    let mut s = String::new();
    if p.resources_from != p.resources_to {
        s.push_str(&format!(
            "resources: cpu {} -> {}, memory {} -> {}\n",
            p.resources_from.cpu.as_deref().unwrap_or("-"),
            p.resources_to.cpu.as_deref().unwrap_or("-"),
            p.resources_from.memory.as_deref().unwrap_or("-"),
            p.resources_to.memory.as_deref().unwrap_or("-"),
        ));
    }
    for ch in &p.changes {
        s.push_str(&format!(
            "{}: {} -> {} ({})\n",
            ch.name,
            ch.old.as_deref().unwrap_or("(engine default)"),
            ch.new.as_deref().unwrap_or("(engine default)"),
            ch.effect
        ));
    }
    s.push_str(match (p.restart, p.primary_first) {
        (true, false) => {
            "needs a rolling restart: replicas one at a time, then a switchover, then the old \
             primary\n"
        }
        (true, true) => {
            "needs a rolling restart: the primary first, in place (writes pause while it \
             restarts), then the replicas one at a time\n"
        }
        (false, _) => "applies live, without a restart\n",
    });
    s
}

/// Print the plan, then follow its operation.
async fn planned(c: &mut shoal_api::Client, req: Request, follow: Follow) -> Result<(), Failure> {
    let plan: ConfigPlanView = c.call_as(&req, |_| {}).await.map_err(api_failure)?;
    eprint!("{}", plan_text(&plan));
    match plan.op {
        Some(op) => finish_op(c, op, follow).await,
        None => {
            println!("dry run: nothing changed");
            Ok(())
        }
    }
}

/// `shoal cluster config …`.
pub async fn run(c: &mut shoal_api::Client, args: ConfigArgs) -> Result<(), Failure> {
    match args.command {
        None => {
            let name = args
                .name
                .ok_or_else(|| Failure::usage("name a cluster: shoal cluster config NAME"))?;
            let v: ConfigView = c
                .call_as(&Request::ConfigShow { name }, |_| {})
                .await
                .map_err(api_failure)?;
            emit(args.output, &v, || config_table(&v))
        }
        Some(ConfigCommand::Set {
            name,
            params,
            dry_run,
            follow,
        }) => {
            let set = crate::cluster::name_values(&params)?;
            let req = Request::ConfigSet {
                name,
                set,
                unset: vec![],
                dry_run,
            };
            planned(c, req, follow).await
        }
        Some(ConfigCommand::Unset {
            name,
            params,
            dry_run,
            follow,
        }) => {
            let req = Request::ConfigSet {
                name,
                set: Default::default(),
                unset: params,
                dry_run,
            };
            planned(c, req, follow).await
        }
        Some(ConfigCommand::History { name, output }) => {
            let v: Vec<ConfigVersionView> = c
                .call_as(&Request::ConfigHistory { name }, |_| {})
                .await
                .map_err(api_failure)?;
            emit(output, &v, || {
                let mut s = format!("{:<8} {:<26} {}\n", "VERSION", "AT", "CHANGE");
                for x in &v {
                    s.push_str(&format!(
                        "{:<8} {:<26} {}\n",
                        x.version,
                        crate::backup::utc(x.at_unix_ms),
                        x.reason
                    ));
                }
                s
            })
        }
        Some(ConfigCommand::Rollback {
            name,
            to,
            dry_run,
            follow,
        }) => planned(c, Request::ConfigRollback { name, to, dry_run }, follow).await,
    }
}

/// `shoal cluster scale NAME --cpu … --memory …`.
pub async fn resize(
    c: &mut shoal_api::Client,
    name: String,
    cpu: Option<String>,
    memory: Option<String>,
    dry_run: bool,
    follow: Follow,
) -> Result<(), Failure> {
    let req = Request::Resize {
        name,
        cpu,
        memory,
        dry_run,
    };
    planned(c, req, follow).await
}
