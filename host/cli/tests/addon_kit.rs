//! The addon authoring kit end to end: `shoal addon new` makes a crate that passes its own
//! unit test natively, `shoal addon build` builds it for wasm32-wasip2 and Shoal loads it
//! with the manifest its `addon.toml` declares; bad names and occupied directories are
//! refused with nothing written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn shoal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run shoal")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk")
}

#[test]
fn a_new_addon_passes_its_own_test_builds_and_loads_as_declared() {
    let tmp = tempfile::tempdir().unwrap();
    let krate = tmp.path().join("my-db");
    let (k, s) = (krate.to_str().unwrap(), sdk());
    let out = shoal(&[
        "addon",
        "new",
        "my-db",
        "--family",
        "quorum",
        "--dir",
        k,
        "--sdk",
        s.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    for f in [
        "Cargo.toml",
        "addon.toml",
        "src/lib.rs",
        "docs/engine.md",
        ".gitignore",
    ] {
        assert!(krate.join(f).is_file(), "{f}");
    }
    let target = tmp.path().join("target");
    let test = Command::new("cargo")
        .args(["test", "--release", "--quiet"])
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run cargo");
    assert!(
        test.status.success(),
        "the scaffold's own test: {}",
        text(&test)
    );

    let addons = tmp.path().join("addons");
    let cache = tmp.path().join("cache");
    let build = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["addon", "build", k, "--out"])
        .arg(&addons)
        .arg("--cache-dir")
        .arg(&cache)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run shoal addon build");
    assert!(build.status.success(), "{}", text(&build));
    assert!(
        text(&build).contains("built my-db 0.1.0"),
        "{}",
        text(&build)
    );
    let wasm = addons.join("shoal_addon_my_db.wasm");
    assert!(wasm.is_file());

    let out = shoal(&[
        "addon",
        "inspect",
        wasm.to_str().unwrap(),
        "-o",
        "json",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["engine"], "my-db");
    assert_eq!(v["manifest"]["topologies"][0]["kind"], "Quorum");
    let limits = v["manifest"]["limits"].to_string();
    assert!(
        limits.contains("1000"),
        "addon.toml's probe = \"1s\": {limits}"
    );
}

#[test]
fn bad_names_and_occupied_directories_are_refused_with_nothing_written() {
    let tmp = tempfile::tempdir().unwrap();
    let s = sdk();
    let s = s.to_str().unwrap();
    for bad in ["My-DB", "2fast", "a_b", "x-"] {
        let dir = tmp.path().join("new");
        let out = shoal(&[
            "addon",
            "new",
            bad,
            "--dir",
            dir.to_str().unwrap(),
            "--sdk",
            s,
        ]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        assert!(text(&out).contains("engine name"), "{}", text(&out));
        assert!(!dir.exists(), "{bad}: nothing written");
    }
    let busy = tmp.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "mine").unwrap();
    let out = shoal(&[
        "addon",
        "new",
        "ok",
        "--dir",
        busy.to_str().unwrap(),
        "--sdk",
        s,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not empty"), "{}", text(&out));
    assert_eq!(
        std::fs::read_dir(&busy).unwrap().count(),
        1,
        "nothing added"
    );

    let out = shoal(&[
        "addon",
        "new",
        "ok",
        "--dir",
        tmp.path().join("x").to_str().unwrap(),
        "--sdk",
        "/nonexistent",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("SDK"), "{}", text(&out));

    let out = shoal(&[
        "addon",
        "build",
        tmp.path().join("nothing").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("shoal addon new"), "{}", text(&out));
}
