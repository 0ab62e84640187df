//! The example memcached addon against a real memcached server started on a free port.

use shoal_runtime::wit::{
    ApplyMode, ChangeEffect, Health, HookError, Param, ParamChange, ParamType, Readiness, Value,
};
use shoal_runtime::{CallContext, CallFailure};
use shoal_tests::{free_port, instance, load, runtime_with, Memcached};

const EXAMPLE: &str = "shoal_example_memcached.wasm";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_describes_memcached() {
    let rt = runtime_with(|c| c.max_instances = 16);
    let addon = load(&rt, EXAMPLE).await;
    let m = addon.manifest();
    assert_eq!(m.engine, "memcached");
    assert_eq!(addon.engine(), "memcached");
    assert_eq!(m.versions.len(), 1);
    assert!(m.versions[0].is_default);
    assert_eq!(m.ports[0].name, "client");
    let mem = m
        .parameters
        .iter()
        .find(|p| p.name == "memory-limit")
        .expect("memory-limit parameter");
    assert!(matches!(mem.type_, ParamType::SizeBytes(_)));
    assert_eq!(mem.apply, ApplyMode::Restart);
    assert_eq!(addon.info().api_version, "0.2.0");
    assert_eq!(addon.info().digest.len(), 64);
    let probe = addon.limits(shoal_runtime::wit::Hook::Probe);
    assert_eq!(probe.timeout.as_millis(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_and_metrics_of_a_real_server() {
    let rt = runtime_with(|c| c.max_instances = 16);
    let addon = load(&rt, EXAMPLE).await;
    let mc = Memcached::start();
    let ctx = CallContext::endpoints([mc.addr]);
    let inst = instance("mc-0", mc.addr, &[]);

    let report = addon.call(&ctx).probe(&inst, &[]).await.expect("probe");
    assert_eq!(report.role, "standalone");
    assert!(report.writable);
    assert_eq!(report.health, Health::Healthy);
    assert!(
        report.detail.starts_with("memcached 1.6"),
        "{}",
        report.detail
    );

    let samples = addon.call(&ctx).metrics(&inst).await.expect("metrics");
    let get = |name: &str| {
        samples
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} missing from {samples:?}"))
            .value
    };
    assert_eq!(get("memcached_limit_bytes"), (16u64 << 20) as f64);
    assert!(get("memcached_current_connections") >= 1.0);
    assert!(get("memcached_connections_total") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_probe_keeps_one_connection_a_fresh_probe_opens_one_each_time() {
    let rt = runtime_with(|c| c.max_instances = 16);
    let addon = load(&rt, EXAMPLE).await;
    let mc = Memcached::start();
    let ctx = CallContext::endpoints([mc.addr]);
    let inst = instance("mc-0", mc.addr, &[]);

    // Each `stat` below opens one connection of its own.
    let before = mc.stat("total_connections").expect("stat");
    let live = addon.live(ctx.clone());
    for _ in 0..5 {
        live.call().probe(&inst, &[]).await.expect("live probe");
    }
    let after_live = mc.stat("total_connections").expect("stat");
    assert_eq!(after_live - before, 2, "5 live probes used 1 connection");

    for _ in 0..5 {
        addon
            .call(&ctx)
            .probe(&inst, &[])
            .await
            .expect("fresh probe");
    }
    let after_fresh = mc.stat("total_connections").expect("stat");
    assert_eq!(
        after_fresh - after_live,
        6,
        "5 fresh probes used 5 connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_probe_reconnects_after_the_server_restarts() {
    let rt = runtime_with(|c| c.max_instances = 16);
    let addon = load(&rt, EXAMPLE).await;
    let mc = Memcached::start();
    let addr = mc.addr;
    let ctx = CallContext::endpoints([addr]);
    let inst = instance("mc-0", addr, &[]);
    let live = addon.live(ctx);
    live.call().probe(&inst, &[]).await.expect("first probe");
    drop(mc);
    let err = live.call().probe(&inst, &[]).await.unwrap_err();
    assert!(
        matches!(err.failure, CallFailure::Hook(HookError::Retryable(_))),
        "a stopped server is a retryable failure: {err}"
    );
    assert_eq!(live.generation(), 1, "a hook error keeps the instance");
    let _mc = Memcached::start_on(addr.port());
    let report = live
        .call()
        .probe(&inst, &[])
        .await
        .expect("probe after restart");
    assert!(report.detail.starts_with("memcached"));
    assert_eq!(live.generation(), 1, "same instance, new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_of_a_stopped_server_is_retryable() {
    let rt = runtime_with(|c| c.max_instances = 16);
    let addon = load(&rt, EXAMPLE).await;
    let addr = ([127, 0, 0, 1], free_port()).into();
    let ctx = CallContext::endpoints([addr]);
    let err = addon
        .call(&ctx)
        .probe(&instance("mc-0", addr, &[]), &[])
        .await
        .unwrap_err();
    match err.failure {
        CallFailure::Hook(HookError::Retryable(msg)) => assert!(msg.contains("connect"), "{msg}"),
        other => panic!("expected retryable, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_spec_and_parameters() {
    let rt = runtime_with(|c| c.max_instances = 16);
    let addon = load(&rt, EXAMPLE).await;
    let ctx = CallContext::default();
    let inst = instance("mc-0", ([127, 0, 0, 1], 11999).into(), &[]);
    let params = [Param {
        name: "memory-limit".into(),
        value: Value::Integer(128 << 20),
    }];
    let plan = addon
        .call(&ctx)
        .run_spec(&inst, &[], &params)
        .await
        .expect("run-spec");
    assert_eq!(plan.server.program, "memcached");
    let args = plan.server.args.join(" ");
    assert!(args.contains("-p11999"), "{args}");
    assert!(args.contains("-m128"), "{args}");
    assert!(args.contains("-c1024"), "defaults apply: {args}");
    assert_eq!(plan.readiness, Readiness::TcpPort("client".into()));
    assert!(plan.unprivileged);

    let bad = [
        Param {
            name: "threads".into(),
            value: Value::Integer(1000),
        },
        Param {
            name: "no-such".into(),
            value: Value::Boolean(true),
        },
        Param {
            name: "max-connections".into(),
            value: Value::Text("many".into()),
        },
    ];
    let errors = addon.call(&ctx).validate(&bad).await.expect("validate");
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0].message.contains("outside 1..=64"), "{errors:?}");
    assert_eq!(errors[1].message, "unknown parameter");
    assert!(
        errors[2].message.contains("expected an integer"),
        "{errors:?}"
    );
    assert!(addon.call(&ctx).validate(&params).await.unwrap().is_empty());

    let changes = [ParamChange {
        name: "threads".into(),
        old_value: None,
        new_value: Some(Value::Integer(8)),
    }];
    let classified = addon.call(&ctx).classify(&changes).await.expect("classify");
    assert_eq!(classified[0].effect, ChangeEffect::Restart);

    // Hooks the example does not implement say so.
    let err = addon.call(&ctx).promote(&inst, 2, &[]).await.unwrap_err();
    assert!(err.is_unsupported(), "{err}");
}
