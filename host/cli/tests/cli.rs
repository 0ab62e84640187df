//! The `shoal` binary end to end: real addon files, a real memcached, exit codes and output.

use std::path::Path;
use std::process::{Command, Output};

use shoal_tests::{free_port, wasm, Memcached};

fn shoal(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .env_remove("RUST_LOG")
        .output()
        .expect("run shoal")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    match serde_json::from_slice(&o.stdout) {
        Ok(v) => v,
        Err(e) => panic!("not JSON ({e}): {}\nstderr: {}", stdout(o), stderr(o)),
    }
}

fn example() -> String {
    wasm("shoal_example_memcached.wasm").display().to_string()
}

#[test]
fn version_names_the_addon_api() {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["version", "-o", "json"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let v = json(&out);
    assert_eq!(v["addon_api"], "0.2.0");
    assert_eq!(v["wit_package"], "shoal:addon@0.2.0");
}

#[test]
fn inspect_shows_manifest_hooks_digest_and_uses_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let out = shoal(
        &["addon", "inspect", &example(), "-o", "json"],
        cache.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["engine"], "memcached");
    assert_eq!(v["api_version"], "0.2.0");
    assert!(v["digest"].as_str().unwrap().starts_with("sha256:"));
    let hooks = v["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 27);
    let probe = hooks.iter().find(|h| h["hook"] == "probe").unwrap();
    assert_eq!(probe["timeout_ms"], 1000);
    assert_eq!(probe["declared"], true);
    assert_eq!(v["manifest"]["parameters"][0]["name"], "memory-limit");
    assert_eq!(v["compiled_from_cache"], false);

    let again = shoal(
        &["addon", "inspect", &example(), "-o", "json"],
        cache.path(),
    );
    assert_eq!(json(&again)["compiled_from_cache"], true);

    let yaml = shoal(
        &["addon", "inspect", &example(), "-o", "yaml"],
        cache.path(),
    );
    assert!(stdout(&yaml).contains("engine: memcached"));
    let text = shoal(&["addon", "inspect", &example()], cache.path());
    let text = stdout(&text);
    assert!(
        text.contains("addon        memcached 0.1.0 (Memcached)"),
        "{text}"
    );
    assert!(text.contains("memory-limit"), "{text}");
}

#[test]
fn bad_files_exit_2_with_a_clear_message() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(example()).unwrap();
    let half = dir.path().join("half.wasm");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    let out = shoal(&["addon", "inspect", half.to_str().unwrap()], cache.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid or truncated component"),
        "{}",
        stderr(&out)
    );

    let wrong = wasm("shoal_fixture_wrong_api.wasm");
    let out = shoal(&["addon", "inspect", wrong.to_str().unwrap()], cache.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("targets Shoal addon API 9.0.0"),
        "{}",
        stderr(&out)
    );

    let out = shoal(&["addon", "inspect", "/nonexistent.wasm"], cache.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read addon file /nonexistent.wasm"));
}

#[test]
fn call_probe_and_metrics_against_a_real_memcached() {
    let cache = tempfile::tempdir().unwrap();
    let mc = Memcached::start();
    let ep = mc.addr.to_string();
    let out = shoal(
        &["addon", "call", &example(), "probe", "--endpoint", &ep],
        cache.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["role"], "standalone");
    assert_eq!(v["health"], "Healthy");
    assert!(v["detail"].as_str().unwrap().starts_with("memcached 1.6"));

    let out = shoal(
        &[
            "addon",
            "call",
            &example(),
            "probe",
            "--endpoint",
            &ep,
            "--live",
            "--repeat",
            "20",
        ],
        cache.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("20 calls: median"),
        "{}",
        stderr(&out)
    );

    let out = shoal(
        &["addon", "call", &example(), "metrics", "--endpoint", &ep],
        cache.path(),
    );
    let names: Vec<String> = json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        names.contains(&"memcached_current_items".to_string()),
        "{names:?}"
    );
}

