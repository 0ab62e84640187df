//! The controller: the host's state (store, engines, addon runtime, engine user, resource
//! enforcement), request validation, the per-cluster operation queue, and the read views.
//! Every change a user asks for is validated completely before anything is stored; then it
//! becomes an operation that runs in order with the cluster's other operations.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use shoal_api::{
    ApiError, ClusterSpec, ClusterView, ConnectInfo, EngineView, EventView, InstanceView, OpView,
    ServerInfo,
};
use shoal_local::cgroups::Enforcement;
use shoal_local::RunAs;
use shoal_runtime::wit::{self, Param};
use shoal_runtime::{AddonRuntime, CallContext, LiveInstance, LoadedAddon};

use shoal_dcs::{Coordinator, Dcs};

use crate::config::HostConfig;
use crate::endpoints::Endpoints;
use crate::engines::{self, Engines};
use crate::events::Level;
use crate::operation::Op;
use crate::proxy::Routes;
use crate::quantity;
use crate::secrets;
use crate::store::{now_ms, ClusterRow, ClusterState, Health, InstanceRow, Phase, Role, Store};
use crate::topology::{family, Family};
use crate::users::EngineUsers;

/// The running host.
pub struct Controller {
    pub home: PathBuf,
    pub cfg: HostConfig,
    store: Mutex<Store>,
    pub engines: Engines,
    pub runtime: AddonRuntime,
    /// Where instance processes run: every start, stop, kill and liveness check goes
    /// through it.
    pub nodes: Arc<dyn crate::nodes::Nodes>,
    /// The OS users engines run as: each cluster's own (a root host's), else the shared one.
    pub users: EngineUsers,
    /// Held while a create is validated and stored: two requests for one name, or for the
    /// same free ports, cannot both pass.
    create_lock: tokio::sync::Mutex<()>,
    pub limits: Enforcement,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) live: Mutex<HashMap<(String, String), Arc<LiveInstance>>>,
    /// Coordination store: leader leases, terms, manager leases.
    pub dcs: Dcs,
    /// This host's name in manager leases.
    pub host_id: String,
    /// Stable read-write / read-only endpoints, served by a process of their own.
    pub endpoints: Endpoints,
    /// Wakes the supervisor at once (an engine process exited).
    pub(crate) wake: tokio::sync::Notify,
    /// Processes with an exit watcher.
    watched: Mutex<std::collections::HashSet<shoal_local::ProcessId>>,
    /// Whether this host held each cluster's manager lease at the last look (absent: not
    /// looked yet). Only the manager probes, restarts, fails over, runs operations and opens
    /// the stable endpoints of a cluster.
    managing: Mutex<HashMap<String, bool>>,
    /// The continuous archiver's memory (clusters archived now, their instances get an
    /// `archive-dir`).
    pub(crate) archiver: crate::archive::ArchiverState,
}

/// Resources of a cluster, parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub storage_bytes: u64,
}

