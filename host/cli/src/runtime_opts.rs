//! Options every addon command shares: the operator configuration file, the compiled-code
//! cache and command-line grants, turned into an [`AddonRuntime`].

use std::net::SocketAddr;
use std::path::PathBuf;

use shoal_runtime::{AddonRuntime, Grants, LoadedAddon, RuntimeConfig};

use crate::Failure;

/// Runtime options of addon commands.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeOpts {
    /// Host configuration file (TOML); its `[runtime]` table applies (see docs/operator-guide.md).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for compiled addon code (default: $XDG_CACHE_HOME/shoal/compiled, or
    /// ~/.cache/shoal/compiled; `none` disables the cache).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<String>,
    /// Grant a capability the addon declares, for this run: `exec:NAME`, `exec:NAME=/path`,
    /// `connect:IP:PORT` or `name-lookup`. Repeatable.
    #[arg(long = "grant", value_name = "GRANT")]
    pub grants: Vec<String>,
    /// Directory searched for granted programs given without a path. Repeatable.
    /// Default: /usr/local/bin, /usr/bin, /bin.
    #[arg(long = "exec-path", value_name = "DIR")]
    pub exec_paths: Vec<PathBuf>,
}

impl RuntimeOpts {
    /// The runtime these options describe.
    pub fn runtime(&self) -> Result<AddonRuntime, Failure> {
        AddonRuntime::new(self.config()?).map_err(|e| Failure::usage(e.to_string()))
    }

    /// The runtime configuration these options describe.
    pub fn config(&self) -> Result<RuntimeConfig, Failure> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
                toml::from_str::<shoal_control::HostConfig>(&text)
                    .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?
                    .runtime
            }
            None => RuntimeConfig::default(),
        };
        cfg.cache_dir = match self.cache_dir.as_deref() {
            Some("none") => None,
            Some(dir) => Some(PathBuf::from(dir)),
            None => cfg.cache_dir.or_else(default_cache_dir),
        };
        // A one-off command needs few instance slots; a small pool reserves little memory.
        if self.config.is_none() {
            cfg.max_instances = 64;
        }
        if !self.grants.is_empty() {
            let mut g = Grants::default();
            for grant in &self.grants {
                parse_grant(grant, &mut g)?;
            }
            g.exec_search_path = if self.exec_paths.is_empty() {
                ["/usr/local/bin", "/usr/bin", "/bin"]
                    .iter()
                    .map(PathBuf::from)
                    .collect()
            } else {
                self.exec_paths.clone()
            };
            let all = cfg.grants.entry("*".into()).or_default();
            all.exec.extend(g.exec);
            all.exec_search_path.extend(g.exec_search_path);
            all.connect.extend(g.connect);
            all.name_lookup |= g.name_lookup;
        }
        Ok(cfg)
    }

    /// Load `file` into a runtime built from these options.
    pub async fn load(
        &self,
        file: &std::path::Path,
    ) -> Result<(AddonRuntime, LoadedAddon), Failure> {
        let rt = self.runtime()?;
        let addon = rt
            .load_file(file)
            .await
            .map_err(|e| Failure::usage(e.to_string()))?;
        Ok((rt, addon))
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("shoal").join("compiled"))
}

fn parse_grant(text: &str, g: &mut Grants) -> Result<(), Failure> {
    let bad = |why: &str| {
        Failure::usage(format!(
            "--grant {text:?}: {why} (expected exec:NAME, exec:NAME=/path, connect:IP:PORT or name-lookup)"
        ))
    };
    if text == "name-lookup" {
        g.name_lookup = true;
        return Ok(());
    }
    if let Some(rest) = text.strip_prefix("exec:") {
        let (name, path) = match rest.split_once('=') {
            Some((n, p)) => (n, Some(PathBuf::from(p))),
            None => (rest, None),
        };
        if name.is_empty() || name.contains('/') {
            return Err(bad("the program must be a name, not a path"));
        }
        if path.as_ref().is_some_and(|p| !p.is_absolute()) {
            return Err(bad("the path must be absolute"));
        }
        g.exec.insert(name.to_string(), path);
        return Ok(());
    }
    if let Some(rest) = text.strip_prefix("connect:") {
        let addr: SocketAddr = rest.parse().map_err(|_| bad("not an IP:PORT address"))?;
        g.connect.push(addr);
        return Ok(());
    }
    Err(bad("unknown kind of grant"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_guide_example_parses_and_validates() {
        let doc = include_str!("../../../docs/operator-guide.md");
        let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = start + doc[start..].find("```").expect("end of block");
        let host: shoal_control::HostConfig =
            toml::from_str(&doc[start..end]).expect("the example parses");
        host.validate().expect("the example is valid");
        assert_eq!(host.port_range, [15000, 19999]);
        assert!(host.engines["postgresql"].contains_key("18"));
        let cfg = host.runtime;
        assert_eq!(cfg.max_instances, 2000);
        let pg = cfg.grants_for("postgresql");
        assert!(pg.exec.contains_key("pg_rewind"));
        assert_eq!(pg.connect.len(), 1);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = toml::from_str::<shoal_control::HostConfig>("[runtime]\nmax_instancez = 3")
            .unwrap_err();
        assert!(err.to_string().contains("max_instancez"), "{err}");
    }

    #[test]
    fn grants_parse_or_explain() {
        let mut g = Grants::default();
        for good in [
            "exec:pg_dump",
            "exec:psql=/usr/bin/psql",
            "connect:10.0.0.1:9000",
            "name-lookup",
        ] {
            assert!(parse_grant(good, &mut g).is_ok(), "{good} was refused");
        }
        assert_eq!(g.exec.len(), 2);
        assert!(g.name_lookup);
        for bad in [
            "exec:/bin/sh",
            "exec:x=relative",
            "connect:example.com:80",
            "fs:/",
        ] {
            match parse_grant(bad, &mut g) {
                Ok(()) => panic!("{bad} was accepted"),
                Err(e) => assert!(e.message.contains("--grant"), "{}", e.message),
            }
        }
    }
}
