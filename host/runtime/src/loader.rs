//! Loading an addon: recognise the file, compile it (or map it from the cache), check that it
//! speaks this host's addon API and exports every required interface, link it, ask it for its
//! manifest and check the manifest. Every failure is a [`LoadError`] naming the file.

use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::adapter::{self, ApiVersion};
use crate::addon::{AddonCore, AddonInfo, HookLimits, Indices, LoadedAddon};
use crate::cache::CodeSource;
use crate::error::LoadError;
use crate::sandbox::{CallContext, Sandbox};
use crate::wit::{self, AddonManifest, Hook};
use crate::AddonRuntime;

pub(crate) async fn load(
    rt: AddonRuntime,
    origin: &str,
    bytes: Vec<u8>,
) -> Result<LoadedAddon, LoadError> {
    let started = Instant::now();
    sniff(origin, &bytes)?;
    let digest = hex::encode(Sha256::digest(&bytes));
    let size = bytes.len() as u64;

    // Which API it speaks, from its interface names, before compiling: an addon of an older
    // API is adapted to this one first (see `crate::adapter`).
    let api = api_version(origin, &bytes)?;
    let bytes = match api {
        ApiVersion::V0_2_0 => bytes,
        ApiVersion::V0_1_0 => {
            adapter::adapt_v0_1_0(&bytes).map_err(|detail| LoadError::Invalid {
                origin: origin.to_string(),
                detail: format!("adapting an addon of API 0.1.0: {detail}"),
            })?
        }
    };
    // The compiled code is cached under the digest of what is compiled.
    let code_digest = match api {
        ApiVersion::V0_2_0 => digest.clone(),
        ApiVersion::V0_1_0 => hex::encode(Sha256::digest(&bytes)),
    };

    let compile_rt = rt.clone();
    let (component, code_source) = tokio::task::spawn_blocking(move || {
        let inner = &compile_rt.inner;
        match &inner.cache {
            Some(cache) => cache.load(&inner.engine, &bytes, &code_digest),
            None => Component::new(&inner.engine, &bytes).map(|c| (c, CodeSource::Compiled)),
        }
    })
    .await
    .map_err(|e| LoadError::Invalid {
        origin: origin.to_string(),
        detail: format!("compilation task failed: {e}"),
    })?
    .map_err(|e| LoadError::Invalid {
        origin: origin.to_string(),
        detail: format!("{e:#}"),
    })?;

    let (exports, imports) = check_interfaces(origin, &rt, &component, api)?;

    let pre =
        rt.inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::UnsupportedImport {
                origin: origin.to_string(),
                detail: format!("{e:#}"),
            })?;
    let indices = Arc::new(
        Indices::new(&pre, api).map_err(|e| LoadError::MissingExports {
            origin: origin.to_string(),
            missing: format!("{e:#}"),
        })?,
    );

    // Ask the addon who it is, with no capabilities and the default manifest deadline.
    let file_name: Arc<str> = std::path::Path::new(origin)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| origin.to_string())
        .into();
    let probe_core = Arc::new(AddonCore {
        rt: rt.clone(),
        pre: pre.clone(),
        indices: indices.clone(),
        name: file_name,
        sandbox: Arc::new(Sandbox::default()),
        limits: limits_for(&rt, None),
        stats: Default::default(),
    });
    // Every export is type-checked against this host's WIT in the same call, once, here.
    let manifest = crate::call::Caller::fresh(&probe_core, &CallContext::default())
        .checked_manifest()
        .await
        .map_err(|source| LoadError::Manifest {
            origin: origin.to_string(),
            source: Box::new(source),
        })?;
    validate_manifest(&manifest).map_err(|detail| LoadError::BadManifest {
        origin: origin.to_string(),
        detail,
    })?;

    let grants = rt.inner.config.grants_for(&manifest.engine);
    if !grants.digests.is_empty()
        && !grants
            .digests
            .iter()
            .any(|d| d.eq_ignore_ascii_case(&digest))
    {
        return Err(LoadError::GrantPin {
            origin: origin.to_string(),
            engine: manifest.engine.clone(),
            digest: digest.clone(),
        });
    }
    let core = Arc::new(AddonCore {
        rt: rt.clone(),
        pre,
        indices,
        name: manifest.engine.clone().into(),
        sandbox: Arc::new(Sandbox::new(&manifest, &grants)),
        limits: limits_for(&rt, Some(&manifest)),
        stats: Default::default(),
    });
    let info = AddonInfo {
        origin: origin.to_string(),
        digest,
        size,
        api_version: api.as_str().to_string(),
        exports,
        imports,
        code_source,
        load_time: started.elapsed(),
    };
    tracing::debug!(
        addon = %manifest.engine,
        version = %manifest.addon_version,
        digest = %&info.digest[..12],
        from_cache = code_source == CodeSource::Cache,
        ms = info.load_time.as_millis() as u64,
        "addon loaded"
    );
    Ok(LoadedAddon::new(core, manifest, info))
}

