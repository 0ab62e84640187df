//! `shoal addon new NAME --family F`: a buildable addon crate from templates kept inside the
//! binary (`templates/addon/`): `Cargo.toml`, `addon.toml` (the manifest, with the family's
//! topologies and roles), `src/lib.rs` (run-spec, a probe, a unit test), a docs page stub
//! and `.gitignore`. Rendering is a pure function of the [`Scaffold`], tested below.

use std::path::{Path, PathBuf};

use crate::Failure;

/// The topology family an addon starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Family {
    /// One server, no replication.
    Standalone,
    /// A writable primary and read-only replicas; the host decides failover.
    PrimaryReplica,
    /// Members elect their own leader (engines with a Raft or Paxos election of their own).
    Quorum,
    /// Data split across shards, each its own replica group.
    Sharded,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Standalone => "standalone",
            Family::PrimaryReplica => "primary-replica",
            Family::Quorum => "quorum",
            Family::Sharded => "sharded",
        }
    }

    /// `[[topologies]]` and `[[roles]]` of the manifest.
    fn topology(self) -> &'static str {
        match self {
            Family::Standalone => {
                r#"
[[topologies]]
kind = "standalone"
roles = ["standalone"]
min-members = 1
max-members = 1
description = "One server."

[[roles]]
name = "standalone"
writable = true
description = "The only server; serves reads and writes."
"#
            }
            Family::PrimaryReplica => {
                r#"
[[topologies]]
kind = "standalone"
roles = ["primary"]
min-members = 1
max-members = 1
description = "One server, no replicas."

[[topologies]]
kind = "primary-replica"
roles = ["primary", "replica"]
min-members = 2
max-members = 9
description = "A writable primary and read-only replicas following it; the host fails over."

[[roles]]
name = "primary"
writable = true
exclusive = true
description = "Serves reads and writes; replicas follow it."

[[roles]]
name = "replica"
description = "Read-only copy following the primary."
"#
            }
            Family::Quorum => {
                r#"
[[topologies]]
kind = "quorum"
roles = ["leader", "follower"]
min-members = 1
max-members = 7
description = "Members elect their own leader; a majority must be up to write."

[[roles]]
name = "leader"
writable = true
votes = true
exclusive = true
description = "The elected leader; serves writes."

[[roles]]
name = "follower"
votes = true
description = "A voting member following the leader."
"#
            }
            Family::Sharded => {
                r#"
[[topologies]]
kind = "sharded"
roles = ["primary", "replica"]
min-members = 1
max-members = 5
description = "Data split across shards, each a primary with replicas; the engine fails a shard over."

[[roles]]
name = "primary"
writable = true
exclusive = true
description = "Serves its shard's writes."

[[roles]]
name = "replica"
description = "Read-only copy of its shard's primary."
"#
            }
        }
    }

    /// The end of the probe: what it reports.
    fn probe_report(self) -> &'static str {
        match self {
            Family::Standalone => {
                r#"        Ok(RoleReport::healthy(
            "standalone",
            true,
            "{{display}} accepts connections",
        ))"#
            }
            Family::PrimaryReplica | Family::Sharded => {
                r#"        // The role the host assigned. A real probe asks the engine: the host fails
        // over and routes clients on what the probe says.
        let role = instance.role.clone().unwrap_or_else(|| "primary".into());
        let writable = role == "primary";
        Ok(RoleReport::healthy(
            &role,
            writable,
            "{{display}} accepts connections",
        ))"#
            }
            Family::Quorum => {
                r#"        // A real probe asks the engine whether this member leads (clients are routed
        // to the leader); until it does, no member claims to.
        Ok(RoleReport::healthy(
            "follower",
            false,
            "{{display}} accepts connections",
        ))"#
            }
        }
    }

    /// What else the family needs, as guidance inside the `impl Engine` block.
    fn hooks(self) -> &'static str {
        match self {
            Family::Standalone => "",
            Family::PrimaryReplica => {
                r#"
    // A primary-replica engine also needs these hooks (docs/addon-guide.md, "High
    // availability hooks"); until they are written the host cannot fail over and
    // `shoal addon test` says which are missing:
    // - `probe` reporting "primary" or "replica" from the engine, with `position` and lag;
    // - `render_config`/`run_spec` starting a replica that follows the primary in `members`;
    // - `promote` (make a replica the writable primary at a term), `demote` (read-only,
    //   following a new primary), `rebuild` (copy a replica afresh from the primary).
"#
            }
            Family::Quorum => {
                r#"
    // A quorum engine also needs these hooks (docs/addon-guide.md, "High availability
    // hooks"); `shoal addon test` says which are missing:
    // - `probe` reporting "leader" or "follower" from the engine, with its term;
    // - `run_spec` naming every member in `members` as a peer (the initial cluster);
    // - `member_join` and `member_leave` (reconfigure membership when scaling);
    // - `recover_quorum` (restart a lost quorum from its most advanced member).
"#
            }
            Family::Sharded => {
                r#"
    // A sharded engine also needs these hooks (docs/addon-guide.md, "Sharded engines");
    // `shoal addon test` says which are missing:
    // - `probe` reporting "primary" or "replica" of the instance's shard (`instance.shard`);
    // - `form_shards` (make one engine cluster of `members`, each with its shard);
    // - `member_leave` (forget a replaced member on every node).
"#
            }
        }
    }

    fn topology_doc(self) -> &'static str {
        match self {
            Family::Standalone => "- `standalone`: one server.",
            Family::PrimaryReplica => {
                "- `standalone`: one server.\n- `primary-replica`: a primary and 1-8 read-only \
                 replicas; Shoal fails over to the most advanced replica."
            }
            Family::Quorum => {
                "- `quorum`: 1-7 voting members that elect their own leader; a majority must be \
                 up to write."
            }
            Family::Sharded => {
                "- `sharded`: shards of 1-5 members each (a primary and replicas); the engine \
                 fails a shard over."
            }
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The engine's name: lowercase letters, digits and dashes, starting with a letter.
    pub name: String,
    /// The topology family to start from.
    #[arg(long, value_enum, default_value_t = Family::Standalone)]
    pub family: Family,
    /// Where to create the crate (default: ./NAME). Must not exist or be empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The Shoal SDK crate (its directory) the addon builds against. Default: `$SHOAL_SDK`,
    /// else the `sdk/` of the Shoal source tree this program was built from or that holds
    /// the current directory.
    #[arg(long)]
    pub sdk: Option<PathBuf>,
    /// Human name of the engine (default: NAME with its first letter capitalised).
    #[arg(long)]
    pub display_name: Option<String>,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Scaffold {
    pub name: String,
    pub display: String,
    pub family: Family,
    pub sdk: PathBuf,
}

/// Whether `name` can be an engine name (the manifest's rule) and a crate name.
pub fn valid_engine_name(name: &str) -> bool {
    name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

/// `my-db` → `MyDb`: the engine type's name.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

impl Scaffold {
    /// Every file of the crate: (path relative to the crate, contents).
    pub fn files(&self) -> Vec<(&'static str, String)> {
        let sdk = self.sdk.display().to_string();
        let ty = type_name(&self.name);
        // Family parts first: they contain placeholders of their own.
        let family_vars = [
            ("topology", self.family.topology()),
            ("probe_report", self.family.probe_report()),
            ("family_hooks", self.family.hooks()),
            ("topology_doc", self.family.topology_doc()),
        ];
        let vars = [
            ("name", self.name.as_str()),
            ("display", self.display.as_str()),
            ("family", self.family.name()),
            ("Type", ty.as_str()),
            ("sdk", sdk.as_str()),
        ];
        let render = |t: &str| fill(&fill(t, &family_vars), &vars);
        vec![
            (
                "Cargo.toml",
                render(include_str!("../templates/addon/Cargo.toml.tmpl")),
            ),
            (
                "addon.toml",
                render(include_str!("../templates/addon/addon.toml.tmpl")),
            ),
            (
                "src/lib.rs",
                render(include_str!("../templates/addon/lib.rs.tmpl")),
            ),
            (
                "docs/engine.md",
                render(include_str!("../templates/addon/engine.md.tmpl")),
            ),
            (
                ".gitignore",
                render(include_str!("../templates/addon/gitignore.tmpl")),
            ),
        ]
    }
}

/// Whether `dir` holds the Shoal SDK crate.
fn is_sdk(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .map(|t| t.contains("name = \"shoal-sdk\""))
        .unwrap_or(false)
}

/// The SDK to build against: `--sdk`, `$SHOAL_SDK`, else a Shoal source tree above this
/// program or above the current directory.
fn find_sdk(given: Option<&Path>) -> Result<PathBuf, Failure> {
    let chosen = given
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("SHOAL_SDK").map(PathBuf::from));
    if let Some(dir) = chosen {
        let dir = std::fs::canonicalize(&dir)
            .map_err(|e| Failure::usage(format!("SDK {}: {e}", dir.display())))?;
        if !is_sdk(&dir) {
            return Err(Failure::usage(format!(
                "{} is not the Shoal SDK (no Cargo.toml of package shoal-sdk there)",
                dir.display()
            )));
        }
        return Ok(dir);
    }
    let starts = [std::env::current_exe().ok(), std::env::current_dir().ok()];
    for start in starts.into_iter().flatten() {
        for dir in start.ancestors() {
            if is_sdk(&dir.join("sdk")) {
                return std::fs::canonicalize(dir.join("sdk"))
                    .map_err(|e| Failure::usage(format!("SDK {}: {e}", dir.display())));
            }
        }
    }
    Err(Failure::usage(
        "cannot find the Shoal SDK: pass --sdk DIR (the sdk/ directory of a Shoal source \
         tree) or set SHOAL_SDK",
    ))
}

pub fn new(args: NewArgs) -> Result<(), Failure> {
    if !valid_engine_name(&args.name) {
        return Err(Failure::usage(format!(
            "engine name {:?}: lowercase letters, digits and dashes, starting with a letter, \
             at most 40",
            args.name
        )));
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Failure::usage(format!(
            "{} exists and is not empty; choose another --dir",
            dir.display()
        )));
    }
    let sdk = find_sdk(args.sdk.as_deref())?;
    let display = args
        .display_name
        .clone()
        .unwrap_or_else(|| type_name(&args.name));
    let scaffold = Scaffold {
        name: args.name.clone(),
        display,
        family: args.family,
        sdk,
    };
    for (rel, text) in scaffold.files() {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Failure::usage(format!("cannot create {}: {e}", parent.display())))?;
        }
        std::fs::write(&path, text)
            .map_err(|e| Failure::usage(format!("cannot write {}: {e}", path.display())))?;
    }
    // Long names can push a line past rustfmt's width: leave the crate formatted.
    let _ = std::process::Command::new("rustfmt")
        .args(["--edition", "2021"])
        .arg(dir.join("src/lib.rs"))
        .stderr(std::process::Stdio::null())
        .status();
    // The Shoal tree's lock file, when there is one: the crate then builds with the
    // dependency versions Shoal is tested with, and offline.
    if let Some(lock) = scaffold.sdk.parent().map(|p| p.join("Cargo.lock")) {
        if lock.is_file() {
            let _ = std::fs::copy(&lock, dir.join("Cargo.lock"));
        }
    }
    println!(
        "created {} ({} addon {:?}, SDK {})\n\nnext:\n  shoal addon build {}      # wasm32-wasip2 build, then loaded and checked\n  (cd {} && cargo test)     # the unit test, natively\n  shoal addon test {}       # the conformance kit against a real server",
        dir.display(),
        scaffold.family.name(),
        scaffold.name,
        scaffold.sdk.display(),
        dir.display(),
        dir.display(),
        dir.display(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaffold(family: Family) -> Scaffold {
        Scaffold {
            name: "my-db".into(),
            display: "MyDb".into(),
            family,
            sdk: PathBuf::from("/src/shoal/sdk"),
        }
    }

    #[test]
    fn every_placeholder_is_filled_for_every_family() {
        for family in [
            Family::Standalone,
            Family::PrimaryReplica,
            Family::Quorum,
            Family::Sharded,
        ] {
            for (path, text) in scaffold(family).files() {
                assert!(!text.contains("{{"), "{family:?} {path}: {text}");
            }
            let files = scaffold(family).files();
            let manifest = &files[1].1;
            assert!(manifest.contains(&format!("kind = \"{}\"", family.name())));
            assert!(files[2].1.contains("struct MyDb;"));
            assert!(files[0].1.contains("path = \"/src/shoal/sdk\""));
        }
    }

    #[test]
    fn engine_names_follow_the_manifest_rule() {
        for ok in ["redis2", "my-db", "x"] {
            assert!(valid_engine_name(ok), "{ok}");
        }
        for bad in ["", "My", "2db", "my_db", "db-", "a b", &"x".repeat(41)] {
            assert!(!valid_engine_name(bad), "{bad}");
        }
        assert_eq!(type_name("my-cool-db"), "MyCoolDb");
    }
}
