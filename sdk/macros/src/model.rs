//! The addon manifest file (`addon.toml`): its format, read with unknown keys refused, and the
//! checks that can be made before the addon is built (one default version, roles that exist,
//! defaults of the right type inside their range, sizes and durations with units). The host's
//! loader checks the built manifest again; these checks only move the common mistakes from
//! load time to build time, with the file's name in the message.

use serde::Deserialize;

/// The whole file. Keys are the WIT record's field names (kebab-case).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ManifestFile {
    pub engine: String,
    pub display_name: String,
    pub description: String,
    pub addon_version: String,
    #[serde(default)]
    pub admin_user: Option<String>,
    #[serde(default = "none")]
    pub sync_replication: String,
    /// `exec:NAME`, `connect:IP:PORT` or `name-lookup`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    pub versions: Vec<VersionEntry>,
    pub topologies: Vec<TopologyEntry>,
    pub roles: Vec<RoleEntry>,
    pub ports: Vec<PortEntry>,
    #[serde(default)]
    pub backup_methods: Vec<BackupEntry>,
    #[serde(default)]
    pub parameters: Vec<ParamEntry>,
    /// Hook name → deadline ("1s", "500ms") or `{ timeout = …, memory = "64MiB" }`.
    #[serde(default)]
    pub limits: toml::Table,
    #[serde(default)]
    pub client: Option<ClientEntry>,
}

fn none() -> String {
    "none".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VersionEntry {
    pub version: String,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub binary_paths: Vec<String>,
    #[serde(default)]
    pub packages: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TopologyEntry {
    pub kind: String,
    pub roles: Vec<String>,
    pub min_members: u32,
    pub max_members: u32,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RoleEntry {
    pub name: String,
    #[serde(default)]
    pub writable: bool,
    #[serde(default)]
    pub votes: bool,
    #[serde(default)]
    pub exclusive: bool,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PortEntry {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BackupEntry {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub target_role: Option<String>,
    #[serde(default)]
    pub point_in_time: bool,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ParamEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub min: Option<toml::Value>,
    #[serde(default)]
    pub max: Option<toml::Value>,
    #[serde(default)]
    pub choices: Vec<String>,
    #[serde(default)]
    pub default: Option<toml::Value>,
    pub apply: String,
    #[serde(default)]
    pub versions: Vec<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClientEntry {
    pub uri: String,
    #[serde(default)]
    pub shell: Vec<String>,
}

/// A parameter's type, resolved (ranges in the type's unit: bytes, milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub enum ParamType {
    Boolean,
    Integer(i64, i64),
    Float(f64, f64),
    Text,
    Choice(Vec<String>),
    SizeBytes(i64, i64),
    DurationMs(i64, i64),
}

/// A resolved default value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Boolean(bool),
    Integer(i64),
    Float(f64),
    Text(String),
}

/// A resolved hook limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub hook: String,
    pub timeout_ms: u64,
    pub memory_bytes: Option<u64>,
}

/// The hook names of `shoal:addon/metadata.hook`.
pub const HOOKS: &[&str] = &[
    "manifest",
    "run-spec",
    "render-config",
    "post-provision",
    "pre-terminate",
    "member-join",
    "member-leave",
    "form-shards",
    "account-provision",
    "probe",
    "promote",
    "demote",
    "switchover",
    "rebuild",
    "set-sync",
    "recover-quorum",
    "backup",
    "restore",
    "archive-continuous",
    "restore-to-time",
    "validate",
    "classify",
    "apply-dynamic",
    "effective",
    "metrics",
    "write-marker",
    "read-markers",
];

/// Read and check the file's text.
pub fn parse(text: &str) -> Result<ManifestFile, String> {
    let m: ManifestFile = toml::from_str(text).map_err(|e| e.to_string())?;
    check(&m)?;
    Ok(m)
}

fn one_of(what: &str, got: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&got) {
        Ok(())
    } else {
        Err(format!(
            "{what} {got:?} is not one of {}",
            allowed.join(", ")
        ))
    }
}

fn check(m: &ManifestFile) -> Result<(), String> {
    if m.engine.is_empty()
        || !m
            .engine
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!(
            "engine {:?}: lowercase letters, digits and dashes only",
            m.engine
        ));
    }
    one_of(
        "sync-replication",
        &m.sync_replication,
        &["none", "strict", "may-fall-back"],
    )?;
    for c in &m.capabilities {
        capability(c)?;
    }
    match m.versions.iter().filter(|v| v.default).count() {
        1 => {}
        0 if m.versions.len() == 1 => {}
        n => {
            return Err(format!(
                "exactly one of the {} [[versions]] must say default = true ({n} do)",
                m.versions.len()
            ))
        }
    }
    if m.topologies.is_empty() {
        return Err("at least one [[topologies]] entry is needed".into());
    }
    for t in &m.topologies {
        one_of(
            "topology kind",
            &t.kind,
            &["standalone", "primary-replica", "quorum", "sharded"],
        )?;
        if t.min_members == 0 || t.min_members > t.max_members {
            return Err(format!(
                "topology {}: min-members {} and max-members {} (need 1 <= min <= max)",
                t.kind, t.min_members, t.max_members
            ));
        }
        for r in &t.roles {
            if !m.roles.iter().any(|s| &s.name == r) {
                return Err(format!(
                    "topology {} names role {r:?}, which no [[roles]] entry defines",
                    t.kind
                ));
            }
        }
    }
    if !m.ports.iter().any(|p| p.name == "client") {
        return Err("a [[ports]] entry named \"client\" is needed (the port clients use)".into());
    }
    for b in &m.backup_methods {
        one_of(
            &format!("backup method {}: kind", b.name),
            &b.kind,
            &[
                "full",
                "incremental",
                "differential",
                "continuous",
                "logical",
            ],
        )?;
    }
    for p in &m.parameters {
        let ty = param_type(p)?;
        one_of(
            &format!("parameter {}: apply", p.name),
            &p.apply,
            &["dynamic", "restart", "immutable"],
        )?;
        if let Some(d) = &p.default {
            default_value(&p.name, &ty, d)?;
        }
        for v in &p.versions {
            if !m.versions.iter().any(|e| &e.version == v) {
                return Err(format!(
                    "parameter {}: version {v:?} is not in [[versions]]",
                    p.name
                ));
            }
        }
    }
    limits(&m.limits)?;
    Ok(())
}