/// Recognise what kind of file `bytes` is before handing it to the compiler.
fn sniff(origin: &str, bytes: &[u8]) -> Result<(), LoadError> {
    let not_wasm = |detail: String| LoadError::NotWasm {
        origin: origin.to_string(),
        detail,
    };
    if bytes.is_empty() {
        return Err(not_wasm("the file is empty".into()));
    }
    if bytes.len() < 8 {
        return Err(not_wasm(format!("the file is only {} bytes", bytes.len())));
    }
    if &bytes[..4] != b"\0asm" {
        return Err(not_wasm(format!(
            "it starts with {:02x?}, not the \\0asm magic",
            &bytes[..4]
        )));
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Err(LoadError::CoreModule {
            origin: origin.to_string(),
        }),
        [0x0d, 0, 1, 0] => Ok(()),
        ref other => Err(LoadError::Invalid {
            origin: origin.to_string(),
            detail: format!("unknown WebAssembly version/layer {other:02x?}"),
        }),
    }
}

/// The addon API a component speaks, from the versions of its `shoal:addon` names: one
/// supported version, or 0.1.0 throughout.
fn api_version(origin: &str, bytes: &[u8]) -> Result<ApiVersion, LoadError> {
    let versions = adapter::api_versions(bytes).map_err(|detail| LoadError::Invalid {
        origin: origin.to_string(),
        detail,
    })?;
    let shown = |v: &str| {
        if v.is_empty() {
            "(unversioned)".to_string()
        } else {
            v.to_string()
        }
    };
    match versions.as_slice() {
        // Not an addon at all: said after compiling, with what it does export.
        [] => Ok(ApiVersion::V0_2_0),
        [one] => ApiVersion::parse(one).ok_or_else(|| LoadError::ApiVersion {
            origin: origin.to_string(),
            found: shown(one),
            supported: ApiVersion::supported_list(),
        }),
        several => Err(LoadError::ApiVersion {
            origin: origin.to_string(),
            found: several
                .iter()
                .map(|v| shown(v))
                .collect::<Vec<_>>()
                .join(" and "),
            supported: ApiVersion::supported_list(),
        }),
    }
}

/// The component's export and import names, after checking it exports every required
/// interface of API `api` (0.1.0 components seen after adaptation).
fn check_interfaces(
    origin: &str,
    rt: &AddonRuntime,
    component: &Component,
    api: ApiVersion,
) -> Result<(Vec<String>, Vec<String>), LoadError> {
    let engine = &rt.inner.engine;
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let ours = |n: &String| n.starts_with(&format!("{}/", wit::PACKAGE));
    if !exports.iter().any(ours) {
        return Err(LoadError::NotAnAddon {
            origin: origin.to_string(),
            exports: if exports.is_empty() {
                "nothing".into()
            } else {
                exports.join(", ")
            },
        });
    }
    // What each required interface is named in a component of `api`, as adapted.
    let expected = |req: &str| match (api, req) {
        (ApiVersion::V0_1_0, "shoal:addon/metadata") => format!("{req}@0.1.0"),
        _ => format!("{req}@{}", wit::API_VERSION),
    };
    let missing: Vec<String> = wit::REQUIRED_EXPORTS
        .iter()
        .map(|req| expected(req))
        .filter(|name| !exports.contains(name))
        .map(|name| name.replace("@0.2.0", &format!("@{}", api.as_str())))
        .collect();
    if !missing.is_empty() {
        return Err(LoadError::MissingExports {
            origin: origin.to_string(),
            missing: missing.join(", "),
        });
    }
    Ok((exports, imports))
}

