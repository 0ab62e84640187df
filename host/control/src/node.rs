//! One instance on this machine: its directories, its config files from the addon's
//! render-config, its init commands and server process from the addon's run-spec, readiness,
//! stopping, and the records the addon's hooks see (instance, members, call context).

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use shoal_local::{cgroups::Enforcement, log_tail, ProcessSpec};
use shoal_runtime::wit::{self, Param, Readiness, StopSignal};
use shoal_runtime::{CallContext, RunAs};

use crate::controller::{Controller, Resources};
use crate::engines;
use crate::error::{At, ControlError, Failure};
use crate::events::Level;
use crate::secrets::Credentials;
use crate::store::{ClusterRow, Health, InstanceRow, Phase};

/// Create `i`'s directories: the instance directory, `data/`, `config/` and `archive/`
/// owned by the cluster's engine user, `log/` by the host (it writes the engine's output
/// there); all 0700 whatever the umask (the cluster directory around them is private too).
fn ensure_dirs(i: &InstanceRow, user: Option<shoal_local::RunAs>) -> Result<(), String> {
    for (dir, engine_owned) in [
        (i.dir.clone(), true),
        (i.data_dir(), true),
        (i.config_dir(), true),
        (i.archive_dir(), true),
        (i.dir.join("log"), false),
    ] {
        private_dir(&dir, if engine_owned { user } else { None })?;
    }
    Ok(())
}

/// Create `dir` (and its parents) if missing, make it 0700 whatever the umask and the mode
/// it had, and give it to `owner` (none: the host keeps it).
pub(crate) fn private_dir(dir: &Path, owner: Option<shoal_local::RunAs>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot restrict {}: {e}", dir.display()))?;
    shoal_local::users::chown(dir, owner).map_err(|e| e.to_string())
}

/// The file that says an instance's initialization (its run-spec's init commands) is under
/// way; left behind, it says the initialization was interrupted.
const INIT_MARKER: &str = "initializing";

/// The named ports of `i` as hooks see them.
fn wit_ports(i: &InstanceRow) -> Vec<wit::NamedPort> {
    i.ports
        .iter()
        .map(|(n, p)| wit::NamedPort {
            name: n.clone(),
            port: *p,
        })
        .collect()
}

/// Whether a directory is missing or empty.
/// How to run an addon's `cmd` for instance `i`: the engine's program, in the instance's
/// directory, logging to its log, as `run_as`.
pub(crate) fn process_spec(
    search: &shoal_local::binaries::BinarySearch,
    cmd: &wit::Command,
    i: &InstanceRow,
    run_as: Option<shoal_local::RunAs>,
) -> Result<ProcessSpec, String> {
    Ok(ProcessSpec {
        program: search.find(&cmd.program).map_err(|e| e.to_string())?,
        args: cmd.args.clone(),
        env: cmd
            .env
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect(),
        cwd: i.dir.clone(),
        log: i.log_file(),
        run_as,
    })
}

pub(crate) fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

impl Controller {
    fn resources(&self, c: &ClusterRow) -> Resources {
        let r = &c.spec.resources;
        Resources {
            cpu_millis: r
                .cpu
                .as_deref()
                .and_then(|t| crate::quantity::parse_cpu(t).ok())
                .unwrap_or(0),
            memory_bytes: r
                .memory
                .as_deref()
                .and_then(|t| crate::quantity::parse_bytes("memory", t).ok())
                .unwrap_or(0),
            storage_bytes: r
                .storage
                .as_deref()
                .and_then(|t| crate::quantity::parse_bytes("storage", t).ok())
                .unwrap_or(0),
        }
    }