impl Controller {
    /// Open the home, the store, the runtime and the engines.
    pub async fn open(home: PathBuf, cfg: HostConfig) -> Result<Arc<Controller>, String> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(home.join("clusters"))
            .map_err(|e| format!("cannot create {}: {e}", home.display()))?;
        // Each cluster's engine user must be able to pass through to its own directory, and
        // no one may list the others (`clusters/<name>` itself is 0700, its user's).
        for d in [home.clone(), home.join("clusters")] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| format!("cannot set permissions of {}: {e}", d.display()))?;
        }
        let store = Store::open(&home.join("state.db")).map_err(|e| e.to_string())?;
        // The state and coordination databases are the host's alone (earlier versions left
        // them readable by everyone).
        for f in [
            "state.db",
            "state.db-wal",
            "state.db-shm",
            "coordination.db",
            "coordination.db-wal",
            "coordination.db-shm",
        ] {
            let p = home.join(f);
            if p.exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| format!("cannot set permissions of {}: {e}", p.display()))?;
            }
        }
        let archiving = store
            .archives(None)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|a| a.enabled)
            .map(|a| a.cluster)
            .collect();
        let runtime = AddonRuntime::new(cfg.runtime.clone()).map_err(|e| e.to_string())?;
        let (engines, problems) = Engines::load(&runtime, &cfg.addons).await?;
        for p in &problems {
            tracing::warn!("addon not loaded: {p}");
        }
        if engines.names().is_empty() {
            let dirs: Vec<String> = cfg.addons.iter().map(|p| p.display().to_string()).collect();
            return Err(format!(
                "no addons found in {}; put engine addons (*.wasm) there or pass --addons DIR{}",
                dirs.join(", "),
                if problems.is_empty() {
                    String::new()
                } else {
                    format!(" (failed: {})", problems.join("; "))
                }
            ));
        }
        let engine_user =
            shoal_local::users::engine_user(&cfg.engine_user).map_err(|e| e.to_string())?;
        let limits = shoal_local::cgroups::detect();
        let dcs = match cfg.ha.dcs.as_str() {
            "etcd" => Dcs::Etcd(
                shoal_dcs::etcd::Etcd::new(cfg.ha.etcd_endpoints.clone())
                    .map_err(|e| e.to_string())?,
            ),
            _ => Dcs::Embedded(
                shoal_dcs::embedded::Embedded::open(&home.join("coordination.db"))
                    .map_err(|e| e.to_string())?,
            ),
        };
        let host_id = cfg.ha.host_id(&home);
        Ok(Arc::new(Controller {
            dcs,
            endpoints: Endpoints::new(&home, &host_id),
            host_id,
            wake: tokio::sync::Notify::new(),
            watched: Mutex::new(Default::default()),
            nodes: Arc::new(crate::nodes::LocalNodes),
            users: EngineUsers::new(&home, &cfg.engine_user, engine_user),
            home,
            cfg,
            store: Mutex::new(store),
            engines,
            runtime,
            create_lock: tokio::sync::Mutex::new(()),
            limits,
            locks: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            managing: Mutex::new(HashMap::new()),
            archiver: crate::archive::ArchiverState::new(archiving),
        }))
    }

    /// Run `f` on the store.
    pub fn db<T>(
        &self,
        f: impl FnOnce(&mut Store) -> crate::store::Result<T>,
    ) -> Result<T, ApiError> {
        let mut s = self.store.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s).map_err(|e| match e {
            crate::store::StoreError::Taken(m) => ApiError::conflict(m),
            e => ApiError::internal(e.to_string()),
        })
    }

    /// The OS user the cluster named `cluster` runs as ([`EngineUsers::of`]; the shared
    /// engine user when it is gone or its user cannot be had: never root).
    pub(crate) fn run_as_named(&self, cluster: &str) -> Option<RunAs> {
        if let Some(u) = self.users.cached(cluster) {
            return u;
        }
        match self.db(|s| s.cluster(cluster)).ok().flatten() {
            Some(cl) => self.users.of(&cl).unwrap_or(self.users.shared()),
            None => self.users.shared(),
        }
    }

    /// Record an event (and log it).
    pub fn event(
        &self,
        cluster: &str,
        instance: Option<&str>,
        level: Level,
        message: impl AsRef<str>,
    ) {
        let message = message.as_ref();
        match level {
            Level::Error => tracing::error!(cluster, instance, "{message}"),
            Level::Warning => tracing::warn!(cluster, instance, "{message}"),
            Level::Info => tracing::info!(cluster, instance, "{message}"),
        }
        if let Err(e) = self.db(|s| s.add_event(cluster, instance, level.as_str(), message)) {
            tracing::error!("cannot record event: {e}");
        }
    }

    /// Wake the supervisor the moment `pid` exits (once per process).
    pub(crate) fn watch_exit(self: &Arc<Self>, pid: shoal_local::ProcessId) {
        if !self
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid)
        {
            return;
        }
        let me = self.clone();
        let exited = self.nodes.exited(pid);
        tokio::spawn(async move {
            exited.await;
            me.watched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&pid);
            me.wake.notify_one();
        });
    }

    /// The per-cluster operation lock.
    pub(crate) fn lock(&self, cluster: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(cluster.to_string())
            .or_default()
            .clone()
    }

    pub fn info(&self) -> ServerInfo {
        ServerInfo {
            version: shoal_runtime::VERSION.into(),
            home: self.home.display().to_string(),
            pid: std::process::id(),
            resource_limits: self.limits_text(),
            engine_user: self.users.shown().to_string(),
            host_id: self.host_id.clone(),
        }
    }

    /// Whether this host acts on `cluster`: it held the manager lease at the last look, or
    /// nobody looked yet (a cluster this host just created).
    pub(crate) fn manages(&self, cluster: &str) -> bool {
        self.managing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster)
            .copied()
            .unwrap_or(true)
    }

    /// Take or renew the manager lease of `cluster`; returns whether this host holds it and
    /// what it held before (None: never looked).
    pub(crate) async fn take_management(&self, cluster: &str) -> (bool, Option<bool>) {
        let ttl = std::time::Duration::from_millis(self.cfg.ha.lease_ttl_ms);
        let now = self
            .dcs
            .manage(cluster, &self.host_id, ttl)
            .await
            .unwrap_or(false);
        let before = self
            .managing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cluster.to_string(), now);
        (now, before)
    }

    /// Refuse a change to `cluster` unless this host manages it (taking the manager lease if
    /// it is free): two hosts must never both act on one cluster.
    pub async fn require_management(&self, cluster: &str) -> Result<(), ApiError> {
        if self.db(|s| s.cluster(cluster))?.is_none() {
            return Ok(()); // the request itself reports the unknown cluster
        }
        if self.manages(cluster) && self.take_management(cluster).await.0 {
            return Ok(());
        }
        let holder = self.dcs.manager(cluster).await.ok().flatten();
        Err(ApiError::conflict(match holder {
            Some(h) => format!(
                "cluster {cluster} is managed by host {h}, not by this one ({}); send the \
                 request to that host (its socket, or SHOAL_SOCKET)",
                self.host_id
            ),
            None => format!(
                "this host ({}) does not manage cluster {cluster} and the coordination store \
                 names no live manager ({}); try again in a few seconds",
                self.host_id,
                self.dcs.describe()
            ),
        }))
    }

    pub fn limits_text(&self) -> String {
        match &self.limits {
            Enforcement::CgroupV2(dir) => {
                format!("enforced with cgroup v2 under {}", dir.display())
            }
            Enforcement::NotEnforced(why) => format!("not enforced: {why}"),
        }
    }

    pub fn engine_views(&self) -> Vec<EngineView> {
        self.engines.views()
    }

    /// The addon of a cluster's engine.
    pub(crate) fn addon(&self, engine: &str) -> Result<&LoadedAddon, ApiError> {
        self.engines.get(engine).ok_or_else(|| {
            ApiError::invalid(format!(
                "unknown engine {engine:?}; this host runs: {}",
                self.engines.names().join(", ")
            ))
        })
    }

    pub(crate) fn cluster_dir(&self, name: &str) -> PathBuf {
        self.home.join("clusters").join(name)
    }

    /// Where the data of deleted cluster `name` (uid `uid`) is kept:
    /// `clusters/.deleted/<name>-<uid>` (the directory is the host's alone).
    pub(crate) fn kept_dir(&self, name: &str, uid: i64) -> PathBuf {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.home.join("clusters").join(".deleted");
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir);
        dir.join(format!("{name}-{uid}"))
    }

    /// Create `cl`'s directory, owned by its OS user and private to it (0700): no other
    /// cluster's engine, nor a database superuser of another cluster, can enter it.
    pub(crate) fn prepare_cluster_dir(&self, cl: &ClusterRow) -> Result<(), String> {
        crate::node::private_dir(&self.cluster_dir(&cl.name), self.users.of(cl)?)
    }

    // ----- validation -----

    /// Check a spec completely; returns the resolved version and parsed resources.
    pub async fn validate_spec(
        &self,
        spec: &ClusterSpec,
    ) -> Result<(String, Resources, Vec<Param>), ApiError> {
        quantity::check_name(&spec.name).map_err(ApiError::invalid)?;
        let addon = self.addon(&spec.engine)?;
        quantity::parse_bytes("ha.max-lag-on-failover", &spec.ha.max_lag_on_failover)
            .map_err(ApiError::invalid)?;
        if spec.ha.mode == shoal_api::ReplicationMode::Sync {
            if spec.replicas < 2 {
                return Err(ApiError::invalid(
                    "ha.mode sync needs at least 2 instances (replicas >= 2)",
                ));
            }
            if spec.ha.sync_quorum == 0 || spec.ha.sync_quorum >= spec.replicas {
                return Err(ApiError::invalid(format!(
                    "ha.sync-quorum must be between 1 and {} (the number of replicas) for {} \
                     instances (got {})",
                    spec.replicas - 1,
                    spec.replicas,
                    spec.ha.sync_quorum
                )));
            }
        }
        let m = addon.manifest();
        if spec.ha.mode == shoal_api::ReplicationMode::Sync
            && m.sync_replication == wit::SyncSupport::None
        {
            return Err(ApiError::invalid(format!(
                "ha.mode sync: {} has no synchronous replication (its addon declares \
                 sync-replication none); use ha.mode async",
                m.display_name
            )));
        }
        let version = match &spec.version {
            Some(v) => {
                if !m.versions.iter().any(|x| &x.version == v) {
                    let known: Vec<&str> = m.versions.iter().map(|x| x.version.as_str()).collect();
                    return Err(ApiError::invalid(format!(
                        "{} version {v:?} is not supported; supported: {}",
                        spec.engine,
                        known.join(", ")
                    )));
                }
                v.clone()
            }
            None => m
                .versions
                .iter()
                .find(|v| v.is_default)
                .map(|v| v.version.clone())
                .unwrap_or_default(),
        };
        let max = m
            .topologies
            .iter()
            .filter(|t| t.kind != wit::TopologyKind::Sharded)
            .map(|t| t.max_members)
            .max()
            .unwrap_or(1);
        if let Some(shards) = spec.shards {
            let t = crate::topology::sharded_topology(m).ok_or_else(|| {
                ApiError::invalid(format!(
                    "shards: {} has no sharded topology (its addon declares {}); leave \
                     --shards out",
                    spec.engine,
                    m.topologies
                        .iter()
                        .map(|t| crate::topology::kind_name(t.kind))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            crate::sharded::check_shape(
                &spec.engine,
                shards,
                spec.replicas,
                t.min_members,
                t.max_members,
            )
            .map_err(ApiError::invalid)?;
            if spec.ha.mode == shoal_api::ReplicationMode::Sync {
                return Err(ApiError::invalid(
                    "ha.mode sync: a sharded cluster's shards replicate as the engine does \
                     (asynchronously); use ha.mode async",
                ));
            }
        } else if let Some(q) =
            crate::topology::quorum_topology(m).filter(|_| family(m) == Family::Quorum)
        {
            crate::topology::check_size(&spec.engine, spec.replicas, q.min_members, q.max_members)
                .map_err(ApiError::invalid)?;
        } else if spec.replicas == 0 || spec.replicas > max {
            return Err(ApiError::invalid(format!(
                "replicas must be between 1 and {max} for {} (got {})",
                spec.engine, spec.replicas
            )));
        }
        let resources = Resources {
            cpu_millis: spec
                .resources
                .cpu
                .as_deref()
                .map(quantity::parse_cpu)
                .transpose()
                .map_err(ApiError::invalid)?
                .unwrap_or(0),
            memory_bytes: spec
                .resources
                .memory
                .as_deref()
                .map(|t| quantity::parse_bytes("memory", t))
                .transpose()
                .map_err(ApiError::invalid)?
                .unwrap_or(0),
            storage_bytes: spec
                .resources
                .storage
                .as_deref()
                .map(|t| quantity::parse_bytes("storage", t))
                .transpose()
                .map_err(ApiError::invalid)?
                .unwrap_or(0),
        };
        let params = self.typed_params(addon, &version, &spec.parameters)?;
        let errors = addon
            .call(&CallContext::default())
            .validate(&params)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        if !errors.is_empty() {
            let list: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}", e.name, e.message))
                .collect();
            return Err(ApiError::invalid(format!(
                "invalid parameters: {}",
                list.join("; ")
            )));
        }
        if let Some(text) = spec.resources.memory.as_deref() {
            quantity::check_memory(text, resources.memory_bytes, quantity::machine_memory())
                .map_err(ApiError::invalid)?;
        }
        // What the addon derives from the resources must fit its own schema too.
        let effective = addon
            .call(&CallContext::default())
            .effective(
                &params,
                wit::Resources {
                    cpu_millis: resources.cpu_millis,
                    memory_bytes: resources.memory_bytes,
                    storage_bytes: resources.storage_bytes,
                },
            )
            .await;
        if let Ok(effective) = effective {
            let schema = &addon.manifest().parameters;
            for p in effective
                .iter()
                .filter(|p| !spec.parameters.contains_key(&p.name))
            {
                let Some(ps) = schema.iter().find(|s| s.name == p.name) else {
                    continue;
                };
                if let Err(e) = shoal_runtime::params::check_value(&ps.type_, &p.value) {
                    return Err(ApiError::invalid(format!(
                        "these resources derive {} = {e}; give the instances less (or more) \
                         memory, or set {} yourself",
                        p.name, p.name
                    )));
                }
            }
        }
        Ok((version, resources, params))
    }

    /// Parameters as typed values by the addon's schema.
    pub(crate) fn typed_params(
        &self,
        addon: &LoadedAddon,
        version: &str,
        given: &BTreeMap<String, String>,
    ) -> Result<Vec<Param>, ApiError> {
        let schema = &addon.manifest().parameters;
        given
            .iter()
            .map(|(name, text)| {
                let spec = schema.iter().find(|s| &s.name == name).ok_or_else(|| {
                    let known: Vec<&str> = schema
                        .iter()
                        .filter(|s| for_version(s, version))
                        .map(|s| s.name.as_str())
                        .collect();
                    ApiError::invalid(format!(
                        "{} has no parameter {name:?} (it has: {})",
                        addon.engine(),
                        known.join(", ")
                    ))
                })?;
                if !for_version(spec, version) {
                    return Err(ApiError::invalid(format!(
                        "parameter {name} does not exist in {} {version} (only in {})",
                        addon.engine(),
                        spec.versions.join(", ")
                    )));
                }
                let value = shoal_runtime::params::parse_value(&spec.type_, text)
                    .map_err(|e| ApiError::invalid(format!("parameter {name}: {e}")))?;
                Ok(Param {
                    name: name.clone(),
                    value,
                })
            })
            .collect()
    }

    /// Check that the programs the addon's run-spec names exist, with a draft instance.
    pub(crate) async fn check_binaries(
        &self,
        addon: &LoadedAddon,
        version: &str,
        params: &[Param],
        roles: &[Role],
    ) -> Result<(), ApiError> {
        let search = engines::binaries(&self.cfg, addon, version);
        let draft_ports: Vec<wit::NamedPort> = addon
            .manifest()
            .ports
            .iter()
            .map(|p| wit::NamedPort {
                name: p.name.clone(),
                port: 1,
            })
            .collect();
        for role in roles {
            let draft = wit::Instance {
                cluster: "check".into(),
                component: "main".into(),
                name: "check-0".into(),
                engine_version: version.into(),
                endpoint: wit::Endpoint {
                    host: "127.0.0.1".into(),
                    port: 1,
                },
                ports: draft_ports.clone(),
                data_dir: Some("/nonexistent/data".into()),
                config_dir: Some("/nonexistent/config".into()),
                archive_dir: None,
                role: Some(role.as_str().into()),
                shard: None,
                term: 0,
                credentials: Some(wit::Credentials {
                    username: "check".into(),
                    password: "check".into(),
                }),
                resources: wit::Resources {
                    cpu_millis: 0,
                    memory_bytes: 0,
                    storage_bytes: 0,
                },
            };
            let members = [wit::Member {
                name: "check-1".into(),
                endpoint: wit::Endpoint {
                    host: "127.0.0.1".into(),
                    port: 2,
                },
                ports: draft_ports.clone(),
                role: Some("primary".into()),
                healthy: true,
                shard: None,
            }];
            let plan = addon
                .call(&CallContext::default())
                .run_spec(&draft, &members, params)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            for cmd in plan.init.iter().chain(std::iter::once(&plan.server)) {
                search
                    .find(&cmd.program)
                    .map_err(|e| ApiError::invalid(e.to_string()))?;
            }
        }
        Ok(())
    }

    // ----- submitting operations -----

    /// Validate and queue the creation of a cluster.
    pub async fn create(self: &Arc<Self>, spec: ClusterSpec) -> Result<OpView, ApiError> {
        self.create_with(spec, serde_json::json!({})).await
    }

    /// Validate and queue a create whose operation gets `op_params` (a restore names its
    /// backup there).
    pub(crate) async fn create_with(
        self: &Arc<Self>,
        spec: ClusterSpec,
        op_params: serde_json::Value,
    ) -> Result<OpView, ApiError> {
        let (version, _resources, params) = self.validate_spec(&spec).await?;
        let addon = self.addon(&spec.engine)?;
        // From here to the insert, one create at a time: a name or a port cannot be handed
        // out twice.
        let _one_at_a_time = self.create_lock.lock().await;
        if let Some(c) = self.db(|s| s.cluster(&spec.name))? {
            return Err(ApiError::conflict(format!(
                "a cluster named {:?} already exists (state {})",
                spec.name, c.state
            )));
        }
        let dir = self.cluster_dir(&spec.name);
        if dir.exists() && !crate::node::is_empty(&dir) {
            return Err(ApiError::conflict(format!(
                "{} holds files no cluster owns (left by an earlier Shoal?); move them away \
                 before reusing the name {:?}",
                dir.display(),
                spec.name
            )));
        }
        let roles: &[Role] = if spec.shards.is_some() {
            &[Role::ShardMember]
        } else if crate::topology::family(addon.manifest()) == Family::Quorum {
            &[Role::Member]
        } else if spec.replicas > 1 {
            &[Role::Primary, Role::Replica]
        } else {
            &[Role::Primary]
        };
        self.check_binaries(addon, &version, &params, roles).await?;
        let per_instance = addon.manifest().ports.len().max(1);
        let reserved = self.db(|s| s.reserved_ports())?;
        let range = self.cfg.port_range[0]..=self.cfg.port_range[1];
        // The instances' ports and the two stable endpoints.
        let all_ports = shoal_local::ports::allocate(
            &range,
            &reserved,
            per_instance * (spec.replicas * spec.shards.unwrap_or(1)) as usize + 2,
        )
        .map_err(|e| ApiError::conflict(e.to_string()))?;
        let (rw, ro) = (
            all_ports[all_ports.len() - 2],
            all_ports[all_ports.len() - 1],
        );
        let row = ClusterRow {
            name: spec.name.clone(),
            engine: spec.engine.clone(),
            version,
            spec: spec.clone(),
            addon_digest: addon.info().digest.clone(),
            state: ClusterState::Creating,
            created_ms: now_ms(),
            uid: 0,
            os_user: None,
        };
        let prefix = self.users.prefix();
        let (_uid, id) = self.db(|s| s.insert_cluster(&row, Some((rw, ro)), &op_params, prefix))?;
        drop(_one_at_a_time);
        self.event(
            &spec.name,
            None,
            Level::Info,
            format!(
                "create requested: {} {} with {} instance(s)",
                row.engine, row.version, spec.replicas
            ),
        );
        self.spawn_op(id);
        self.op_view(id)
    }

    /// Queue `kind` on an existing cluster.
    pub fn submit(self: &Arc<Self>, cluster: &str, op: Op) -> Result<OpView, ApiError> {
        let (kind, params) = (op.kind(), op.params());
        let c = self
            .db(|s| s.cluster(cluster))?
            .ok_or_else(|| ApiError::not_found(format!("no cluster named {cluster:?}")))?;
        if c.state == ClusterState::Deleting {
            return Err(ApiError::conflict(format!(
                "cluster {cluster} is being deleted"
            )));
        }
        let id = self.db(|s| s.insert_op(cluster, kind, &params))?;
        self.event(cluster, None, Level::Info, format!("{kind} requested"));
        self.spawn_op(id);
        self.op_view(id)
    }

    /// Queue `kind` on `cluster` on behalf of an operation a previous host left unfinished
    /// (a delete under way included).
    pub(crate) fn submit_resumed(
        self: &Arc<Self>,
        cluster: &str,
        op: Op,
    ) -> Result<OpView, ApiError> {
        let (kind, params) = (op.kind(), op.params());
        self.db(|s| s.cluster(cluster))?
            .ok_or_else(|| ApiError::not_found(format!("no cluster named {cluster:?}")))?;
        let id = self.db(|s| s.insert_op(cluster, kind, &params))?;
        self.event(cluster, None, Level::Info, format!("{kind} resumed"));
        self.spawn_op(id);
        self.op_view(id)
    }

    /// Validate a scale and say what it does: the instances added or removed (newest
    /// replicas first, never the primary); queue it unless `dry_run`, which changes nothing.
    pub fn scale(
        self: &Arc<Self>,
        cluster: &str,
        replicas: u32,
        dry_run: bool,
    ) -> Result<shoal_api::ScalePlanView, ApiError> {
        let c = self
            .db(|s| s.cluster(cluster))?
            .ok_or_else(|| ApiError::not_found(format!("no cluster named {cluster:?}")))?;
        let addon = self.addon(&c.engine)?;
        if c.spec.shards.is_some() {
            return self.scale_sharded(&c, addon, replicas, dry_run);
        }
        if family(addon.manifest()) == Family::Quorum {
            return self.scale_quorum(&c, addon, replicas, dry_run);
        }
        let max = addon
            .manifest()
            .topologies
            .iter()
            .map(|t| t.max_members)
            .max()
            .unwrap_or(1);
        if replicas == 0 || replicas > max {
            return Err(ApiError::invalid(format!(
                "replicas must be between 1 and {max} for {} (got {replicas})",
                c.engine
            )));
        }
        let all = self.db(|s| s.instances(cluster))?;
        let current = all.len() as u32;
        self.check_free_ports(addon, replicas.saturating_sub(current) as usize)?;
        let (add, remove) = scale_plan(cluster, &all, replicas);
        let mut plan = shoal_api::ScalePlanView {
            cluster: cluster.to_string(),
            from: current,
            to: replicas,
            add,
            remove,
            op: None,
        };
        if replicas == current {
            return Err(ApiError::invalid(format!(
                "cluster {cluster} has {current} instance(s) already; nothing to change"
            )));
        }
        if !dry_run {
            plan.op = Some(self.submit(cluster, Op::Scale { replicas })?);
        }
        Ok(plan)
    }

    /// [`Self::scale`] for a quorum: the plan from [`crate::topology::plan_scale`], one
    /// member at a time, refused when it would not keep a quorum.
    fn scale_quorum(
        self: &Arc<Self>,
        c: &ClusterRow,
        addon: &LoadedAddon,
        replicas: u32,
        dry_run: bool,
    ) -> Result<shoal_api::ScalePlanView, ApiError> {
        let cluster = c.name.as_str();
        let q = crate::topology::quorum_topology(addon.manifest())
            .ok_or_else(|| ApiError::internal("a quorum engine without a quorum topology"))?;
        let all = self.db(|s| s.instances(cluster))?;
        let current = all.len() as u32;
        if replicas == current {
            return Err(ApiError::invalid(format!(
                "cluster {cluster} has {current} member(s) already; nothing to change"
            )));
        }
        let (steps, _notes) = crate::topology::plan_scale(
            &c.engine,
            &crate::topology::voters(&*self.nodes, &all),
            replicas,
            q.min_members,
            q.max_members,
        )
        .map_err(|e| ApiError::invalid(format!("cannot scale {cluster}: {e}")))?;
        let (add, _) = scale_plan(cluster, &all, replicas.max(current));
        let remove = steps
            .iter()
            .filter_map(|s| match s {
                crate::topology::Step::Remove(n) => Some(n.clone()),
                crate::topology::Step::Add => None,
            })
            .collect();
        self.check_free_ports(addon, replicas.saturating_sub(current) as usize)?;
        let mut plan = shoal_api::ScalePlanView {
            cluster: cluster.to_string(),
            from: current,
            to: replicas,
            add,
            remove,
            op: None,
        };
        if !dry_run {
            plan.op = Some(self.submit(cluster, Op::Scale { replicas })?);
        }
        Ok(plan)
    }

    /// [`Self::scale`] for a sharded cluster: `replicas` members in every shard, from
    /// [`crate::sharded::plan_resize`] (a shard's primary is never removed).
    fn scale_sharded(
        self: &Arc<Self>,
        c: &ClusterRow,
        addon: &LoadedAddon,
        replicas: u32,
        dry_run: bool,
    ) -> Result<shoal_api::ScalePlanView, ApiError> {
        let cluster = c.name.as_str();
        let t = crate::topology::sharded_topology(addon.manifest()).ok_or_else(|| {
            ApiError::internal("a sharded cluster's addon has no sharded topology")
        })?;
        let all = self.db(|s| s.instances(cluster))?;
        if replicas == c.spec.replicas {
            return Err(ApiError::invalid(format!(
                "every shard of {cluster} has {replicas} member(s) already; nothing to change"
            )));
        }
        let steps = crate::sharded::plan_resize(
            &c.engine,
            &crate::sharded::seen(&*self.nodes, &all),
            replicas,
            t.min_members,
            t.max_members,
        )
        .map_err(|e| ApiError::invalid(format!("cannot scale {cluster}: {e}")))?;
        let adds = steps
            .iter()
            .filter(|s| matches!(s, crate::sharded::Step::Add(_)))
            .count();
        self.check_free_ports(addon, adds)?;
        let current = all.len() as u32;
        let mut plan = shoal_api::ScalePlanView {
            cluster: cluster.to_string(),
            from: current,
            to: current + adds as u32 - (steps.len() - adds) as u32,
            add: steps
                .iter()
                .filter_map(|s| match s {
                    crate::sharded::Step::Add(n) => Some(format!("a member of shard {n}")),
                    crate::sharded::Step::Remove(_) => None,
                })
                .collect(),
            remove: steps
                .iter()
                .filter_map(|s| match s {
                    crate::sharded::Step::Remove(n) => Some(n.clone()),
                    crate::sharded::Step::Add(_) => None,
                })
                .collect(),
            op: None,
        };
        if !dry_run {
            plan.op = Some(self.submit(cluster, Op::Scale { replicas })?);
        }
        Ok(plan)
    }

    /// Whether the port range still has room for `instances` more instances of `addon`.
    fn check_free_ports(&self, addon: &LoadedAddon, instances: usize) -> Result<(), ApiError> {
        if instances == 0 {
            return Ok(());
        }
        let per_instance = addon.manifest().ports.len().max(1);
        let reserved = self.db(|s| s.reserved_ports())?;
        let range = self.cfg.port_range[0]..=self.cfg.port_range[1];
        shoal_local::ports::allocate(&range, &reserved, per_instance * instances)
            .map_err(|e| ApiError::conflict(e.to_string()))?;
        Ok(())
    }

    pub(crate) fn spawn_op(self: &Arc<Self>, id: i64) {
        let me = self.clone();
        tokio::spawn(async move { crate::ops::run(me, id).await });
    }

    pub fn op_view(&self, id: i64) -> Result<OpView, ApiError> {
        self.db(|s| s.op(id))?
            .ok_or_else(|| ApiError::not_found(format!("no operation {id}")))
    }

    // ----- views -----

    pub async fn list(&self) -> Result<Vec<ClusterView>, ApiError> {
        let clusters = self.db(|s| s.clusters())?;
        let mut out = Vec::new();
        for c in &clusters {
            out.push(self.view(c).await?);
        }
        Ok(out)
    }

    pub async fn describe(&self, name: &str) -> Result<ClusterView, ApiError> {
        let c = self
            .db(|s| s.cluster(name))?
            .ok_or_else(|| ApiError::not_found(format!("no cluster named {name:?}")))?;
        self.view(&c).await
    }

    async fn view(&self, c: &ClusterRow) -> Result<ClusterView, ApiError> {
        let instances = self.db(|s| s.instances(&c.name))?;
        let last_op = self.db(|s| s.last_op(&c.name))?;
        let (rw, ro) = self.db(|s| s.endpoints(&c.name))?;
        // The coordination store may be unreachable (etcd down): describe still answers.
        let leader = self.dcs.leader(&c.name).await.ok().flatten();
        let manager = self.dcs.manager(&c.name).await.ok().flatten();
        let family = self
            .addon(&c.engine)
            .map(|a| crate::topology::family_of(a.manifest(), &c.spec))
            .unwrap_or(Family::PrimaryReplica);
        let shards = crate::sharded::state_of(&*self.nodes, &instances)
            .filter(|_| family == Family::Sharded)
            .map(|s| crate::sharded::summary(&s).0);
        // A quorum's leader and term are the engine's, as its members' probes report them.
        let quorum = crate::topology::state_of(&instances).filter(|_| family == Family::Quorum);
        let (leader, term) = match &quorum {
            Some(q) => (q.leader.clone(), q.term),
            None => (
                leader.as_ref().map(|(l, _)| l.holder.clone()),
                leader.as_ref().map(|(l, _)| l.term),
            ),
        };
        Ok(ClusterView {
            uid: c.uid,
            os_user: c.os_user.clone(),
            name: c.name.clone(),
            engine: c.engine.clone(),
            version: c.version.clone(),
            replicas: c.spec.replicas,
            state: c.state.as_str().to_string(),
            resources: c.spec.resources.clone(),
            resource_limits: self.limits_text(),
            parameters: c.spec.parameters.clone(),
            instances: instances.iter().map(instance_view).collect(),
            addon_digest: format!("sha256:{}", c.addon_digest),
            created_unix_ms: c.created_ms,
            last_op,
            ha: c.spec.ha.clone(),
            topology: family.to_string(),
            quorum: quorum.map(|q| q.to_string()),
            shards,
            leader,
            term,
            manager,
            read_write: rw.map(|p| format!("127.0.0.1:{p}")),
            read_only: ro.map(|p| format!("127.0.0.1:{p}")),
        })
    }

    /// Open (if needed) and re-point the stable endpoints of `cluster` from its rows: the
    /// read-write port to the running instance the host holds as primary, the read-only port
    /// to healthy running replicas.
    pub(crate) async fn refresh_routes(&self, cluster: &str) {
        // Only the managing host serves a cluster's endpoints.
        if !self.manages(cluster) {
            if let Err(e) = self.endpoints.remove(cluster).await {
                tracing::warn!(cluster, "stable endpoints: {e}");
            }
            return;
        }
        let Ok((Some(rw), Some(ro))) = self.db(|s| s.endpoints(cluster)) else {
            return;
        };
        if let Err(e) = self.endpoints.ensure(cluster, "127.0.0.1", rw, ro).await {
            self.event(
                cluster,
                None,
                Level::Warning,
                format!("stable endpoints unavailable: {e}"),
            );
            return;
        }
        let all = self.db(|s| s.instances(cluster)).unwrap_or_default();
        let addr = |i: &InstanceRow| -> Option<std::net::SocketAddr> {
            let ip = i.host.parse::<std::net::IpAddr>().ok()?;
            Some(std::net::SocketAddr::new(ip, i.client_port()?))
        };
        let serving = |i: &&InstanceRow| i.state == Phase::Running && self.nodes.alive(i);
        // The writer: the elected primary, or in a quorum the member whose last healthy
        // probe said it leads (the engine elects it).
        // In a sharded cluster, every shard's primary (a cluster-aware client connecting
        // through the read-write endpoint learns the shard map from it and follows it).
        let leader = crate::topology::state_of(&all).and_then(|q| q.leader);
        let primaries: Vec<String> = crate::sharded::state_of(&*self.nodes, &all)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| s.primary)
            .collect();
        let writes = |i: &InstanceRow| {
            i.role == Role::Primary
                || leader.as_deref() == Some(&i.name)
                || primaries.contains(&i.name)
        };
        let routes = Routes {
            rw: all
                .iter()
                .filter(serving)
                .find(|i| writes(i))
                .and_then(addr),
            ro: all
                .iter()
                .filter(serving)
                .filter(|i| !writes(i) && i.health == Health::Healthy)
                .filter_map(addr)
                .collect(),
        };
        if let Err(e) = self.endpoints.set_routes(cluster, routes).await {
            self.event(
                cluster,
                None,
                Level::Warning,
                format!("stable endpoints not re-pointed: {e}"),
            );
        }
    }

    pub fn events(&self, name: &str, limit: u32) -> Result<Vec<EventView>, ApiError> {
        if self.db(|s| s.cluster(name))?.is_none() && self.db(|s| s.events(name, 1))?.is_empty() {
            return Err(ApiError::not_found(format!("no cluster named {name:?}")));
        }
        Ok(self
            .db(|s| s.events(name, limit))?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    /// Every running instance's metrics, read now through the addon's `metrics` hook. An
    /// instance whose addon call fails is listed with the error instead of samples.
    pub async fn metrics(&self, name: &str) -> Result<Vec<shoal_api::InstanceMetrics>, ApiError> {
        let cl = self
            .db(|s| s.cluster(name))?
            .ok_or_else(|| ApiError::not_found(format!("no cluster named {name:?}")))?;
        let all = self.db(|s| s.instances(name))?;
        let cr = secrets::load(&self.home, name).map_err(|e| {
            ApiError::internal(format!("cannot read the credentials of {name}: {e}"))
        })?;
        let addon = self.addon(&cl.engine)?;
        let mut out = Vec::new();
        for i in &all {
            let mut row = shoal_api::InstanceMetrics {
                instance: i.name.clone(),
                role: i.role.as_str().to_string(),
                samples: Vec::new(),
                error: None,
            };
            if i.state != Phase::Running {
                row.error = Some(format!("{} is {}", i.name, i.state));
                out.push(row);
                continue;
            }
            let r = addon
                .call(&self.call_ctx(i, &all, false))
                .metrics(&self.wit_instance(&cl, i, &cr, false))
                .await;
            match r {
                Ok(samples) => {
                    row.samples = samples
                        .into_iter()
                        .map(|s| shoal_api::MetricSample {
                            name: s.name,
                            kind: match s.kind {
                                wit::MetricKind::Gauge => "gauge".into(),
                                wit::MetricKind::Counter => "counter".into(),
                            },
                            value: s.value,
                            labels: s.labels.into_iter().map(|l| (l.name, l.value)).collect(),
                            help: s.help,
                        })
                        .collect()
                }
                Err(e) => row.error = Some(e.to_string()),
            }
            out.push(row);
        }
        Ok(out)
    }

    pub fn connect(&self, name: &str) -> Result<ConnectInfo, ApiError> {
        let c = self
            .db(|s| s.cluster(name))?
            .ok_or_else(|| ApiError::not_found(format!("no cluster named {name:?}")))?;
        let instances = self.db(|s| s.instances(name))?;
        let primary = instances
            .iter()
            .find(|i| i.role == Role::Primary)
            .or_else(|| instances.first())
            .ok_or_else(|| ApiError::conflict(format!("cluster {name} has no instances yet")))?;
        // The account users get; never the platform's own.
        let creds = secrets::load_admin(&self.home, name).map_err(|e| {
            ApiError::internal(format!("cannot read the credentials of {name}: {e}"))
        })?;
        let (rw, ro) = self.db(|s| s.endpoints(name))?;
        // Clients go through the stable read-write endpoint when the cluster has one.
        let (host, port) = match rw {
            Some(p) => ("127.0.0.1".to_string(), p),
            None => (primary.host.clone(), primary.client_port().unwrap_or(0)),
        };
        let client = self.addon(&c.engine)?.manifest().client.clone();
        let fill_at = |t: &str, port: u16| {
            t.replace("{user}", &creds.user)
                .replace("{password}", &creds.password)
                .replace("{host}", &host)
                .replace("{port}", &port.to_string())
        };
        let fill = |t: &str| fill_at(t, port);
        let uri = client.as_ref().map(|ci| fill(&ci.uri_template));
        let read_only_uri = match (&client, ro) {
            (Some(ci), Some(p)) => Some(fill_at(&ci.uri_template, p)),
            _ => None,
        };
        let shell = client
            .map(|ci| {
                ci.shell
                    .iter()
                    .map(|a| fill(a).replace("{uri}", uri.as_deref().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default();
        Ok(ConnectInfo {
            cluster: name.into(),
            instance: primary.name.clone(),
            host,
            port,
            user: creds.user,
            password: creds.password,
            uri,
            shell,
            read_write: rw.map(|p| format!("127.0.0.1:{p}")),
            read_only: ro.map(|p| format!("127.0.0.1:{p}")),
            read_only_uri,
        })
    }
}

/// Which instances a scale of `all` to `to` instances adds (the next ordinals) and removes
/// (newest replicas first, never the primary).
pub(crate) fn scale_plan(
    cluster: &str,
    all: &[InstanceRow],
    to: u32,
) -> (Vec<String>, Vec<String>) {
    let now = all.len() as u32;
    if to >= now {
        let next = all.iter().map(|i| i.ordinal + 1).max().unwrap_or(0);
        let add = (0..to - now)
            .map(|k| format!("{cluster}-{}", next + k))
            .collect();
        return (add, Vec::new());
    }
    let mut victims: Vec<&InstanceRow> = all.iter().filter(|i| i.role != Role::Primary).collect();
    victims.sort_by_key(|i| std::cmp::Reverse(i.ordinal));
    let remove = victims
        .into_iter()
        .take((now - to) as usize)
        .map(|i| i.name.clone())
        .collect();
    (Vec::new(), remove)
}

/// The user-facing view of an instance row.
pub fn instance_view(i: &InstanceRow) -> InstanceView {
    InstanceView {
        name: i.name.clone(),
        role: i.role.as_str().to_string(),
        state: i.state.to_string(),
        pid: i.process.map(|p| p.pid),
        host: i.host.clone(),
        ports: i.ports.clone(),
        health: i.health.to_string(),
        observed_role: i.observed_role.clone(),
        writable: i.writable,
        lag_bytes: i.lag_bytes,
        detail: i.detail.clone(),
        restarts: i.restarts,
        data_dir: i.data_dir().display().to_string(),
        log_file: i.log_file().display().to_string(),
        probed_unix_ms: i.probed_ms,
        term: i.term,
        position: i.position,
        shard: i.shard,
    }
}

/// Whether parameter `s` exists in engine version `version`.
pub(crate) fn for_version(s: &wit::ParamSpec, version: &str) -> bool {
    s.versions.is_empty() || s.versions.iter().any(|v| v == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, ordinal: u32, role: &str) -> InstanceRow {
        let mut i = InstanceRow::for_test("c", name, ordinal, Role::parse(role));
        i.health = Health::Healthy;
        i
    }

    #[test]
    fn a_scale_adds_the_next_ordinals_and_removes_the_newest_replicas_never_the_primary() {
        // c-2 is the primary after a failover.
        let all = [
            row("c-0", 0, "replica"),
            row("c-2", 2, "primary"),
            row("c-3", 3, "replica"),
        ];
        assert_eq!(
            scale_plan("c", &all, 5),
            (vec!["c-4".to_string(), "c-5".to_string()], vec![])
        );
        assert_eq!(
            scale_plan("c", &all, 1),
            (vec![], vec!["c-3".to_string(), "c-0".to_string()])
        );
        assert_eq!(scale_plan("c", &all, 3), (vec![], vec![]));
    }
}
