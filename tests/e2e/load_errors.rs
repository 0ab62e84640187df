//! Loading: every kind of bad file gets its own clear error naming the file, and the
//! compiled-code cache is used, verified and repaired.

use shoal_runtime::{CodeSource, LoadError};
use shoal_tests::{instance, load, runtime_with, wasm};

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
            assert_eq!(found, "9.0.0");
            assert_eq!(supported, "0.2.0, 0.1.0");
        }
        other => panic!("expected an API version error, got {other:?}"),
    }
    assert!(
        err.to_string().contains("targets Shoal addon API 9.0.0"),
        "{err}"
    );
}

/// An addon built from the frozen API 0.1.0 WIT (`tests/fixtures/api-v0-1-0`, no SDK) loads
/// through the adapter: its manifest (an interface that changed) converted, its other
/// interfaces and the host imports linked as they are, and the interface it lacks (`data`)
/// answering `unsupported`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_addon_of_api_0_1_0_still_loads_and_answers() {
    use shoal_runtime::wit::{Hook, ParamChange, Readiness, Value};
    use shoal_runtime::{CallContext, CallFailure};
    let rt = runtime_with(|c| c.max_instances = 8);
    let addon = load(&rt, "shoal_fixture_api_v0_1_0.wasm").await;
    assert_eq!(addon.info().api_version, "0.1.0");
    let m = addon.manifest();
    assert_eq!(m.engine, "oldtimer");
    assert_eq!(m.parameters[0].name, "greeting");
    assert_eq!(addon.limits(Hook::Probe).timeout.as_millis(), 1500);

    let ctx = CallContext::default();
    let inst = instance("old-0", "127.0.0.1:4100".parse().unwrap(), &[]);
    let plan = addon
        .call(&ctx)
        .run_spec(&inst, &[], &[])
        .await
        .expect("run-spec");
    assert_eq!(plan.server.program, "oldtimer-server");
    assert_eq!(plan.server.args, ["--port=4100"]);
    assert_eq!(plan.readiness, Readiness::TcpPort("client".into()));
    let caller = addon.call(&ctx);
    let report = caller.probe(&inst, &[]).await.expect("probe");
    assert_eq!(report.detail, "API 0.1.0 addon, 0 member(s)");
    assert!(report.writable);
    // The probe logged through the host import (linked under its 0.1.0 name's successor).
    assert!(
        caller
            .last_stats()
            .is_some_and(|s| s.logs.emitted_bytes > 0),
        "{:?}",
        caller.last_stats()
    );
    let bad = addon
        .call(&ctx)
        .validate(&[shoal_runtime::wit::Param {
            name: "greeting".into(),
            value: Value::Text("yo".into()),
        }])
        .await
        .expect("validate");
    assert_eq!(bad.len(), 1, "{bad:?}");
    let classified = addon
        .call(&ctx)
        .classify(&[ParamChange {
            name: "greeting".into(),
            old_value: None,
            new_value: Some(Value::Text("hi".into())),
        }])
        .await
        .expect("classify");
    assert_eq!(classified.len(), 1);
    let samples = addon.call(&ctx).metrics(&inst).await.expect("metrics");
    assert_eq!(samples[0].name, "oldtimer_calls_total");

    // What API 0.1.0 did not have answers unsupported, not a link error.
    let e = addon
        .call(&ctx)
        .write_marker(&inst, &[], "k", "v")
        .await
        .expect_err("no data interface in 0.1.0");
    assert!(
        matches!(
            &e.failure,
            CallFailure::Hook(shoal_runtime::wit::HookError::Unsupported)
        ),
        "{e:?}"
    );
    let e = addon
        .call(&ctx)
        .read_markers(&inst, &[], &["k".to_string()])
        .await
        .expect_err("no data interface in 0.1.0");
    assert!(e.to_string().contains("read-markers"), "{e}");
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