/// `exec:NAME`, `connect:ADDR` or `name-lookup`, as (kind, argument).
pub fn capability(text: &str) -> Result<(&str, &str), String> {
    match text.split_once(':') {
        Some(("exec", name)) if !name.is_empty() => Ok(("exec", name)),
        Some(("connect", addr)) if !addr.is_empty() => Ok(("connect", addr)),
        None if text == "name-lookup" => Ok(("name-lookup", "")),
        _ => Err(format!(
            "capability {text:?}: expected exec:NAME, connect:IP:PORT or name-lookup"
        )),
    }
}

/// A size ("64MiB", "1GB", 1048576) in bytes, in the units users type (`shoal_units`).
pub fn size(v: &toml::Value) -> Result<i64, String> {
    quantity(v, shoal_units::size)
}

/// A duration ("500ms", "30s", "5min", 1000) in milliseconds.
pub fn duration(v: &toml::Value) -> Result<i64, String> {
    quantity(v, shoal_units::duration)
}

fn quantity(v: &toml::Value, read: fn(&str) -> Result<i64, String>) -> Result<i64, String> {
    match v {
        toml::Value::Integer(i) => Ok(*i),
        toml::Value::String(s) => read(s),
        other => Err(format!(
            "{other}: expected an integer or a string with a unit"
        )),
    }
}

fn bound(
    p: &ParamEntry,
    v: &Option<toml::Value>,
    which: &str,
    read: fn(&toml::Value) -> Result<i64, String>,
) -> Result<i64, String> {
    let v = v
        .as_ref()
        .ok_or_else(|| format!("parameter {}: type {} needs {which}", p.name, p.type_))?;
    read(v).map_err(|e| format!("parameter {}: {which}: {e}", p.name))
}

fn int(v: &toml::Value) -> Result<i64, String> {
    v.as_integer()
        .ok_or_else(|| format!("{v}: expected an integer"))
}