/// Effective limits per hook: the manifest's request (or the operator's default), capped by
/// the operator's maxima.
pub(crate) fn limits_for(
    rt: &AddonRuntime,
    manifest: Option<&AddonManifest>,
) -> Vec<(Hook, HookLimits)> {
    let cfg = &rt.inner.config;
    Hook::ALL
        .into_iter()
        .map(|hook| {
            let declared = manifest.and_then(|m| m.limits.iter().find(|l| l.hook == hook));
            let want_timeout = declared
                .map(|l| std::time::Duration::from_millis(l.timeout_ms))
                .unwrap_or_else(|| cfg.default_timeout(hook));
            let want_memory = declared
                .and_then(|l| l.memory_bytes)
                .unwrap_or(cfg.default_memory_bytes);
            let limits = HookLimits {
                timeout: want_timeout.min(cfg.max_timeout),
                memory_bytes: want_memory.min(cfg.max_memory_bytes),
                capped: want_timeout > cfg.max_timeout || want_memory > cfg.max_memory_bytes,
            };
            (hook, limits)
        })
        .collect()
}

/// Structural checks of a manifest, so that later code can rely on it.
pub(crate) fn validate_manifest(m: &AddonManifest) -> Result<(), String> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if !name_ok(&m.engine) {
        return Err(format!(
            "engine name {:?} must be 1-63 lowercase letters, digits or dashes, starting with a letter",
            m.engine
        ));
    }
    if m.versions.is_empty() {
        return Err("declares no engine versions".into());
    }
    let defaults = m.versions.iter().filter(|v| v.is_default).count();
    if defaults != 1 {
        return Err(format!(
            "must mark exactly one version as default, marks {defaults}"
        ));
    }
    unique("version", m.versions.iter().map(|v| v.version.as_str()))?;
    unique("role", m.roles.iter().map(|r| r.name.as_str()))?;
    unique("port", m.ports.iter().map(|p| p.name.as_str()))?;
    unique("parameter", m.parameters.iter().map(|p| p.name.as_str()))?;
    unique(
        "backup method",
        m.backup_methods.iter().map(|b| b.name.as_str()),
    )?;
    for p in &m.ports {
        if !name_ok(&p.name) {
            return Err(format!(
                "port name {:?} is not a lowercase identifier",
                p.name
            ));
        }
    }
    if m.topologies.is_empty() {
        return Err("declares no topologies".into());
    }
    for t in &m.topologies {
        if t.min_members == 0 || t.min_members > t.max_members {
            return Err(format!(
                "topology {:?}: members must satisfy 1 <= min ({}) <= max ({})",
                t.kind, t.min_members, t.max_members
            ));
        }
        for r in &t.roles {
            if !m.roles.iter().any(|x| &x.name == r) {
                return Err(format!("topology {:?} names undeclared role {r:?}", t.kind));
            }
        }
    }
    check_topology_roles(&m.topologies, &m.roles)?;
    for p in &m.parameters {
        if !name_ok(&p.name)
            && !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            return Err(format!(
                "parameter name {:?} has characters other than letters, digits, _ - .",
                p.name
            ));
        }
        if let Some(d) = &p.default_value {
            crate::params::check_value(&p.type_, d)
                .map_err(|e| format!("parameter {}: default {e}", p.name))?;
        }
        if let Some(v) = p
            .versions
            .iter()
            .find(|v| !m.versions.iter().any(|x| &x.version == *v))
        {
            return Err(format!(
                "parameter {}: version {v:?} is not one of the addon's versions",
                p.name
            ));
        }
        match &p.type_ {
            wit::ParamType::Integer(r)
            | wit::ParamType::SizeBytes(r)
            | wit::ParamType::DurationMs(r)
                if r.min > r.max =>
            {
                return Err(format!(
                    "parameter {}: range min {} > max {}",
                    p.name, r.min, r.max
                ))
            }
            wit::ParamType::Float(r) if r.min.partial_cmp(&r.max).is_none_or(|o| o.is_gt()) => {
                return Err(format!(
                    "parameter {}: range min {} > max {}",
                    p.name, r.min, r.max
                ))
            }
            wit::ParamType::Choice(words) if words.is_empty() => {
                return Err(format!(
                    "parameter {}: a choice needs at least one word",
                    p.name
                ))
            }
            _ => {}
        }
    }
    if let Some(client) = &m.client {
        check_shell(&client.shell)?;
    }
    for c in &m.capabilities {
        match c {
            wit::Capability::Exec(name) if name.is_empty() || name.contains('/') => {
                return Err(format!(
                    "exec capability {name:?} must be a program name, not a path"
                ))
            }
            wit::Capability::Connect(addr) if addr.parse::<std::net::SocketAddr>().is_err() => {
                return Err(format!(
                    "connect capability {addr:?} is not an IP:port address"
                ))
            }
            _ => {}
        }
    }
    let mut seen = Vec::new();
    for l in &m.limits {
        if seen.contains(&l.hook) {
            return Err(format!("limits for hook {} given twice", l.hook));
        }
        seen.push(l.hook);
        if l.timeout_ms == 0 {
            return Err(format!(
                "limit for hook {}: timeout must be positive",
                l.hook
            ));
        }
        if l.memory_bytes.is_some_and(|b| b < (1 << 20)) {
            return Err(format!(
                "limit for hook {}: memory below 1 MiB cannot run an addon",
                l.hook
            ));
        }
    }
    Ok(())
}

