//! `cargo bench -p shoal-runtime --bench runtime`: what the addon runtime costs, measured
//! against baselines run in the same process.
//!
//! * cold compile vs cached load of the example addon;
//! * per-call overhead of a trivial hook (fresh Store + instantiate + call), pooling and
//!   on-demand, and the same hook on a kept (live) instance;
//! * a real probe of memcached: Wasm fresh / Wasm live vs a native Rust client doing the same
//!   round trip (new connection / kept connection);
//! * resident memory of 1,000 live instances (idle, and each holding a memcached connection).
//!
//! Needs the addons built (`scripts/build-addons.sh`) and `memcached` on PATH; the server is
//! started by the test support crate on a free port.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal_runtime::wit::Instance;
use shoal_runtime::{AddonRuntime, CallContext, LoadedAddon, Pooling, RuntimeConfig};
use shoal_tests::{instance, wasm, Memcached};

const ITER: usize = 5_000;
const LIVE: usize = 1_000;

struct Stats {
    median: Duration,
    p99: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Stats {
        median: at(0.5),
        p99: at(0.99),
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn row(name: &str, s: &Stats, baseline: Option<&Stats>) {
    let ratio = baseline
        .map(|b| format!("{:>7.2}x", us(s.median) / us(b.median)))
        .unwrap_or_default();
    println!(
        "  {name:<52} median {:>9.1} µs   p99 {:>9.1} µs {ratio}",
        us(s.median),
        us(s.p99)
    );
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

fn runtime(pooling: Pooling, cache: Option<PathBuf>) -> AddonRuntime {
    let cfg = RuntimeConfig {
        pooling,
        cache_dir: cache,
        max_instances: 2 * LIVE as u32 + 64,
        ..RuntimeConfig::default()
    };
    AddonRuntime::new(cfg).expect("runtime")
}

/// The native baseline: the same `version` round trip the addon's probe does.
fn native_version(conn: &mut BufReader<TcpStream>) -> String {
    conn.get_mut().write_all(b"version\r\n").expect("write");
    let mut line = String::new();
    conn.read_line(&mut line).expect("read");
    line
}

fn native_connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    BufReader::new(s)
}

async fn time_calls<F, Fut>(n: usize, mut f: F) -> Stats
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..n / 10 {
        f().await;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        v.push(t.elapsed());
    }
    stats(v)
}

async fn trivial(addon: &LoadedAddon, ctx: &CallContext, inst: &Instance) {
    // pre-terminate is not implemented by the example: the SDK default answers at once.
    let r = addon.call(ctx).pre_terminate(inst, &[]).await;
    assert!(r.is_err_and(|e| e.is_unsupported()));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let path = wasm("shoal_example_memcached.wasm");
    let bytes = std::fs::read(&path).expect("read addon");
    println!(
        "shoal-runtime benchmark ({} bytes addon, {} iterations)",
        bytes.len(),
        ITER
    );

    // ----- load -----
    let cache = tempfile::tempdir().expect("tempdir");
    let rt = runtime(Pooling::Auto, Some(cache.path().to_path_buf()));
    println!("\nload (pooling allocator: {})", rt.pooling());
    let mut cold = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let c = wasmtime::component::Component::new(rt.engine(), &bytes).expect("compile");
        cold.push(t.elapsed());
        std::hint::black_box(c);
    }
    let cold = stats(cold);
    let first = rt.load_file(&path).await.expect("first load");
    let mut cached = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let a = rt.load_file(&path).await.expect("cached load");
        cached.push(t.elapsed());
        assert_eq!(a.info().code_source, shoal_runtime::CodeSource::Cache);
    }
    let cached = stats(cached);
    row("cold compile (Component::new)", &cold, None);
    row(
        "cached load (verify + mmap + link + manifest call)",
        &cached,
        Some(&cold),
    );
    drop(first);

    // ----- per-call overhead -----
    // Room for a thousand kept connections plus the baselines'.
    let server = Memcached::start_with(&["-c", "4096"]);
    let addr = server.addr;
    let inst = instance("mc-0", addr, &[]);
    let ctx = CallContext::endpoints([addr]);
    println!("\nper-call overhead of a trivial hook (pre-terminate → unsupported)");
    let pooled = rt.load_file(&path).await.expect("load");
    let fresh_pool = time_calls(ITER, || trivial(&pooled, &ctx, &inst)).await;
    let rt_od = runtime(Pooling::Off, None);
    let on_demand = rt_od.load_file(&path).await.expect("load");
    let fresh_od = time_calls(ITER, || trivial(&on_demand, &ctx, &inst)).await;
    let live = pooled.live(ctx.clone());
    let live_trivial = time_calls(ITER, || async {
        let r = live.call().pre_terminate(&inst, &[]).await;
        assert!(r.is_err_and(|e| e.is_unsupported()));
    })
    .await;
    row(
        "fresh Store + instantiate + call, on-demand",
        &fresh_od,
        None,
    );
    row(
        "fresh Store + instantiate + call, pooling",
        &fresh_pool,
        Some(&fresh_od),
    );
    row("live instance call", &live_trivial, Some(&fresh_od));

    // ----- real probe vs native -----
    // Baseline and Wasm calls alternate, so drift in loopback latency on a shared machine
    // hits both sides alike.
    println!("\nprobe of a real memcached (`version` round trip); ratios vs the native client");
    let mut kept = native_connect(addr);
    let live_probe = pooled.live(ctx.clone());
    let (mut native_new, mut wasm_fresh, mut native_kept, mut wasm_live) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..ITER + ITER / 10 {
        let warm = i < ITER / 10;
        let t = Instant::now();
        let mut c = native_connect(addr);
        std::hint::black_box(native_version(&mut c));
        let a = t.elapsed();
        drop(c);
        let t = Instant::now();
        pooled.call(&ctx).probe(&inst, &[]).await.expect("probe");
        let b = t.elapsed();
        let t = Instant::now();
        std::hint::black_box(native_version(&mut kept));
        let c = t.elapsed();
        let t = Instant::now();
        live_probe.call().probe(&inst, &[]).await.expect("probe");
        let d = t.elapsed();
        if !warm {
            native_new.push(a);
            wasm_fresh.push(b);
            native_kept.push(c);
            wasm_live.push(d);
        }
    }
    let (native_new, wasm_fresh) = (stats(native_new), stats(wasm_fresh));
    let (native_kept, wasm_live) = (stats(native_kept), stats(wasm_live));
    row("native, new connection each time", &native_new, None);
    row(
        "Wasm fresh instance (new connection each time)",
        &wasm_fresh,
        Some(&native_new),
    );
    row("native, kept connection", &native_kept, None);
    row(
        "Wasm live instance (kept connection)",
        &wasm_live,
        Some(&native_kept),
    );

    // ----- memory of live instances -----
    // Each measurement gets its own runtime (its own pool), so pages kept resident by one
    // batch do not hide the cost of the next.
    drop((pooled, on_demand, live, live_probe, rt, rt_od));
    println!("\nresident memory of {LIVE} live instances");
    for (label, probe) in [
        ("warm-up (not a result)", false),
        ("idle (one trivial call each)", false),
        ("each holding a memcached connection", true),
    ] {
        let rt = runtime(Pooling::Auto, Some(cache.path().to_path_buf()));
        let addon = rt.load_file(&path).await.expect("load");
        let before = rss_bytes();
        let mut kept = Vec::with_capacity(LIVE);
        for _ in 0..LIVE {
            let l = addon.live(ctx.clone());
            if probe {
                l.call().probe(&inst, &[]).await.expect("probe");
            } else {
                let r = l.call().pre_terminate(&inst, &[]).await;
                assert!(r.is_err_and(|e| e.is_unsupported()));
            }
            kept.push(l);
        }
        let after = rss_bytes();
        println!(
            "  {label:<38} {:>7.1} KiB per instance (pooling: {})",
            after.saturating_sub(before) as f64 / 1024.0 / LIVE as f64,
            rt.pooling()
        );
        if probe {
            let t = Instant::now();
            for l in &kept {
                l.call().probe(&inst, &[]).await.expect("probe");
            }
            let sweep = t.elapsed();
            println!(
                "  one probe sweep over all {LIVE}:          {:>7.1} ms ({:.0} probes/s on this machine)",
                sweep.as_secs_f64() * 1e3,
                LIVE as f64 / sweep.as_secs_f64()
            );
        }
    }
    drop(server);
}
