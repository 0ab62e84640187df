//! Every addon in this repository passes the conformance kit (`shoal addon test`) against
//! its real engine server, as any addon author's would: one test per engine, each with its
//! own port range. A failing scenario fails the test with the kit's table.

use std::process::Command;

use shoal_tests::wasm;

fn kit(addon: &str, ports: &str) {
    let cache = tempfile::tempdir().expect("cache dir");
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["addon", "test"])
        .arg(wasm(addon))
        .args(["--ports", ports, "--cache-dir"])
        .arg(cache.path())
        .env_remove("RUST_LOG")
        .output()
        .expect("run shoal addon test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "{addon} failed the kit:\n{text}");
    assert!(text.contains("PASSED"), "{text}");
}

#[test]
fn memcached_example_passes_the_kit() {
    kit("shoal_example_memcached.wasm", "28000-28049");
}

#[test]
fn postgresql_passes_the_kit() {
    kit("shoal_addon_postgresql.wasm", "28050-28149");
}

#[test]
fn mariadb_passes_the_kit() {
    kit("shoal_addon_mysql.wasm", "28150-28249");
}

#[test]
fn redis_passes_the_kit() {
    kit("shoal_addon_redis.wasm", "28250-28399");
}

#[test]
fn etcd_passes_the_kit() {
    kit("shoal_addon_etcd.wasm", "28400-28499");
}

#[test]
fn zookeeper_passes_the_kit() {
    kit("shoal_addon_zookeeper.wasm", "28500-28599");
}

/// Grants given to `shoal addon test` (`--grant`, `--config`) hold for the kit's own host,
/// where the addon's hooks run (they were applied to the first load only).
#[test]
fn the_kits_host_gets_the_grants_given() {
    let cache = tempfile::tempdir().expect("cache dir");
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["addon", "test"])
        .arg(wasm("shoal_example_memcached.wasm"))
        .args(["--ports", "28600-28649", "--keep", "-o", "json"])
        .args(["--grant", "exec:true=/bin/true", "--cache-dir"])
        .arg(cache.path())
        .env_remove("RUST_LOG")
        .output()
        .expect("run shoal addon test");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let home = std::path::PathBuf::from(report["home"].as_str().expect("the kept home"));
    let config = std::fs::read_to_string(home.join("config.toml")).expect("config.toml");
    std::fs::remove_dir_all(&home).expect("remove the kept home");
    assert!(out.status.success(), "{report}");
    assert!(config.contains("/bin/true"), "{config}");
}