/// Whether `arg` is an environment assignment of a client shell command: `NAME=VALUE` with a
/// plain upper-case variable name.
pub fn is_env_assignment(arg: &str) -> bool {
    arg.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && name.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    })
}

/// A client shell command: leading `NAME=VALUE` elements are its environment, then the
/// program and its arguments. The password (`{password}`, or a `{uri}` that carries it) may
/// appear only in the environment: anything on a command line is visible to every user of
/// the machine (`ps`).
fn check_shell(shell: &[String]) -> Result<(), String> {
    let args: Vec<&String> = shell.iter().skip_while(|a| is_env_assignment(a)).collect();
    if shell.is_empty() {
        return Ok(());
    }
    if args.is_empty() {
        return Err("client shell names no program after its environment".into());
    }
    if let Some(a) = args
        .iter()
        .find(|a| a.contains("{password}") || a.contains("{uri}"))
    {
        return Err(format!(
            "client shell puts the password on the command line ({a:?}); pass it in a leading \
             NAME={{password}} environment element, a variable the client reads"
        ));
    }
    Ok(())
}

fn unique<'a>(what: &str, names: impl Iterator<Item = &'a str>) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for n in names {
        if n.is_empty() {
            return Err(format!("a {what} has an empty name"));
        }
        if !seen.insert(n) {
            return Err(format!("{what} {n:?} declared twice"));
        }
    }
    Ok(())
}

/// A role a topology needs: its name, what its spec must say, the rule in words, and what
/// the host calls it.
type RoleRule = (
    &'static str,
    fn(&crate::wit::RoleSpec) -> bool,
    &'static str,
    &'static str,
);