fn float(v: &toml::Value) -> Result<f64, String> {
    v.as_float()
        .or_else(|| v.as_integer().map(|i| i as f64))
        .ok_or_else(|| format!("{v}: expected a number"))
}

/// The resolved type of parameter `p`.
pub fn param_type(p: &ParamEntry) -> Result<ParamType, String> {
    let ranged = |read| -> Result<(i64, i64), String> {
        let (lo, hi) = (
            bound(p, &p.min, "min", read)?,
            bound(p, &p.max, "max", read)?,
        );
        if lo > hi {
            return Err(format!("parameter {}: min {lo} is above max {hi}", p.name));
        }
        Ok((lo, hi))
    };
    let ty = match p.type_.as_str() {
        "boolean" => ParamType::Boolean,
        "text" => ParamType::Text,
        "integer" => {
            let (lo, hi) = ranged(int)?;
            ParamType::Integer(lo, hi)
        }
        "size-bytes" => {
            let (lo, hi) = ranged(size)?;
            ParamType::SizeBytes(lo, hi)
        }
        "duration-ms" => {
            let (lo, hi) = ranged(duration)?;
            ParamType::DurationMs(lo, hi)
        }
        "float" => {
            let need = |v: &Option<toml::Value>, which| {
                v.as_ref()
                    .ok_or_else(|| format!("parameter {}: type float needs {which}", p.name))
                    .and_then(|v| float(v).map_err(|e| format!("parameter {}: {e}", p.name)))
            };
            ParamType::Float(need(&p.min, "min")?, need(&p.max, "max")?)
        }
        "choice" => {
            if p.choices.is_empty() {
                return Err(format!(
                    "parameter {}: type choice needs choices = [...]",
                    p.name
                ));
            }
            ParamType::Choice(p.choices.clone())
        }
        other => {
            return Err(format!(
                "parameter {}: type {other:?} is not one of boolean, integer, float, text, \
                 choice, size-bytes, duration-ms",
                p.name
            ))
        }
    };
    let ranged_type = matches!(
        p.type_.as_str(),
        "integer" | "size-bytes" | "duration-ms" | "float"
    );
    if !ranged_type && (p.min.is_some() || p.max.is_some()) {
        return Err(format!(
            "parameter {}: type {} takes no min/max",
            p.name, p.type_
        ));
    }
    if p.type_ != "choice" && !p.choices.is_empty() {
        return Err(format!(
            "parameter {}: only type choice takes choices",
            p.name
        ));
    }
    Ok(ty)
}

/// Parameter `name`'s default `v`, checked against its type.
pub fn default_value(name: &str, ty: &ParamType, v: &toml::Value) -> Result<Value, String> {
    let e = |why: String| format!("parameter {name}: default {v}: {why}");
    let within = |n: i64, lo: i64, hi: i64| {
        if (lo..=hi).contains(&n) {
            Ok(Value::Integer(n))
        } else {
            Err(e(format!("outside {lo}..={hi}")))
        }
    };
    match ty {
        ParamType::Boolean => v
            .as_bool()
            .map(Value::Boolean)
            .ok_or_else(|| e("expected true or false".into())),
        ParamType::Integer(lo, hi) => within(int(v).map_err(e)?, *lo, *hi),
        ParamType::SizeBytes(lo, hi) => within(size(v).map_err(e)?, *lo, *hi),
        ParamType::DurationMs(lo, hi) => within(duration(v).map_err(e)?, *lo, *hi),
        ParamType::Float(lo, hi) => {
            let f = float(v).map_err(e)?;
            if f < *lo || f > *hi {
                return Err(e(format!("outside {lo}..={hi}")));
            }
            Ok(Value::Float(f))
        }
        ParamType::Text => v
            .as_str()
            .map(|s| Value::Text(s.to_string()))
            .ok_or_else(|| e("expected a string".into())),
        ParamType::Choice(choices) => match v.as_str() {
            Some(s) if choices.iter().any(|c| c == s) => Ok(Value::Text(s.to_string())),
            _ => Err(e(format!("expected one of {}", choices.join(", ")))),
        },
    }
}