#[test]
fn a_failed_call_exits_1_and_says_why() {
    let cache = tempfile::tempdir().unwrap();
    let ep = format!("127.0.0.1:{}", free_port());
    let out = shoal(
        &["addon", "call", &example(), "probe", "--endpoint", &ep],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("addon memcached, hook probe: retryable failure"),
        "{err}"
    );

    let out = shoal(&["addon", "call", &example(), "promote"], cache.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not supported by this addon"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_flags_exit_2_and_change_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let out = shoal(&["addon", "call", &example(), "frobnicate"], cache.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown hook \"frobnicate\""),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("probe"), "lists the hooks");

    let out = shoal(
        &[
            "addon",
            "call",
            &example(),
            "run-spec",
            "--param",
            "colour=blue",
        ],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("memcached has no such parameter"),
        "{}",
        stderr(&out)
    );

    let out = shoal(
        &[
            "addon",
            "call",
            &example(),
            "run-spec",
            "--param",
            "threads=9000",
        ],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("outside 1..=64"), "{}", stderr(&out));

    let out = shoal(
        &[
            "addon",
            "call",
            &example(),
            "probe",
            "--grant",
            "exec:/bin/sh",
        ],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("must be a name, not a path"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_spec_takes_typed_parameters() {
    let cache = tempfile::tempdir().unwrap();
    let out = shoal(
        &[
            "addon",
            "call",
            &example(),
            "run-spec",
            "--endpoint",
            "127.0.0.1:11311",
            "--param",
            "memory-limit=128MB",
            "--param",
            "threads=2",
        ],
        cache.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    let args: Vec<&str> = v["server"]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for want in ["-m128", "-t2", "-p11311"] {
        assert!(args.contains(&want), "{want} in {args:?}");
    }
}

#[test]
fn backup_to_a_file_and_restore_from_it() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hostile = wasm("shoal_fixture_hostile.wasm").display().to_string();
    let data = dir.path().join("backup.bin");
    let info = dir.path().join("info.json");
    let out = shoal(
        &[
            "addon",
            "call",
            &hostile,
            "backup",
            "--method",
            "exec-stream",
            "--param",
            "size=5MiB",
            "--grant",
            "exec:head",
            "--out",
            data.to_str().unwrap(),
        ],
        cache.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(&info, &out.stdout).unwrap();
    assert_eq!(std::fs::metadata(&data).unwrap().len(), 5 << 20);
    assert!(stderr(&out).contains("wrote 5 MiB"), "{}", stderr(&out));

    // A failed backup leaves no partial file behind.
    let failed = dir.path().join("failed.bin");
    let out = shoal(
        &[
            "addon",
            "call",
            &hostile,
            "backup",
            "--method",
            "exec-stream",
            "--out",
            failed.to_str().unwrap(),
        ],
        cache.path(),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "head is not granted: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("denied by the sandbox"),
        "{}",
        stderr(&out)
    );
    assert!(!failed.exists(), "the partial output was removed");

    // An existing output file is never overwritten.
    let again = shoal(
        &[
            "addon",
            "call",
            &hostile,
            "backup",
            "--method",
            "exec-stream",
            "--grant",
            "exec:head",
            "--out",
            data.to_str().unwrap(),
        ],
        cache.path(),
    );
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("must not exist yet"),
        "{}",
        stderr(&again)
    );

    let out = shoal(
        &[
            "addon",
            "call",
            &hostile,
            "restore",
            "--info",
            info.to_str().unwrap(),
            "--in",
            data.to_str().unwrap(),
            "--grant",
            "exec:wc",
        ],
        cache.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("restored 5 MiB"), "{}", stderr(&out));

    // The recorded checksum catches a damaged file before anything is restored.
    let info_json = json(&shoal(
        &[
            "addon",
            "call",
            &hostile,
            "backup",
            "--method",
            "exec-stream",
            "--param",
            "size=1MiB",
            "--grant",
            "exec:head",
            "--out",
            dir.path().join("b2.bin").to_str().unwrap(),
        ],
        cache.path(),
    ));
    let labels = info_json["labels"].as_array().unwrap();
    assert!(labels.iter().any(|l| l[0] == "shoal.sha256"), "{labels:?}");
    std::fs::write(&info, serde_json::to_vec(&info_json).unwrap()).unwrap();
    let mut damaged = std::fs::read(dir.path().join("b2.bin")).unwrap();
    damaged[1000] ^= 1;
    std::fs::write(dir.path().join("b2.bin"), &damaged).unwrap();
    let out = shoal(
        &[
            "addon",
            "call",
            &hostile,
            "restore",
            "--info",
            info.to_str().unwrap(),
            "--in",
            dir.path().join("b2.bin").to_str().unwrap(),
            "--grant",
            "exec:wc",
        ],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is damaged"), "{}", stderr(&out));
}