    /// The record the addon sees for `i`. `process_paths`: the directories as the server
    /// process sees them (run-spec, render-config); otherwise the guest paths of preopens.
    pub(crate) fn wit_instance(
        &self,
        c: &ClusterRow,
        i: &InstanceRow,
        creds: &Credentials,
        process_paths: bool,
    ) -> wit::Instance {
        let r = self.resources(c);
        let (data, config) = if process_paths {
            (
                Some(i.data_dir().display().to_string()),
                Some(i.config_dir().display().to_string()),
            )
        } else {
            (Some("/data".to_string()), Some("/config".to_string()))
        };
        wit::Instance {
            cluster: c.name.clone(),
            component: "main".into(),
            name: i.name.clone(),
            engine_version: c.version.clone(),
            endpoint: wit::Endpoint {
                host: i.host.clone(),
                port: i.client_port().unwrap_or(0),
            },
            ports: wit_ports(i),
            data_dir: data,
            config_dir: config,
            archive_dir: (process_paths && self.archived(&c.name))
                .then(|| i.archive_dir().display().to_string()),
            role: Some(i.role.as_str().into()),
            shard: i.shard,
            term: 0,
            credentials: Some(wit::Credentials {
                username: creds.user.clone(),
                password: creds.password.clone(),
            }),
            resources: wit::Resources {
                cpu_millis: r.cpu_millis,
                memory_bytes: r.memory_bytes,
                storage_bytes: r.storage_bytes,
            },
        }
    }

    /// `i` as another member sees it.
    pub(crate) fn wit_member(i: &InstanceRow) -> wit::Member {
        wit::Member {
            name: i.name.clone(),
            endpoint: wit::Endpoint {
                host: i.host.clone(),
                port: i.client_port().unwrap_or(0),
            },
            ports: wit_ports(i),
            role: Some(i.role.as_str().into()),
            healthy: i.health == Health::Healthy,
            shard: i.shard,
        }
    }

    /// The members `i` sees: every other instance of its cluster.
    pub(crate) fn members_of(i: &InstanceRow, all: &[InstanceRow]) -> Vec<wit::Member> {
        all.iter()
            .filter(|m| m.name != i.name)
            .map(Self::wit_member)
            .collect()
    }

    /// What a hook about `i` may reach: its own and its members' addresses; with `dirs`, its
    /// data (read-write) and config (read-only) directories at /data and /config.
    pub(crate) fn call_ctx(&self, i: &InstanceRow, all: &[InstanceRow], dirs: bool) -> CallContext {
        let mut endpoints = Vec::new();
        for m in std::iter::once(i).chain(all.iter()) {
            for port in m.ports.values() {
                if let Ok(ip) = m.host.parse::<std::net::IpAddr>() {
                    endpoints.push(std::net::SocketAddr::new(ip, *port));
                }
            }
        }
        endpoints.sort();
        endpoints.dedup();
        let mut ctx = CallContext::endpoints(endpoints);
        if dirs {
            ctx =
                ctx.preopen(i.data_dir(), "/data", true)
                    .preopen(i.config_dir(), "/config", false);
        }
        ctx.run_as = self.run_as_named(&i.cluster).map(|u| RunAs {
            uid: u.uid,
            gid: u.gid,
        });
        ctx
    }

    /// Effective parameters of a cluster, typed.
    pub(crate) fn params_of(&self, c: &ClusterRow) -> Result<Vec<Param>, String> {
        let addon = self.addon(&c.engine).map_err(|e| e.message)?;
        self.typed_params(addon, &c.version, &c.spec.parameters)
            .map_err(|e| e.message)
    }

