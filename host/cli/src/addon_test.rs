//! `shoal addon test FILE.wasm|DIR`: the conformance kit (crate `shoal-conformance`) run on an
//! addon file, or on an addon crate built first: each scenario printed as it ends, then a
//! table (or JSON with `-o json`); exit 0 only when no scenario failed.

use std::path::PathBuf;

use shoal_conformance::{Options, Outcome, Report};

use crate::output::Format;
use crate::runtime_opts::RuntimeOpts;
use crate::Failure;

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The addon (.wasm), or an addon crate's directory (built first, as `shoal addon build`).
    pub addon: PathBuf,
    /// Engine version to test (default: the addon's default version).
    #[arg(long = "engine-version")]
    pub engine_version: Option<String>,
    /// Loopback ports the kit's instances may use, FIRST-LAST.
    #[arg(long, default_value = "27000-27199")]
    pub ports: String,
    /// Keep the kit's home (state, engine logs, data) for a look afterwards.
    #[arg(long)]
    pub keep: bool,
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    #[command(flatten)]
    pub runtime: RuntimeOpts,
}

fn ports(text: &str) -> Result<(u16, u16), Failure> {
    let bad = || {
        Failure::usage(format!(
            "--ports {text:?}: expected FIRST-LAST, e.g. 27000-27199"
        ))
    };
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || b < a + 15 {
        return Err(Failure::usage(format!(
            "--ports {text:?}: need at least 16 ports, starting above 0"
        )));
    }
    Ok((a, b))
}

fn table(r: &Report) -> String {
    let mut s = format!("{} {} ({})\n", r.engine, r.version, r.addon);
    s.push_str(&format!(
        "{:<52} {:<13} {:>8}  {}\n",
        "SCENARIO", "RESULT", "SECONDS", "DETAIL"
    ));
    for sc in &r.scenarios {
        s.push_str(&format!(
            "{:<52} {:<13} {:>8.1}  {}\n",
            sc.name,
            sc.outcome.as_str(),
            sc.seconds,
            sc.detail
        ));
    }
    let count = |o| r.scenarios.iter().filter(|s| s.outcome == o).count();
    s.push_str(&format!(
        "\n{}: {} passed, {} failed, {} not declared, {} not checked\n",
        if r.passed() { "PASSED" } else { "FAILED" },
        count(Outcome::Pass),
        count(Outcome::Fail),
        count(Outcome::NotDeclared),
        count(Outcome::NotChecked)
    ));
    if let Some(h) = &r.home {
        s.push_str(&format!("kept the kit's home: {}\n", h.display()));
    }
    s
}

pub async fn run(args: TestArgs) -> Result<(), Failure> {
    let ports = ports(&args.ports)?;
    let file = if args.addon.is_dir() {
        crate::addon_build::build(&args.addon, false)?
    } else {
        args.addon.clone()
    };
    let (_rt, addon) = args.runtime.load(&file).await?;
    let shoal_exe = std::env::current_exe()
        .map_err(|e| Failure::usage(format!("cannot find this program: {e}")))?;
    // The grants given here (`--grant`, `--config`) hold for the kit's own host too.
    #[derive(serde::Serialize)]
    struct KitRuntime {
        grants: std::collections::BTreeMap<String, shoal_runtime::Grants>,
    }
    #[derive(serde::Serialize)]
    struct KitConfig {
        runtime: KitRuntime,
    }
    let host_config = toml::to_string(&KitConfig {
        runtime: KitRuntime {
            grants: args.runtime.config()?.grants,
        },
    })
    .map_err(|e| Failure::usage(format!("cannot write the kit's grants: {e}")))?;
    let opts = Options {
        shoal_exe,
        host_config,
        addon: file,
        manifest: addon.manifest().clone(),
        version: args.engine_version.clone(),
        ports,
        keep: args.keep,
    };
    let text = args.output == Format::Text;
    let mut progress = |s: &shoal_conformance::Scenario| {
        if text {
            eprintln!(
                "  {:<13} {} ({:.1} s)",
                s.outcome.as_str(),
                s.name,
                s.seconds
            );
        }
    };
    if text {
        eprintln!(
            "shoal addon test: {} (this takes a few minutes)",
            opts.addon.display()
        );
    }
    let report = shoal_conformance::run(opts, &mut progress)
        .await
        .map_err(|e| Failure::usage(e.to_string()))?;
    crate::output::emit(args.output, &report, || {
        crate::output::printable_lines(&table(&report))
    })?;
    if report.passed() {
        Ok(())
    } else {
        Err(Failure::call("the addon failed the conformance kit"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn port_ranges_are_checked() {
        assert_eq!(super::ports("27000-27199").ok(), Some((27000, 27199)));
        for bad in ["", "27000", "a-b", "27000-27001", "0-100"] {
            assert!(super::ports(bad).is_err(), "{bad}");
        }
    }
}
