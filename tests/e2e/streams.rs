//! Backup and restore streams: bytes piped between a granted host program and a host sink or
//! source, bytes written by the guest itself, progress reports, and failures of the stream.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use shoal_runtime::wit::{BackupInfo, Param, Value};
use shoal_runtime::{
    AddonRuntime, CallContext, CallFailure, Grants, HostSink, HostSource, LoadedAddon, Progress,
};
use shoal_tests::{instance, load, runtime_with};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Counts bytes written and checks they are all zero.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>, Arc<AtomicU64>);

impl AsyncWrite for Counter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.fetch_add(buf.len() as u64, Ordering::Relaxed);
        let nonzero = buf.iter().filter(|b| **b != 0).count() as u64;
        self.1.fetch_add(nonzero, Ordering::Relaxed);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Produces `left` zero bytes, then fails if `fail` is set (a repository going away).
struct Zeros {
    left: u64,
    fail: bool,
}

impl AsyncRead for Zeros {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.left == 0 {
            if self.fail {
                return Poll::Ready(Err(std::io::Error::other("repository went away")));
            }
            return Poll::Ready(Ok(()));
        }
        let n = (buf.remaining() as u64).min(self.left) as usize;
        buf.put_slice(&vec![0u8; n]);
        self.left -= n as u64;
        Poll::Ready(Ok(()))
    }
}

fn granted() -> AddonRuntime {
    runtime_with(|c| {
        c.max_instances = 16;
        let mut g = Grants::default();
        g.exec.insert("head".into(), None);
        g.exec.insert("wc".into(), None);
        g.exec_search_path = vec![PathBuf::from("/usr/bin"), PathBuf::from("/bin")];
        c.grants.insert("hostile".into(), g);
    })
}

fn size(n: i64) -> Vec<Param> {
    vec![Param {
        name: "size".into(),
        value: Value::Integer(n),
    }]
}

async fn addon(rt: &AddonRuntime) -> LoadedAddon {
    load(rt, "shoal_fixture_hostile.wasm").await
}

