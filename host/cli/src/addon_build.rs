//! `shoal addon build [DIR]`: build an addon crate for wasm32-wasip2 with cargo (its progress
//! shown as cargo prints it), find the component cargo produced, load it the way `shoal
//! serve` would (API version, manifest, limits checked) and optionally copy it into an addons
//! directory. What cargo says about artifacts is read from its JSON messages, so a crate in
//! any workspace or target directory is found.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::runtime_opts::RuntimeOpts;
use crate::Failure;

/// The Rust target addons are built for.
pub const TARGET: &str = "wasm32-wasip2";

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The addon crate (the directory of its Cargo.toml).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Copy the built addon into this directory (e.g. `<home>/addons`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A debug build (faster to build, slower to run).
    #[arg(long)]
    pub debug: bool,
    #[command(flatten)]
    pub runtime: RuntimeOpts,
}

/// The `.wasm` files among the artifacts of cargo's JSON `messages` (one JSON object a
/// line) for package `manifest_path`.
pub fn wasm_artifacts(messages: &str, manifest_path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in messages.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact"
            || v["manifest_path"].as_str().map(Path::new) != Some(manifest_path)
        {
            continue;
        }
        for f in v["filenames"].as_array().into_iter().flatten() {
            if let Some(f) = f.as_str().filter(|f| f.ends_with(".wasm")) {
                out.push(PathBuf::from(f));
            }
        }
    }
    out
}

/// Build the crate at `dir`; the path of the component.
pub fn build(dir: &Path, debug: bool) -> Result<PathBuf, Failure> {
    let manifest = std::fs::canonicalize(dir.join("Cargo.toml")).map_err(|e| {
        Failure::usage(format!(
            "{}: {e} (expected an addon crate; `shoal addon new NAME` makes one)",
            dir.join("Cargo.toml").display()
        ))
    })?;
    let mut cmd = Command::new("cargo");
    cmd.args([
        "build",
        "--target",
        TARGET,
        "--message-format=json-render-diagnostics",
    ])
    .arg("--manifest-path")
    .arg(&manifest);
    if !debug {
        cmd.arg("--release");
    }
    // Cargo's own progress and diagnostics go to the user as usual; its JSON goes to us.
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Failure::usage(format!("cannot run cargo: {e} (install Rust: rustup.rs)")))?;
    let mut messages = String::new();
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines() {
            let line = line.map_err(|e| Failure::call(format!("reading cargo's output: {e}")))?;
            messages.push_str(&line);
            messages.push('\n');
        }
    }
    let status = child
        .wait()
        .map_err(|e| Failure::call(format!("waiting for cargo: {e}")))?;
    if !status.success() {
        let hint = if messages.contains(TARGET) || messages.is_empty() {
            format!(" (is the target installed? `rustup target add {TARGET}`)")
        } else {
            String::new()
        };
        return Err(Failure::call(format!(
            "cargo build failed ({status}){hint}"
        )));
    }
    let found = wasm_artifacts(&messages, &manifest);
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Failure::usage(format!(
            "cargo built no .wasm for {}: the crate needs `crate-type = [\"cdylib\"]` under [lib]",
            manifest.display()
        ))),
        many => Err(Failure::usage(format!(
            "cargo built several .wasm files for {}: {many:?}",
            manifest.display()
        ))),
    }
}

pub async fn run(args: BuildArgs) -> Result<(), Failure> {
    let wasm = build(&args.dir, args.debug)?;
    let (_rt, addon) = args.runtime.load(&wasm).await.map_err(|f| {
        Failure::usage(format!(
            "built {}, but Shoal refuses to load it: {}",
            wasm.display(),
            f.message
        ))
    })?;
    let info = addon.info();
    let m = addon.manifest();
    println!(
        "built {} {} (addon API {}): {} bytes, sha256:{}\n  {}",
        m.engine,
        m.addon_version,
        info.api_version,
        info.size,
        info.digest,
        wasm.display()
    );
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)
            .map_err(|e| Failure::usage(format!("cannot create {}: {e}", out.display())))?;
        let name = wasm
            .file_name()
            .ok_or_else(|| Failure::usage("the built file has no name"))?;
        let dest = out.join(name);
        std::fs::copy(&wasm, &dest)
            .map_err(|e| Failure::usage(format!("cannot copy to {}: {e}", dest.display())))?;
        println!("  copied to {}", dest.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_component_is_found_among_cargo_messages() {
        let msgs = r#"{"reason":"compiler-artifact","manifest_path":"/x/sdk/Cargo.toml","filenames":["/t/libshoal_sdk.rlib"]}
not json
{"reason":"compiler-artifact","manifest_path":"/x/a/Cargo.toml","filenames":["/t/wasm32-wasip2/release/shoal_addon_a.wasm"]}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            wasm_artifacts(msgs, Path::new("/x/a/Cargo.toml")),
            vec![PathBuf::from("/t/wasm32-wasip2/release/shoal_addon_a.wasm")]
        );
        assert!(wasm_artifacts(msgs, Path::new("/x/b/Cargo.toml")).is_empty());
    }
}
