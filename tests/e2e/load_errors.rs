//! Loading: every kind of bad file gets its own clear error naming the file, and the
//! compiled-code cache is used, verified and repaired.

use shoal_runtime::{CodeSource, LoadError};
use shoal_tests::{runtime_with, wasm};

async fn load_err(bytes: Vec<u8>, origin: &str) -> LoadError {
    let rt = runtime_with(|c| c.max_instances = 8);
    match rt.load_bytes(origin, bytes).await {
        Ok(a) => panic!("{origin} loaded as {}", a.engine()),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_component() {
    let bytes = std::fs::read(wasm("shoal_example_memcached.wasm")).unwrap();
    let half = bytes[..bytes.len() / 2].to_vec();
    let err = load_err(half, "half.wasm").await;
    assert!(matches!(err, LoadError::Invalid { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("half.wasm: invalid or truncated component"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_module_instead_of_component() {
    // The smallest valid core module: magic and version 1.
    let err = load_err(b"\0asm\x01\0\0\0".to_vec(), "core.wasm").await;
    assert!(matches!(err, LoadError::CoreModule { .. }), "{err:?}");
    assert!(err.to_string().contains("wasm32-wasip2"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_api_version() {
    let bytes = std::fs::read(wasm("shoal_fixture_wrong_api.wasm")).unwrap();
    let err = load_err(bytes, "future.wasm").await;
    match &err {
        LoadError::ApiVersion {
            found, supported, ..
        } => {
            assert_eq!(found, "0.2.0");
            assert_eq!(supported, "0.1.0");
        }
        other => panic!("expected an API version error, got {other:?}"),
    }
    assert!(
        err.to_string().contains("targets Shoal addon API 0.2.0"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_is_not_an_addon() {
    let bytes = std::fs::read(wasm("shoal-fixture-not-an-addon.wasm")).unwrap();
    let err = load_err(bytes, "cmd.wasm").await;
    assert!(matches!(err, LoadError::NotAnAddon { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("wasi:cli/run"),
        "names what it exports instead: {msg}"
    );
    assert!(msg.contains("export_engine!"), "says what to do: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_webassembly_at_all() {
    let err = load_err(b"#!/bin/sh\necho hello\n".to_vec(), "script.sh").await;
    assert!(matches!(err, LoadError::NotWasm { .. }), "{err:?}");
    let err = load_err(Vec::new(), "empty.wasm").await;
    assert!(err.to_string().contains("empty"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_file() {
    let rt = runtime_with(|c| c.max_instances = 8);
    let err = rt
        .load_file(std::path::Path::new("/nonexistent/addon.wasm"))
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/addon.wasm"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_code_is_cached_verified_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let rt = runtime_with(|c| {
        c.max_instances = 8;
        c.cache_dir = Some(cache.clone());
    });
    let path = wasm("shoal_example_memcached.wasm");
    let first = rt.load_file(&path).await.expect("first load");
    assert_eq!(first.info().code_source, CodeSource::Compiled);
    let second = rt.load_file(&path).await.expect("second load");
    assert_eq!(second.info().code_source, CodeSource::Cache);
    assert_eq!(second.manifest(), first.manifest());

    // A damaged artifact is detected by its checksum and replaced, never run.
    let artifact = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("an artifact in the cache");
    let mut bytes = std::fs::read(&artifact).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&artifact, &bytes).unwrap();
    let third = rt.load_file(&path).await.expect("load after damage");
    assert_eq!(third.info().code_source, CodeSource::Compiled);
    let fourth = rt.load_file(&path).await.expect("load after repair");
    assert_eq!(fourth.info().code_source, CodeSource::Cache);

    // Another engine configuration never maps this configuration's artifacts.
    let other = runtime_with(|c| {
        c.max_instances = 8;
        c.cache_dir = Some(cache.clone());
        c.pooling = shoal_runtime::Pooling::Off;
        c.max_memory_bytes = 256 << 20;
    });
    let loaded = other
        .load_file(&path)
        .await
        .expect("load in another config");
    assert_eq!(loaded.manifest().engine, "memcached");
}
