//! `shoal addon inspect FILE`: load an addon (verifying it) and show what it declares.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use shoal_runtime::wit::{AddonManifest, Capability, Hook, ParamType, Value};
use shoal_runtime::{CodeSource, LoadedAddon};

use crate::output::{self, Format};
use crate::runtime_opts::RuntimeOpts;
use crate::Failure;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The addon component (.wasm).
    pub file: PathBuf,
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    #[command(flatten)]
    pub runtime: RuntimeOpts,
}

#[derive(Serialize)]
struct HookRow {
    hook: &'static str,
    interface: String,
    timeout_ms: u64,
    memory_bytes: u64,
    declared: bool,
    capped: bool,
}

#[derive(Serialize)]
struct ExecGrantRow {
    program: String,
    granted: bool,
    path: Option<String>,
}

#[derive(Serialize)]
struct Inspection<'a> {
    file: String,
    size_bytes: u64,
    digest: String,
    api_version: &'a str,
    engine: &'a str,
    addon_version: &'a str,
    manifest: &'a AddonManifest,
    hooks: Vec<HookRow>,
    exec: Vec<ExecGrantRow>,
    exports: &'a [String],
    imports: &'a [String],
    compiled_from_cache: bool,
    load_ms: u64,
}

pub async fn run(args: InspectArgs) -> Result<(), Failure> {
    let (_rt, addon) = args.runtime.load(&args.file).await?;
    let view = inspection(&addon);
    output::emit(args.output, &view, || {
        output::printable_lines(&render(&view))
    })
}

fn inspection(addon: &LoadedAddon) -> Inspection<'_> {
    let info = addon.info();
    let m = addon.manifest();
    let hooks = Hook::ALL
        .iter()
        .map(|h| {
            let l = addon.limits(*h);
            HookRow {
                hook: h.name(),
                interface: format!("shoal:addon/{}@{}", h.interface(), info.api_version),
                timeout_ms: u64::try_from(l.timeout.as_millis()).unwrap_or(u64::MAX),
                memory_bytes: l.memory_bytes,
                declared: m.limits.iter().any(|x| x.hook == *h),
                capped: l.capped,
            }
        })
        .collect();
    let granted = addon.exec_grants();
    let exec = m
        .capabilities
        .iter()
        .filter_map(|c| match c {
            Capability::Exec(name) => {
                let g = granted.iter().find(|(n, _)| n == name);
                Some(ExecGrantRow {
                    program: name.clone(),
                    granted: g.is_some(),
                    path: g.and_then(|(_, p)| p.as_ref().map(|p| p.display().to_string())),
                })
            }
            _ => None,
        })
        .collect();
    Inspection {
        file: info.origin.clone(),
        size_bytes: info.size,
        digest: format!("sha256:{}", info.digest),
        api_version: &info.api_version,
        engine: &m.engine,
        addon_version: &m.addon_version,
        manifest: m,
        hooks,
        exec,
        exports: &info.exports,
        imports: &info.imports,
        compiled_from_cache: info.code_source == CodeSource::Cache,
        load_ms: u64::try_from(info.load_time.as_millis()).unwrap_or(u64::MAX),
    }
}

fn value_text(v: &Value, ty: &ParamType) -> String {
    match (v, ty) {
        (Value::Integer(n), ParamType::SizeBytes(_)) => output::bytes((*n).max(0) as u64),
        (Value::Integer(n), ParamType::DurationMs(_)) => {
            output::duration(std::time::Duration::from_millis((*n).max(0) as u64))
        }
        (Value::Boolean(b), _) => b.to_string(),
        (Value::Integer(n), _) => n.to_string(),
        (Value::Float(x), _) => x.to_string(),
        (Value::Text(s), _) => format!("{s:?}"),
    }
}

fn type_text(ty: &ParamType) -> String {
    match ty {
        ParamType::Boolean => "boolean".into(),
        ParamType::Integer(r) => format!("integer {}..{}", r.min, r.max),
        ParamType::Float(r) => format!("float {}..{}", r.min, r.max),
        ParamType::Text => "text".into(),
        ParamType::Choice(w) => format!("one of {}", w.join("|")),
        ParamType::SizeBytes(r) => format!(
            "size {}..{}",
            output::bytes(r.min.max(0) as u64),
            output::bytes(r.max.max(0) as u64)
        ),
        ParamType::DurationMs(r) => format!(
            "duration {}..{}",
            output::duration(std::time::Duration::from_millis(r.min.max(0) as u64)),
            output::duration(std::time::Duration::from_millis(r.max.max(0) as u64))
        ),
    }
}

