//! The sandbox against a hostile addon: each misbehaviour fails its own call with the right
//! typed error within the hook's deadline (plus slack for a loaded machine), the host stays
//! up, and the next normal call on the same runtime succeeds.

use std::time::{Duration, Instant};

use shoal_runtime::wit::Instance;
use shoal_runtime::{
    AddonRuntime, CallContext, CallError, CallFailure, DeadlineCause, LoadedAddon,
};
use shoal_tests::{instance, load, runtime_with, Memcached, SilentServer};

const HOSTILE: &str = "shoal_fixture_hostile.wasm";
/// The fixture declares a 300 ms probe deadline.
const PROBE_DEADLINE: Duration = Duration::from_millis(300);
/// Slack for a busy 2-core machine. Generous on purpose: this checks that the call is stopped
/// at all, not how fast.
const SLACK: Duration = Duration::from_secs(3);

async fn hostile() -> (AddonRuntime, LoadedAddon) {
    let rt = runtime_with(|c| {
        c.max_instances = 64;
        c.log_budget_bytes = 64 << 10;
    });
    let addon = load(&rt, HOSTILE).await;
    (rt, addon)
}

fn mode(name: &str) -> Instance {
    instance(name, ([127, 0, 0, 1], 9).into(), &[])
}

/// The next ordinary call on the same addon and runtime works.
async fn still_works(addon: &LoadedAddon) {
    let ctx = CallContext::default();
    let report = addon
        .call(&ctx)
        .probe(&mode("ok"), &[])
        .await
        .expect("a normal call after the hostile one");
    assert_eq!(report.detail, "fine");
}