/// The `[limits]` table, resolved.
pub fn limits(table: &toml::Table) -> Result<Vec<Limit>, String> {
    let mut out = Vec::new();
    for (hook, v) in table {
        if !HOOKS.contains(&hook.as_str()) {
            return Err(format!("limits: {hook:?} is not a hook name"));
        }
        let (timeout, memory) = match v {
            toml::Value::Table(t) => {
                if let Some(k) = t.keys().find(|k| *k != "timeout" && *k != "memory") {
                    return Err(format!(
                        "limits.{hook}: unknown key {k:?} (timeout, memory)"
                    ));
                }
                let timeout = t
                    .get("timeout")
                    .ok_or_else(|| format!("limits.{hook}: timeout is needed"))?;
                (timeout, t.get("memory"))
            }
            other => (other, None),
        };
        let timeout_ms = duration(timeout).map_err(|e| format!("limits.{hook}: {e}"))?;
        let memory_bytes = memory
            .map(size)
            .transpose()
            .map_err(|e| format!("limits.{hook}: memory: {e}"))?;
        out.push(Limit {
            hook: hook.clone(),
            timeout_ms: u64::try_from(timeout_ms)
                .map_err(|_| format!("limits.{hook}: a negative deadline"))?,
            memory_bytes: memory_bytes
                .map(u64::try_from)
                .transpose()
                .map_err(|_| format!("limits.{hook}: a negative memory size"))?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
engine = "demo"
display-name = "Demo"
description = "A demo."
addon-version = "0.1.0"

[[versions]]
version = "1"

[[topologies]]
kind = "standalone"
roles = ["standalone"]
min-members = 1
max-members = 1

[[roles]]
name = "standalone"
writable = true

[[ports]]
name = "client"

[[parameters]]
name = "memory"
type = "size-bytes"
min = "1MiB"
max = "1GiB"
default = "64MiB"
apply = "restart"

[limits]
probe = "1s"
metrics = { timeout = "2s", memory = "32MiB" }
"#;

    #[test]
    fn a_good_file_reads_with_units_resolved() {
        let m = parse(GOOD).expect("parses");
        let p = &m.parameters[0];
        let ty = param_type(p).unwrap();
        assert_eq!(ty, ParamType::SizeBytes(1 << 20, 1 << 30));
        assert_eq!(
            default_value(&p.name, &ty, p.default.as_ref().unwrap()).unwrap(),
            Value::Integer(64 << 20)
        );
        let l = limits(&m.limits).unwrap();
        assert!(l.contains(&Limit {
            hook: "probe".into(),
            timeout_ms: 1000,
            memory_bytes: None
        }));
        assert!(l.contains(&Limit {
            hook: "metrics".into(),
            timeout_ms: 2000,
            memory_bytes: Some(32 << 20)
        }));
    }

    #[test]
    fn mistakes_are_refused_naming_what_is_wrong() {
        let cases = [
            ("engine = \"demo\"", "engine = \"Demo!\"", "lowercase"),
            (
                "roles = [\"standalone\"]",
                "roles = [\"leader\"]",
                "no [[roles]] entry",
            ),
            ("default = \"64MiB\"", "default = \"2GiB\"", "outside"),
            ("default = \"64MiB\"", "default = \"64 parsecs\"", "unit"),
            ("apply = \"restart\"", "apply = \"later\"", "apply"),
            ("probe = \"1s\"", "probes = \"1s\"", "not a hook"),
            ("max-members = 1", "max-members = 0", "min-members"),
            ("name = \"client\"", "name = \"main\"", "\"client\""),
            (
                "writable = true",
                "writable = true\ncolour = \"red\"",
                "colour",
            ),
            ("type = \"size-bytes\"", "type = \"bytes\"", "not one of"),
        ];
        for (from, to, want) in cases {
            assert!(GOOD.contains(from), "{from}");
            let err = parse(&GOOD.replacen(from, to, 1)).expect_err(to);
            assert!(err.contains(want), "{to}: {err}");
        }
    }

    #[test]
    fn two_versions_need_one_default() {
        let two = GOOD.replace(
            "version = \"1\"\n",
            "version = \"1\"\n\n[[versions]]\nversion = \"2\"\n",
        );
        assert!(parse(&two).unwrap_err().contains("default = true"));
        let one = two.replacen("version = \"2\"\n", "version = \"2\"\ndefault = true\n", 1);
        parse(&one).expect("one default");
    }
}