/// The roles the host relies on per topology, as the manifest's role specs describe them:
/// a primary-replica or sharded topology names a writable, exclusive `primary` and a
/// read-only `replica` (the names the host gives its rows and the probe reports); a quorum
/// names at least one voting role and at most one writable one, which must be exclusive
/// (the leader the read-write endpoint follows).
pub(crate) fn check_topology_roles(
    topologies: &[crate::wit::Topology],
    roles: &[crate::wit::RoleSpec],
) -> Result<(), String> {
    use crate::wit::TopologyKind;
    let spec = |t: &crate::wit::Topology, name: &str| {
        t.roles
            .iter()
            .any(|r| r == name)
            .then(|| roles.iter().find(|x| x.name == name))
            .flatten()
    };
    for t in topologies {
        let kind = match t.kind {
            TopologyKind::PrimaryReplica => "primary-replica",
            TopologyKind::Sharded => "sharded",
            TopologyKind::Quorum => "quorum",
            TopologyKind::Standalone => continue,
        };
        if t.kind == TopologyKind::Quorum {
            let in_t: Vec<_> = roles.iter().filter(|r| t.roles.contains(&r.name)).collect();
            if !in_t.iter().any(|r| r.votes) {
                return Err(format!(
                    "topology quorum: none of its roles ({}) votes",
                    t.roles.join(", ")
                ));
            }
            let writable: Vec<_> = in_t.iter().filter(|r| r.writable).collect();
            if writable.len() > 1 || writable.iter().any(|r| !r.exclusive) {
                return Err(
                    "topology quorum: at most one role may be writable, and it must be \
                     exclusive (the leader)"
                        .to_string(),
                );
            }
            continue;
        }
        // (name, what it must be, the rule, what the host calls it)
        let wanted: [RoleRule; 2] = [
            (
                "primary",
                |r| r.writable && r.exclusive,
                "must be writable and exclusive",
                "the writable member",
            ),
            (
                "replica",
                |r| !r.writable,
                "must not be writable",
                "a read-only copy",
            ),
        ];
        for (name, ok, rule, what) in wanted {
            match spec(t, name) {
                Some(r) if ok(r) => {}
                Some(_) => return Err(format!("topology {kind}: role {name:?} {rule}")),
                None => {
                    return Err(format!(
                        "topology {kind} must list a declared role {name:?} (the host's name \
                         for {what})"
                    ))
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topology_needs_the_roles_the_host_relies_on() {
        use crate::wit::{RoleSpec, Topology, TopologyKind};
        let role = |name: &str, writable: bool, votes: bool, exclusive: bool| RoleSpec {
            name: name.into(),
            writable,
            votes,
            exclusive,
            description: String::new(),
        };
        let top = |kind, roles: &[&str]| Topology {
            kind,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            min_members: 1,
            max_members: 3,
            description: String::new(),
        };
        let pr = [
            role("primary", true, false, true),
            role("replica", false, false, false),
        ];
        let q = [
            role("leader", true, true, true),
            role("follower", false, true, false),
            role("learner", false, false, false),
        ];
        for kind in [TopologyKind::PrimaryReplica, TopologyKind::Sharded] {
            assert!(check_topology_roles(&[top(kind, &["primary", "replica"])], &pr).is_ok());
            let e = check_topology_roles(&[top(kind, &["primary"])], &pr).unwrap_err();
            assert!(e.contains("\"replica\""), "{e}");
            let shared = [role("primary", true, false, false), pr[1].clone()];
            let e =
                check_topology_roles(&[top(kind, &["primary", "replica"])], &shared).unwrap_err();
            assert!(e.contains("exclusive"), "{e}");
        }
        // A standalone topology may call its one role anything.
        let solo = [role("standalone", true, false, true)];
        assert!(
            check_topology_roles(&[top(TopologyKind::Standalone, &["standalone"])], &solo).is_ok()
        );
        let all = ["leader", "follower", "learner"];
        assert!(check_topology_roles(&[top(TopologyKind::Quorum, &all)], &q).is_ok());
        let e = check_topology_roles(&[top(TopologyKind::Quorum, &["learner"])], &q).unwrap_err();
        assert!(e.contains("votes"), "{e}");
        let two = [role("a", true, true, true), role("b", true, true, true)];
        let e = check_topology_roles(&[top(TopologyKind::Quorum, &["a", "b"])], &two).unwrap_err();
        assert!(e.contains("at most one"), "{e}");
    }

    #[test]
    fn a_client_shell_keeps_the_password_off_the_command_line() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_shell(&v(&[
            "PGPASSWORD={password}",
            "psql",
            "postgresql://{user}@{host}"
        ]))
        .is_ok());
        assert!(check_shell(&[]).is_ok());
        for bad in [
            v(&["psql", "{uri}"]),
            v(&["mariadb", "--password={password}"]),
            v(&["redis-cli", "-a", "{password}"]),
            v(&["X={password}"]),
            // An assignment after the program is an argument.
            v(&["psql", "PGPASSWORD={password}"]),
        ] {
            assert!(check_shell(&bad).is_err(), "{bad:?}");
        }
        assert!(is_env_assignment("MYSQL_PWD=x"));
        assert!(!is_env_assignment("--user=x"));
        assert!(!is_env_assignment("lower=x"));
    }

    #[test]
    fn sniff_names_the_problem() {
        assert!(matches!(sniff("f", b""), Err(LoadError::NotWasm { .. })));
        assert!(matches!(
            sniff("f", b"\0asm"),
            Err(LoadError::NotWasm { .. })
        ));
        assert!(matches!(
            sniff("f", b"#!/bin/sh\necho"),
            Err(LoadError::NotWasm { .. })
        ));
        assert!(matches!(
            sniff("f", b"\0asm\x01\0\0\0"),
            Err(LoadError::CoreModule { .. })
        ));
        assert!(sniff("f", b"\0asm\x0d\0\x01\0").is_ok());
        assert!(matches!(
            sniff("f", b"\0asm\x02\0\0\0"),
            Err(LoadError::Invalid { .. })
        ));
    }
}