async fn probe_err(
    addon: &LoadedAddon,
    ctx: &CallContext,
    inst: &Instance,
) -> (CallError, Duration) {
    let started = Instant::now();
    let result = addon.call(ctx).probe(inst, &[]).await;
    let elapsed = started.elapsed();
    match result {
        Ok(r) => panic!("{} should have failed, returned {r:?}", inst.name),
        Err(e) => (e, elapsed),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_loop_is_stopped_by_the_cpu_deadline() {
    let (_rt, addon) = hostile().await;
    let (err, elapsed) = probe_err(&addon, &CallContext::default(), &mode("endless-loop")).await;
    match err.failure {
        CallFailure::Deadline { limit, cause } => {
            assert_eq!(limit, PROBE_DEADLINE);
            assert_eq!(cause, DeadlineCause::Epoch);
        }
        other => panic!("expected a CPU deadline, got {other}"),
    }
    assert!(
        elapsed >= PROBE_DEADLINE,
        "stopped before its deadline: {elapsed:?}"
    );
    assert!(
        elapsed < PROBE_DEADLINE + SLACK,
        "stopped late: {elapsed:?}"
    );
    assert!(
        err.to_string().contains("hostile"),
        "error names the addon: {err}"
    );
    still_works(&addon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_hits_the_memory_cap() {
    let (_rt, addon) = hostile().await;
    let (err, elapsed) = probe_err(&addon, &CallContext::default(), &mode("memory-bomb")).await;
    match err.failure {
        CallFailure::OutOfMemory { limit, requested } => {
            assert_eq!(limit, 16 << 20);
            assert!(requested > limit);
        }
        other => panic!("expected out of memory, got {other}"),
    }
    assert!(elapsed < PROBE_DEADLINE + SLACK);
    still_works(&addon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_port_not_granted_is_denied_before_any_packet() {
    let (_rt, addon) = hostile().await;
    let forbidden = SilentServer::start();
    let granted = SilentServer::start();
    let inst = instance(
        "connect-denied",
        granted.addr,
        &[("forbidden", forbidden.addr.port())],
    );
    let ctx = CallContext::endpoints([granted.addr]);
    let (err, _) = probe_err(&addon, &ctx, &inst).await;
    match &err.failure {
        CallFailure::Denied { denials, guest } => {
            let wanted = format!("TCP connect to {}", forbidden.addr);
            assert!(
                denials.iter().any(|d| d == &wanted),
                "denials {denials:?} lack {wanted:?}"
            );
            assert!(
                guest.as_deref().unwrap_or("").contains("denied"),
                "{guest:?}"
            );
        }
        other => panic!("expected a denial, got {other}"),
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        forbidden.accepted(),
        0,
        "the forbidden listener saw a connection"
    );
    still_works(&addon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_blocked_on_a_silent_server_is_stopped_by_the_wall_clock() {
    let (_rt, addon) = hostile().await;
    let silent = SilentServer::start();
    let inst = instance("blocked-read", silent.addr, &[]);
    let ctx = CallContext::endpoints([silent.addr]);
    let (err, elapsed) = probe_err(&addon, &ctx, &inst).await;
    match err.failure {
        CallFailure::Deadline { limit, cause } => {
            assert_eq!(limit, PROBE_DEADLINE);
            assert_eq!(cause, DeadlineCause::WallClock);
        }
        other => panic!("expected a wall-clock deadline, got {other}"),
    }
    assert_eq!(silent.accepted(), 1, "the granted connect went through");
    assert!(elapsed >= PROBE_DEADLINE);
    assert!(
        elapsed < PROBE_DEADLINE + SLACK,
        "stopped late: {elapsed:?}"
    );
    still_works(&addon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_outside_the_preopen_are_refused() {
    let (_rt, addon) = hostile().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::write(dir.path().join("secret.txt"), "TOP-SECRET-CONTENT").expect("write");
    std::fs::write(data.join("inside.txt"), "inside-ok").expect("write");
    std::os::unix::fs::symlink("../secret.txt", data.join("link-to-secret")).expect("symlink");
    std::os::unix::fs::symlink("..", data.join("escape")).expect("symlink");

    let ctx = CallContext::default().preopen(&data, "/data", false);
    let mut inst = mode("read-outside");
    inst.data_dir = Some("/data".into());
    let (err, _) = probe_err(&addon, &ctx, &inst).await;
    let text = err.to_string();
    assert!(
        !text.contains("TOP-SECRET-CONTENT"),
        "secret leaked: {text}"
    );
    match err.failure {
        CallFailure::Hook(shoal_runtime::wit::HookError::Failed(msg)) => {
            assert!(
                msg.contains("every read outside the preopen was refused"),
                "{msg}"
            );
            assert!(
                msg.contains("inside-ok"),
                "reading inside the preopen works: {msg}"
            );
        }
        other => panic!("expected the addon's own failure, got {other}"),
    }
    still_works(&addon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_of_an_undeclared_binary_is_denied() {
    let (_rt, addon) = hostile().await;
    let (err, _) = probe_err(&addon, &CallContext::default(), &mode("exec-undeclared")).await;
    match &err.failure {
        CallFailure::Denied { denials, .. } => {
            assert!(denials[0].contains("\"bash\""), "{denials:?}");
            assert!(denials[0].contains("not declared"), "{denials:?}");
        }
        other => panic!("expected a denial, got {other}"),
    }
    still_works(&addon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_of_a_declared_but_not_granted_binary_is_denied() {
    let (_rt, addon) = hostile().await;
    assert!(addon.exec_not_granted().contains(&"sh".to_string()));
    let (err, _) = probe_err(&addon, &CallContext::default(), &mode("exec-not-granted")).await;
    match &err.failure {
        CallFailure::Denied { denials, .. } => {
            assert!(denials[0].contains("\"sh\""), "{denials:?}");
            assert!(
                denials[0].contains("not granted by the operator"),
                "{denials:?}"
            );
        }
        other => panic!("expected a denial, got {other}"),
    }
    still_works(&addon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_reported_with_its_message() {
    let (_rt, addon) = hostile().await;
    let (err, _) = probe_err(&addon, &CallContext::default(), &mode("panic")).await;
    match err.failure {
        CallFailure::Panic(msg) => {
            assert!(msg.contains("hostile fixture panicked on purpose"), "{msg}");
            assert!(msg.contains("src/lib.rs"), "location included: {msg}");
        }
        other => panic!("expected a panic, got {other}"),
    }
    still_works(&addon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_overflow_is_a_trap() {
    let (_rt, addon) = hostile().await;
    let (err, _) = probe_err(&addon, &CallContext::default(), &mode("stack-overflow")).await;
    match err.failure {
        // A Rust guest's stack lives in linear memory; overflowing it runs off the bottom of
        // memory. The message names the trap and the guest function.
        CallFailure::Trap(msg) => {
            assert!(msg.contains("out of bounds memory access"), "{msg}");
            assert!(msg.contains("shoal_fixture_hostile::recurse"), "{msg}");
        }
        other => panic!("expected a trap, got {other}"),
    }
    still_works(&addon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_log_output_is_capped_and_counted() {
    let (_rt, addon) = hostile().await;
    let ctx = CallContext::default();
    let caller = addon.call(&ctx);
    let samples = caller
        .metrics(&mode("log-flood"))
        .await
        .expect("a chatty call still completes");
    assert_eq!(samples[0].name, "flooded");
    let stats = caller.last_stats().expect("stats");
    assert!(stats.logs.emitted_bytes <= 64 << 10, "{stats:?}");
    assert!(stats.logs.dropped_lines > 9_000, "{stats:?}");
    assert!(stats.logs.dropped_bytes > 10_000_000, "{stats:?}");
    still_works(&addon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_call_does_not_disturb_concurrent_calls() {
    let (_rt, addon) = hostile().await;
    let hog = {
        let addon = addon.clone();
        tokio::spawn(async move {
            let ctx = CallContext::default();
            addon.call(&ctx).probe(&mode("endless-loop"), &[]).await
        })
    };
    let mut ok = Vec::new();
    for _ in 0..20 {
        let addon = addon.clone();
        ok.push(tokio::spawn(async move {
            let ctx = CallContext::default();
            addon.call(&ctx).probe(&mode("ok"), &[]).await
        }));
    }
    for h in ok {
        let r = h.await.expect("join");
        assert_eq!(r.expect("normal call").detail, "fine");
    }
    let hog = hog.await.expect("join");
    assert!(matches!(
        hog.map_err(|e| e.failure),
        Err(CallFailure::Deadline { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_instances_keep_state_and_are_recycled_after_a_trap() {
    let (_rt, addon) = hostile().await;
    let live = addon.live(CallContext::default());
    let caller = live.call();
    for expected in ["call 1", "call 2", "call 3"] {
        let r = caller.probe(&mode("counter"), &[]).await.expect("counter");
        assert_eq!(r.detail, expected);
    }
    assert_eq!(live.generation(), 1);
    // A hook error keeps the store.
    let err = caller.probe(&mode("no-such-mode"), &[]).await.unwrap_err();
    assert!(matches!(err.failure, CallFailure::Hook(_)));
    assert_eq!(
        caller.probe(&mode("counter"), &[]).await.unwrap().detail,
        "call 5"
    );
    // A panic drops it; the next call starts over on a new Store.
    let err = caller.probe(&mode("panic"), &[]).await.unwrap_err();
    assert!(matches!(err.failure, CallFailure::Panic(_)), "{err}");
    assert!(!live.is_warm().await);
    assert_eq!(
        caller.probe(&mode("counter"), &[]).await.unwrap().detail,
        "call 1"
    );
    assert_eq!(live.generation(), 2);
    // So does a deadline.
    let err = caller.probe(&mode("endless-loop"), &[]).await.unwrap_err();
    assert!(matches!(err.failure, CallFailure::Deadline { .. }), "{err}");
    assert_eq!(
        caller.probe(&mode("counter"), &[]).await.unwrap().detail,
        "call 1"
    );
    assert_eq!(live.generation(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_instances_are_recycled_after_n_calls() {
    let rt = runtime_with(|c| {
        c.max_instances = 16;
        c.live_recycle_calls = 3;
    });
    let addon = load(&rt, HOSTILE).await;
    let live = addon.live(CallContext::default());
    let caller = live.call();
    let mut seen = Vec::new();
    for _ in 0..7 {
        seen.push(caller.probe(&mode("counter"), &[]).await.unwrap().detail);
    }
    assert_eq!(
        seen,
        ["call 1", "call 2", "call 3", "call 1", "call 2", "call 3", "call 1"]
    );
    assert_eq!(live.generation(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_preopen_directory_is_a_setup_error() {
    let (_rt, addon) = hostile().await;
    let ctx = CallContext::default().preopen("/nonexistent/shoal-test", "/data", true);
    let (err, _) = probe_err(&addon, &ctx, &mode("ok")).await;
    match err.failure {
        CallFailure::Setup(msg) => assert!(msg.contains("/nonexistent/shoal-test"), "{msg}"),
        other => panic!("expected a setup error, got {other}"),
    }
    still_works(&addon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_addon_still_probes_memcached_after_hostile_calls() {
    let rt = runtime_with(|c| c.max_instances = 32);
    let hostile = load(&rt, HOSTILE).await;
    let example = load(&rt, "shoal_example_memcached.wasm").await;
    for m in ["endless-loop", "memory-bomb", "panic", "stack-overflow"] {
        let (_, _) = probe_err(&hostile, &CallContext::default(), &mode(m)).await;
    }
    let mc = Memcached::start();
    let ctx = CallContext::endpoints([mc.addr]);
    let report = example
        .call(&ctx)
        .probe(&instance("mc-0", mc.addr, &[]), &[])
        .await
        .expect("memcached probe");
    assert!(report.detail.starts_with("memcached 1."), "{report:?}");
}

/// Processes whose command line is exactly `sleep <arg>`.
fn sleepers(arg: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| c == format!("sleep\0{arg}\0").as_bytes())
        .count()
}

fn with_sleep_granted(c: &mut shoal_runtime::RuntimeConfig) {
    c.max_instances = 16;
    let mut g = shoal_runtime::Grants::default();
    g.exec.insert("sleep".into(), None);
    g.exec_search_path = vec!["/usr/bin".into(), "/bin".into()];
    c.grants.insert("hostile".into(), g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_past_its_own_timeout_is_killed() {
    let rt = runtime_with(with_sleep_granted);
    let addon = load(&rt, HOSTILE).await;
    let (err, elapsed) = probe_err(&addon, &CallContext::default(), &mode("exec-timeout")).await;
    match err.failure {
        CallFailure::Hook(shoal_runtime::wit::HookError::Retryable(m)) => {
            assert!(m.contains("timed out"), "{m}")
        }
        other => panic!("expected the exec timeout as a retryable error, got {other}"),
    }
    assert!(elapsed < PROBE_DEADLINE + SLACK);
    assert_eq!(sleepers("31.337"), 0, "the timed-out child is gone");
    still_works(&addon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_is_capped_by_the_hook_deadline() {
    let rt = runtime_with(with_sleep_granted);
    let addon = load(&rt, HOSTILE).await;
    let (err, elapsed) =
        probe_err(&addon, &CallContext::default(), &mode("exec-outlives-call")).await;
    // The child is killed when the hook's deadline comes; the call fails at its deadline,
    // either inside the addon (the exec timed out) or at its next instruction (the epoch).
    match err.failure {
        CallFailure::Hook(shoal_runtime::wit::HookError::Retryable(m)) => {
            assert!(m.contains("timed out"), "{m}")
        }
        CallFailure::Deadline { .. } => {}
        other => panic!("expected the capped exec to end the call at its deadline, got {other}"),
    }
    assert!(elapsed >= PROBE_DEADLINE, "{elapsed:?}");
    assert!(elapsed < PROBE_DEADLINE + SLACK, "{elapsed:?}");
    assert_eq!(sleepers("31.338"), 0, "the child is gone");
    still_works(&addon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_kills_its_exec_child() {
    let rt = runtime_with(with_sleep_granted);
    let addon = load(&rt, HOSTILE).await;
    let mut inst = mode("exec-outlives-call");
    inst.cluster = "cancelled".into();
    let ctx = CallContext::default();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(100),
        addon.call(&ctx).probe(&inst, &[]),
    )
    .await;
    assert!(cancelled.is_err(), "the caller gave up first");
    let until = Instant::now() + Duration::from_secs(2);
    while sleepers("31.338") > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        sleepers("31.338"),
        0,
        "the child died with the cancelled call"
    );
    still_works(&addon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_instance_pool_answers_busy_and_recovers() {
    let rt = runtime_with(|c| c.max_instances = 2);
    if !rt.pooling() {
        // On-demand allocation has no pool to fill; nothing to test on this machine.
        return;
    }
    let addon = load(&rt, HOSTILE).await;
    let first = addon.live(CallContext::default());
    let second = addon.live(CallContext::default());
    first
        .call()
        .probe(&mode("ok"), &[])
        .await
        .expect("first slot");
    second
        .call()
        .probe(&mode("ok"), &[])
        .await
        .expect("second slot");
    let (err, _) = probe_err(&addon, &CallContext::default(), &mode("ok")).await;
    match err.failure {
        CallFailure::Busy(m) => assert!(m.contains("max_instances"), "{m}"),
        other => panic!("expected busy, got {other}"),
    }
    drop(first);
    still_works(&addon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_addon_cannot_hoard_host_file_descriptors() {
    let (_rt, addon) = hostile().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("inside.txt"), "x").expect("write");
    let ctx = CallContext::default().preopen(dir.path(), "/data", false);
    let mut inst = mode("fd-hoard");
    inst.data_dir = Some("/data".into());
    let (err, _) = probe_err(&addon, &ctx, &inst).await;
    // Either the addon sees the refusal, or WASI traps when the table is full; both stop it
    // below the cap.
    let msg = err.to_string();
    let opened: usize = match &err.failure {
        CallFailure::Trap(m) => {
            assert!(m.contains("too many open files, sockets or streams"), "{m}");
            0
        }
        _ => msg
            .split("opened ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {msg}")),
    };
    assert!(opened < 1024, "the per-instance resource cap held: {msg}");
    still_works(&addon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_variables_for_host_programs_are_denied() {
    let rt = runtime_with(with_sleep_granted);
    let addon = load(&rt, HOSTILE).await;
    let (err, _) = probe_err(&addon, &CallContext::default(), &mode("exec-ld-preload")).await;
    match &err.failure {
        CallFailure::Denied { denials, .. } => {
            assert!(denials[0].contains("LD_PRELOAD"), "{denials:?}")
        }
        other => panic!("expected a denial, got {other}"),
    }
    still_works(&addon).await;
}

/// On a single-threaded executor, a computing addon must not starve other calls: guest code
/// yields at every epoch tick until its (long) deadline.
#[tokio::test(flavor = "current_thread")]
async fn a_computing_addon_does_not_starve_other_calls() {
    let (_rt, addon) = hostile().await;
    let hog_addon = addon.clone();
    let hog = tokio::spawn(async move {
        let ctx = CallContext::default();
        hog_addon.call(&ctx).metrics(&mode("endless-loop")).await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    still_works(&addon).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a normal call waited {:?} behind a 30 s computation",
        started.elapsed()
    );
    hog.abort();
}