/// `TopologyKind::PrimaryReplica` → `primary-replica`.
fn word(debug: impl std::fmt::Debug) -> String {
    let d = format!("{debug:?}");
    let name = d.rsplit("::").next().unwrap_or(&d);
    let mut out = String::new();
    for (i, ch) in name.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

fn render(v: &Inspection<'_>) -> String {
    let m = v.manifest;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "addon        {} {} ({})",
        m.engine, m.addon_version, m.display_name
    );
    if !m.description.is_empty() {
        let _ = writeln!(s, "             {}", m.description);
    }
    let _ = writeln!(
        s,
        "file         {} ({})",
        v.file,
        output::bytes(v.size_bytes)
    );
    let _ = writeln!(s, "digest       {}", v.digest);
    let _ = writeln!(s, "api          shoal:addon@{}", v.api_version);
    let versions: Vec<String> = m
        .versions
        .iter()
        .map(|x| {
            if x.is_default {
                format!("{} (default)", x.version)
            } else {
                x.version.clone()
            }
        })
        .collect();
    let _ = writeln!(s, "versions     {}", versions.join(", "));
    for t in &m.topologies {
        let _ = writeln!(
            s,
            "topology     {}, {}..{} members, roles: {}",
            word(t.kind),
            t.min_members,
            t.max_members,
            t.roles.join(", ")
        );
    }
    let _ = writeln!(s, "sync repl    {}", word(m.sync_replication));
    for r in &m.roles {
        let mut flags = Vec::new();
        if r.writable {
            flags.push("writable");
        }
        if r.exclusive {
            flags.push("exclusive");
        }
        if r.votes {
            flags.push("votes");
        }
        let _ = writeln!(s, "role         {} [{}]", r.name, flags.join(", "));
    }
    let ports: Vec<&str> = m.ports.iter().map(|p| p.name.as_str()).collect();
    let _ = writeln!(
        s,
        "ports        {}",
        if ports.is_empty() {
            "-".into()
        } else {
            ports.join(", ")
        }
    );
    if m.backup_methods.is_empty() {
        let _ = writeln!(s, "backup       -");
    }
    for b in &m.backup_methods {
        let pitr = if b.point_in_time {
            ", point-in-time"
        } else {
            ""
        };
        let _ = writeln!(s, "backup       {} ({}{pitr})", b.name, word(b.kind));
    }
    if m.parameters.is_empty() {
        let _ = writeln!(s, "parameters   -");
    } else {
        let _ = writeln!(s, "parameters");
        for p in &m.parameters {
            let default = p
                .default_value
                .as_ref()
                .map(|d| format!(" default {}", value_text(d, &p.type_)))
                .unwrap_or_default();
            let only = if p.versions.is_empty() {
                String::new()
            } else {
                format!(" (only {})", p.versions.join(", "))
            };
            let _ = writeln!(
                s,
                "  {:<22} {}, {}{default}{only}",
                p.name,
                word(p.apply),
                type_text(&p.type_)
            );
        }
    }
    let caps: Vec<String> = m
        .capabilities
        .iter()
        .map(|c| match c {
            Capability::Exec(name) => {
                let row = v.exec.iter().find(|r| &r.program == name);
                match row {
                    Some(ExecGrantRow {
                        granted: true,
                        path: Some(p),
                        ..
                    }) => format!("exec {name} (granted: {p})"),
                    Some(ExecGrantRow {
                        granted: true,
                        path: None,
                        ..
                    }) => format!("exec {name} (granted, not found)"),
                    _ => format!("exec {name} (not granted)"),
                }
            }
            Capability::Connect(a) => format!("connect {a}"),
            Capability::NameLookup => "name-lookup".into(),
        })
        .collect();
    let _ = writeln!(
        s,
        "capabilities {}",
        if caps.is_empty() {
            "none".into()
        } else {
            caps.join("; ")
        }
    );
    let _ = writeln!(s, "hooks        (deadline, memory cap; * = declared by the addon, ! = capped by the operator)");
    for h in &v.hooks {
        let _ = writeln!(
            s,
            "  {:<20} {:>8} {:>8} {}{}",
            h.hook,
            output::duration(std::time::Duration::from_millis(h.timeout_ms)),
            output::bytes(h.memory_bytes),
            if h.declared { "*" } else { "" },
            if h.capped { "!" } else { "" },
        );
    }
    let _ = writeln!(s, "imports      {}", v.imports.join(", "));
    let _ = writeln!(s, "exports      {}", v.exports.join(", "));
    let _ = writeln!(
        s,
        "loaded in    {} ms ({})",
        v.load_ms,
        if v.compiled_from_cache {
            "compiled code from cache"
        } else {
            "compiled now"
        }
    );
    s
}