    /// Write the addon's config files for `i` into its config directory.
    pub(crate) async fn render(
        &self,
        c: &ClusterRow,
        i: &InstanceRow,
        all: &[InstanceRow],
        creds: &Credentials,
    ) -> Result<(), ControlError> {
        let at = |f: Failure| ControlError::on(&c.name, &i.name, f);
        let io = |path: &Path, e: std::io::Error| {
            at(Failure::Io {
                path: path.to_path_buf(),
                source: e,
            })
        };
        let addon = self.addon(&c.engine).map_err(|e| at(e.message.into()))?;
        let params = self.params_of(c).map_err(|e| at(e.into()))?;
        let inst = self.wit_instance(c, i, creds, true);
        let files = match addon
            .call(&CallContext::default())
            .render_config(&inst, &Self::members_of(i, all), &params)
            .await
        {
            Ok(files) => files,
            // Engines configured entirely by flags have no files to render.
            Err(e) if e.is_unsupported() => Vec::new(),
            Err(e) => {
                return Err(at(Failure::Hook {
                    hook: "render-config",
                    source: e,
                }))
            }
        };
        let dir = i.config_dir();
        for f in files {
            let rel = Path::new(&f.path);
            let safe = !f.path.is_empty()
                && rel.is_relative()
                && rel
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !safe {
                return Err(at(Failure::Other(format!(
                    "addon {} rendered a file with an unsafe path {:?}",
                    c.engine, f.path
                ))));
            }
            let target = dir.join(rel);
            let owner = self.users.of(c).map_err(|e| at(e.into()))?;
            // Subdirectories of the config directory, the engine user's like the files.
            let mut made = dir.clone();
            for part in rel.parent().into_iter().flat_map(|p| p.components()) {
                made.push(part);
                if !made.exists() {
                    std::fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&made)
                        .map_err(|e| io(&made, e))?;
                    shoal_local::users::chown(&made, owner)
                        .map_err(|e| at(e.to_string().into()))?;
                }
            }
            let tmp = target.with_extension("shoal-tmp");
            {
                use std::io::Write;
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(f.mode & 0o777)
                    .open(&tmp)
                    .map_err(|e| io(&tmp, e))?;
                out.write_all(&f.contents).map_err(|e| io(&tmp, e))?;
                out.sync_all().map_err(|e| io(&tmp, e))?;
            }
            shoal_local::users::chown(&tmp, owner).map_err(|e| at(e.to_string().into()))?;
            std::fs::rename(&tmp, &target).map_err(|e| io(&target, e))?;
        }
        Ok(())
    }

    /// Bring `i` up: directories, config, init commands when its data directory is empty, the
    /// server process, and readiness. Updates and stores the row as it goes.
    /// Create `i`'s directories, owned by the engine user.
    pub(crate) fn prepare_dirs(&self, c: &ClusterRow, i: &InstanceRow) -> Result<(), ControlError> {
        let owner = self.users.of(c).on(&c.name, &i.name)?;
        // The cluster's directory (the instance's parent), private to its user.
        if let Some(parent) = i.dir.parent() {
            private_dir(parent, owner).on(&c.name, &i.name)?;
        }
        ensure_dirs(i, owner).on(&c.name, &i.name)
    }

    pub(crate) async fn bring_up(
        &self,
        c: &ClusterRow,
        i: &mut InstanceRow,
        all: &[InstanceRow],
        creds: &Credentials,
    ) -> Result<(), ControlError> {
        let addon = self
            .addon(&c.engine)
            .map_err(|e| e.message)
            .on(&c.name, &i.name)?
            .clone();
        let params = self.params_of(c).on(&c.name, &i.name)?;
        let inst = self.wit_instance(c, i, creds, true);
        let plan = addon
            .call(&CallContext::default())
            .run_spec(&inst, &Self::members_of(i, all), &params)
            .await
            .map_err(|e| {
                ControlError::on(
                    &c.name,
                    &i.name,
                    Failure::Hook {
                        hook: "run-spec",
                        source: e,
                    },
                )
            })?;
        self.bring_up_plan(c, i, all, creds, plan).await
    }

    /// [`Self::bring_up`] with a given plan (the addon's `run-spec`, or another way to start
    /// the instance such as a lost quorum's recovery).
    pub(crate) async fn bring_up_plan(
        &self,
        c: &ClusterRow,
        i: &mut InstanceRow,
        all: &[InstanceRow],
        creds: &Credentials,
        plan: wit::RunPlan,
    ) -> Result<(), ControlError> {
        let (cluster, name) = (c.name.clone(), i.name.clone());
        let at = |f: Failure| ControlError::on(&cluster, &name, f);
        let addon = self
            .addon(&c.engine)
            .map_err(|e| at(e.message.into()))?
            .clone();
        self.prepare_dirs(c, i)?;
        self.render(c, i, all, creds).await?;
        let search = engines::binaries(&self.cfg, &addon, &c.version);
        // Every engine runs unprivileged when the host is root; `unprivileged` says the
        // engine itself insists (it would refuse root), which it never gets anyway.
        let run_as = self.users.of(c).map_err(|e| at(e.into()))?;
        let row = i.clone();
        let spec_for = |cmd: &wit::Command| {
            process_spec(&search, cmd, &row, run_as).map_err(|e| at(Failure::Process(e)))
        };
        // An initialization that never finished (the host stopped midway) left data no
        // server may start on — a copy not yet made consistent, half an initdb: set it aside
        // and start over.
        let marker = i.dir.join(INIT_MARKER);
        if marker.exists() && !is_empty(&i.data_dir()) {
            let aside = i.dir.join("data.interrupted-init");
            let _ = std::fs::remove_dir_all(&aside);
            std::fs::rename(i.data_dir(), &aside).map_err(|e| {
                at(Failure::Io {
                    path: i.data_dir(),
                    source: e,
                })
            })?;
            private_dir(&i.data_dir(), run_as).map_err(|e| at(e.into()))?;
            self.event(
                &c.name,
                Some(&i.name),
                Level::Warning,
                format!(
                    "its initialization was interrupted; the partial data is set aside in {} \
                     and it is initialized again",
                    aside.display()
                ),
            );
        }
        if is_empty(&i.data_dir()) && !plan.init.is_empty() {
            i.state = Phase::Initializing;
            self.save(i);
            std::fs::write(&marker, b"an initialization is under way\n").map_err(|e| {
                at(Failure::Io {
                    path: marker.clone(),
                    source: e,
                })
            })?;
            for (n, cmd) in plan.init.iter().enumerate() {
                self.event(
                    &c.name,
                    Some(&i.name),
                    Level::Info,
                    format!("running {}", cmd.program),
                );
                let spec = spec_for(cmd)?;
                self.nodes
                    .run(&spec, Duration::from_millis(self.cfg.init_timeout_ms))
                    .await
                    .map_err(|e| at(Failure::Process(e)))?;
                if n == 0 {
                    crate::ha::failpoint("init-step").await;
                }
            }
            let _ = std::fs::remove_file(&marker);
        }
        i.state = Phase::Starting;
        let server = spec_for(&plan.server)?;
        let pid = self
            .nodes
            .start(&server)
            .map_err(|e| at(Failure::Process(e)))?;
        i.process = Some(pid);
        self.save(i);
        let _ = std::fs::write(i.pid_file(), format!("{} {}\n", pid.pid, pid.start_time));
        if let Enforcement::CgroupV2(base) = &self.limits {
            let r = self.resources(c);
            if let Err(e) = shoal_local::cgroups::confine(
                base,
                &format!("{}-{}", c.name, i.name),
                pid.pid,
                r.memory_bytes,
                r.cpu_millis,
            ) {
                self.event(
                    &c.name,
                    Some(&i.name),
                    Level::Warning,
                    format!("resource limits not applied: {e}"),
                );
            }
        }
        self.event(
            &c.name,
            Some(&i.name),
            Level::Info,
            format!("started {} (pid {})", plan.server.program, pid.pid),
        );
        self.wait_ready(c, i, all, creds, &plan.readiness).await?;
        // Before anyone is routed to it: the account users get, as Shoal last set it.
        self.provision_admin(c, i, all, creds).await?;
        i.state = Phase::Running;
        self.save(i);
        self.event(&c.name, Some(&i.name), Level::Info, "ready");
        // A (re)started instance of a sync cluster gets the setting again: engines that
        // keep it only in memory lose it at a restart.
        crate::ha::apply_sync_to(self, c, creds, Some(&i.name)).await;
        Ok(())
    }

    /// Set the admin account users get (`shoal cluster connect`) on `i` through the addon's
    /// `account-provision`: called on every instance after it starts, so that a fresh copy,
    /// a restored backup or a per-server account store holds exactly what Shoal hands out.
    /// Engines without accounts say `unsupported`. Clusters from before the platform account
    /// existed use the admin account for the hooks already: nothing to do.
    pub(crate) async fn provision_admin(
        &self,
        c: &ClusterRow,
        i: &InstanceRow,
        all: &[InstanceRow],
        platform: &Credentials,
    ) -> Result<(), ControlError> {
        let s = crate::secrets::load_all(&self.home, &c.name).map_err(|e| {
            ControlError::on(
                &c.name,
                &i.name,
                format!("cannot read the cluster's credentials: {e}"),
            )
        })?;
        if s.platform.is_none() {
            return Ok(());
        }
        self.provision_account(c, i, all, platform, &s.admin).await
    }

    /// `account-provision` of `account` (a superuser) on `i`.
    pub(crate) async fn provision_account(
        &self,
        c: &ClusterRow,
        i: &InstanceRow,
        all: &[InstanceRow],
        platform: &Credentials,
        account: &Credentials,
    ) -> Result<(), ControlError> {
        let addon = self
            .addon(&c.engine)
            .map_err(|e| e.message)
            .on(&c.name, &i.name)?;
        let acc = wit::Account {
            credentials: wit::Credentials {
                username: account.user.clone(),
                password: account.password.clone(),
            },
            role: wit::AccountRole::Superuser,
        };
        match addon
            .call(&self.call_ctx(i, all, false))
            .account_provision(&self.wit_instance(c, i, platform, false), &acc)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.is_unsupported() => Ok(()),
            Err(e) => Err(ControlError::on(
                &c.name,
                &i.name,
                format!("setting up account {}: {e}", account.user),
            )),
        }
    }

    async fn wait_ready(
        &self,
        c: &ClusterRow,
        i: &mut InstanceRow,
        all: &[InstanceRow],
        creds: &Credentials,
        readiness: &Readiness,
    ) -> Result<(), ControlError> {
        let until = tokio::time::Instant::now() + Duration::from_millis(self.cfg.ready_timeout_ms);
        let (cluster, name) = (c.name.clone(), i.name.clone());
        let at = move |m: String| ControlError::on(&cluster, &name, Failure::Process(m));
        let pid = i.process.ok_or_else(|| at("no process".into()))?;
        let mut last = String::from("not checked yet");
        loop {
            if !self.nodes.is_running(pid) {
                return Err(at(format!(
                    "exited while starting: {}",
                    log_tail(&i.log_file(), 600)
                )));
            }
            let ready = match readiness {
                Readiness::TcpPort(name) => {
                    let port = i.ports.get(name).copied().unwrap_or(0);
                    match tokio::net::TcpStream::connect((i.host.as_str(), port)).await {
                        Ok(_) => true,
                        Err(e) => {
                            last = format!("port {port}: {e}");
                            false
                        }
                    }
                }
                Readiness::Probe => match self.probe_once(c, i, all, creds).await {
                    Ok(r) if r.health == wit::Health::Healthy => true,
                    Ok(r) => {
                        last = r.detail;
                        false
                    }
                    Err(e) => {
                        last = e.failure.to_string();
                        false
                    }
                },
            };
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() >= until {
                return Err(at(format!(
                    "not ready after {} s ({last})",
                    self.cfg.ready_timeout_ms / 1000
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One probe of `i` on a fresh addon instance; the report is recorded on the row.
    pub(crate) async fn probe_once(
        &self,
        c: &ClusterRow,
        i: &mut InstanceRow,
        all: &[InstanceRow],
        creds: &Credentials,
    ) -> Result<wit::RoleReport, ControlError> {
        let addon = self
            .addon(&c.engine)
            .map_err(|e| e.message)
            .on(&c.name, &i.name)?;
        let ctx = self.call_ctx(i, all, false);
        let inst = self.wit_instance(c, i, creds, false);
        let r = addon
            .call(&ctx)
            .probe(&inst, &Self::members_of(i, all))
            .await
            .map_err(|e| {
                ControlError::on(
                    &c.name,
                    &i.name,
                    Failure::Hook {
                        hook: "probe",
                        source: e,
                    },
                )
            })?;
        crate::supervisor::record_probe(i, &r);
        self.observe(i);
        Ok(r)
    }

    /// Stop `i`'s server process (the addon's stop signal, then a kill after its grace).
    pub(crate) async fn stop_process(
        &self,
        c: &ClusterRow,
        i: &mut InstanceRow,
        creds: &Credentials,
    ) -> Result<(), ControlError> {
        let Some(pid) = i.process else {
            i.state = Phase::Stopped;
            self.save(i);
            return Ok(());
        };
        i.state = Phase::Stopping;
        self.save(i);
        self.drop_live(&c.name, &i.name);
        let addon = self
            .addon(&c.engine)
            .map_err(|e| e.message)
            .on(&c.name, &i.name)?;
        let inst = self.wit_instance(c, i, creds, true);
        let params = self.params_of(c).on(&c.name, &i.name)?;
        let (signal, grace) = match addon
            .call(&CallContext::default())
            .run_spec(&inst, &[], &params)
            .await
        {
            Ok(plan) => (
                match plan.stop_signal {
                    StopSignal::Term => libc::SIGTERM,
                    StopSignal::Int => libc::SIGINT,
                    StopSignal::Quit => libc::SIGQUIT,
                },
                Duration::from_millis(plan.stop_timeout_ms),
            ),
            Err(_) => (libc::SIGTERM, Duration::from_secs(30)),
        };
        let killed = self.nodes.stop(pid, signal, grace).await;
        if killed {
            self.event(
                &c.name,
                Some(&i.name),
                Level::Warning,
                format!("did not stop within {grace:?}; killed"),
            );
        }
        // Killed, it left its lock files: gone from the kernel (a zombie of an earlier host
        // lingers until init reaps it) before anything reads them. A clean stop removed its
        // own, and a planned switchover should not wait on init.
        if killed && !self.nodes.wait_gone(pid, crate::ha::GONE_WITHIN).await {
            self.event(
                &c.name,
                Some(&i.name),
                Level::Warning,
                format!(
                    "pid {} still exists {:?} after it stopped",
                    pid.pid,
                    crate::ha::GONE_WITHIN
                ),
            );
        }
        i.process = None;
        i.state = Phase::Stopped;
        i.health = Health::Unknown;
        self.save(i);
        self.observe(i);
        let _ = std::fs::remove_file(i.pid_file());
        self.event(&c.name, Some(&i.name), Level::Info, "stopped");
        Ok(())
    }

    /// Store the row, logging (not failing) on a store error.
    /// Store what the host decided about `i` (role, desired state, phase, process).
    pub(crate) fn save(&self, i: &InstanceRow) {
        if let Err(e) = self.db(|s| s.update_instance(i)) {
            tracing::error!("cannot store instance {}: {e}", i.name);
        }
    }

    /// Store what was observed of `i` (a probe's answer, a process seen gone): the only
    /// writer of those facts.
    pub(crate) fn observe(&self, i: &InstanceRow) {
        if let Err(e) = self.db(|s| s.record_observed(i)) {
            tracing::error!("cannot store what was observed of {}: {e}", i.name);
        }
    }

    pub(crate) fn drop_live(&self, cluster: &str, instance: &str) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(cluster.to_string(), instance.to_string()));
    }
}