fn info(method: &str, bytes: u64) -> BackupInfo {
    BackupInfo {
        method: method.into(),
        engine_version: "1".into(),
        start_position: None,
        end_position: None,
        labels: vec![("bytes".into(), bytes.to_string())],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_output_streams_into_the_sink_on_the_host() {
    let rt = granted();
    let addon = addon(&rt).await;
    let grants = addon.exec_grants();
    assert!(
        grants.iter().any(|(n, p)| n == "head" && p.is_some()),
        "{grants:?}"
    );
    let inst = instance("backup", ([127, 0, 0, 1], 9).into(), &[]);
    let counter = Counter::default();
    let total: u64 = 64 << 20; // four times the addon's 16 MiB memory cap
    let ctx = CallContext::default();
    let (info, sink) = addon
        .call(&ctx)
        .backup(
            &inst,
            "exec-stream",
            &size(total as i64),
            HostSink::new(counter.clone()),
        )
        .await
        .expect("backup");
    assert_eq!(counter.0.load(Ordering::Relaxed), total);
    assert_eq!(
        counter.1.load(Ordering::Relaxed),
        0,
        "bytes arrive unchanged"
    );
    assert_eq!(sink.bytes_written(), total);
    assert_eq!(info.labels, vec![("bytes".to_string(), total.to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_writes_reach_the_sink_with_progress() {
    let rt = granted();
    let addon = addon(&rt).await;
    let inst = instance("backup", ([127, 0, 0, 1], 9).into(), &[]);
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let sink_seen = seen.clone();
    let ctx = CallContext {
        progress: Some(Arc::new(move |p: &Progress| {
            sink_seen.lock().unwrap().push(p.clone())
        })),
        ..Default::default()
    };
    let counter = Counter::default();
    let total = 4u64 << 20;
    let (_, sink) = addon
        .call(&ctx)
        .backup(
            &inst,
            "direct",
            &size(total as i64),
            HostSink::new(counter.clone()),
        )
        .await
        .expect("backup");
    assert_eq!(sink.bytes_written(), total);
    let seen = seen.lock().unwrap();
    // 64 reports sent; the host forwards at most one per 100 ms and always the last one.
    assert!(
        !seen.is_empty() && seen.len() <= 64,
        "{} reports",
        seen.len()
    );
    let last = seen.last().unwrap();
    assert_eq!((last.done, last.total), (total, Some(total)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_pipes_the_source_into_a_granted_program() {
    let rt = granted();
    let addon = addon(&rt).await;
    let inst = instance("restore", ([127, 0, 0, 1], 9).into(), &[]);
    let ctx = CallContext::default();
    let total = 40u64 << 20;
    let read = addon
        .call(&ctx)
        .restore(
            &inst,
            &[],
            &info("exec-stream", total),
            HostSource::new(Zeros {
                left: total,
                fail: false,
            }),
            false,
        )
        .await
        .expect("restore");
    assert_eq!(read, total);

    // A cut-off stream is caught by the addon's own check.
    let err = addon
        .call(&ctx)
        .restore(
            &inst,
            &[],
            &info("exec-stream", total),
            HostSource::new(Zeros {
                left: total - 1,
                fail: false,
            }),
            false,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("backup had"), "{err}");

    // A failing source fails the restore instead of feeding the program a short stream.
    let err = addon
        .call(&ctx)
        .restore(
            &inst,
            &[],
            &info("exec-stream", total),
            HostSource::new(Zeros {
                left: 1 << 20,
                fail: true,
            }),
            false,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("repository went away"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_through_guest_reads() {
    let rt = granted();
    let addon = addon(&rt).await;
    let inst = instance("restore", ([127, 0, 0, 1], 9).into(), &[]);
    let ctx = CallContext::default();
    let total = 3u64 << 20;
    let read = addon
        .call(&ctx)
        .restore(
            &inst,
            &[],
            &info("direct", total),
            HostSource::new(Zeros {
                left: total,
                fail: false,
            }),
            false,
        )
        .await
        .expect("restore");
    assert_eq!(read, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_operator_grant_exec_is_denied() {
    let rt = runtime_with(|c| c.max_instances = 16);
    let addon = addon(&rt).await;
    let inst = instance("backup", ([127, 0, 0, 1], 9).into(), &[]);
    let ctx = CallContext::default();
    let err = addon
        .call(&ctx)
        .backup(
            &inst,
            "exec-stream",
            &size(1024),
            HostSink::new(Counter::default()),
        )
        .await
        .unwrap_err();
    match err.failure {
        CallFailure::Denied { denials, .. } => {
            assert!(denials[0].contains("\"head\""), "{denials:?}");
        }
        other => panic!("expected a denial, got {other}"),
    }
}

/// Accepts `limit` bytes, then fails every write (a full disk, a dropped connection).
struct FailsAfter {
    left: u64,
}

impl AsyncWrite for FailsAfter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.left == 0 {
            return Poll::Ready(Err(std::io::Error::other("disk full")));
        }
        let n = (buf.len() as u64).min(self.left) as usize;
        self.left -= n as u64;
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_fails_the_backup_even_if_the_addon_ignores_it() {
    let rt = granted();
    let addon = addon(&rt).await;
    let inst = instance("backup", ([127, 0, 0, 1], 9).into(), &[]);
    let ctx = CallContext::default();
    let err = addon
        .call(&ctx)
        .backup(
            &inst,
            "ignore-errors",
            &size(1 << 20),
            HostSink::new(FailsAfter { left: 100_000 }),
        )
        .await
        .unwrap_err();
    match err.failure {
        CallFailure::Stream(m) => assert!(m.contains("disk full"), "{m}"),
        other => panic!("expected a stream failure, got {other}"),
    }
    // Piped exec output into a failing sink fails too.
    let err = addon
        .call(&ctx)
        .backup(
            &inst,
            "exec-stream",
            &size(8 << 20),
            HostSink::new(FailsAfter { left: 100_000 }),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
}
