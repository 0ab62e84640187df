//! The local API server: JSON lines over `<home>/shoal.sock` (mode 0600). Each connection
//! may send several requests; each gets streamed lines (events, log lines) and one final
//! answer. A malformed request gets an error answer, never a dropped connection.

use std::io::SeekFrom;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shoal_api::{ApiError, LogLine, Reply, Request};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::controller::Controller;
use crate::operation::Op;

/// Longest request line accepted.
const MAX_REQUEST: usize = 1 << 20;

/// Why a socket could not be bound.
#[derive(Debug)]
pub enum BindError {
    /// Another daemon answers on it (what it says of itself).
    Busy(shoal_api::ServerInfo),
    Other(String),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::Busy(other) => write!(
                f,
                "another shoal serve (pid {}, host {}) is running on {} (its home is in use)",
                other.pid, other.host_id, other.home
            ),
            BindError::Other(e) => f.write_str(e),
        }
    }
}

/// Bind the socket at `path`: refuse when another daemon answers on it, replace a stale one.
pub async fn bind(path: &Path) -> Result<UnixListener, BindError> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            let info = ask_info(path)
                .await
                .unwrap_or_else(|| shoal_api::ServerInfo {
                    version: "?".into(),
                    home: path.display().to_string(),
                    pid: 0,
                    resource_limits: String::new(),
                    engine_user: String::new(),
                    host_id: "?".into(),
                });
            return Err(BindError::Busy(info));
        }
        std::fs::remove_file(path).map_err(|e| {
            BindError::Other(format!("cannot remove stale {}: {e}", path.display()))
        })?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| BindError::Other(format!("cannot listen on {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| BindError::Other(format!("cannot restrict {}: {e}", path.display())))?;
    Ok(listener)
}

/// What the daemon on `path` says of itself.
async fn ask_info(path: &Path) -> Option<shoal_api::ServerInfo> {
    let stream = UnixStream::connect(path).await.ok()?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_string(&Request::Ping).ok()?;
    line.push('\n');
    w.write_all(line.as_bytes()).await.ok()?;
    let mut answer = String::new();
    let mut reader = BufReader::new(r);
    let read = reader.read_line(&mut answer);
    tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .ok()?
        .ok()?;
    match serde_json::from_str::<Reply>(&answer).ok()? {
        Reply::Ok(v) => serde_json::from_value(v).ok(),
        _ => None,
    }
}

/// A second host on a shared home: once the daemon on the home's socket is gone, take the
/// socket over, so that plain `shoal` commands reach this host.
pub async fn take_over_socket(c: Arc<Controller>, path: std::path::PathBuf) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if UnixStream::connect(&path).await.is_ok() {
            continue;
        }
        match bind(&path).await {
            Ok(l) => {
                tracing::info!("host {} now answers on {}", c.host_id, path.display());
                serve(c, l).await;
                return;
            }
            Err(e) => tracing::debug!("cannot take over {}: {e}", path.display()),
        }
    }
}

/// Serve connections until the listener fails.
pub async fn serve(c: Arc<Controller>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let c = c.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(c, stream).await {
                        tracing::debug!("api connection ended: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::error!("api accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_string(reply).map_err(std::io::Error::other)?;
    line.push('\n');
    w.write_all(line.as_bytes()).await
}

async fn connection(c: Arc<Controller>, stream: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    loop {
        let mut line = String::new();
        let n = (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if n > MAX_REQUEST {
            send(&mut w, &Reply::Error(ApiError::invalid("request too long"))).await?;
            return Ok(());
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(&c, req, &mut w).await,
            Err(e) => Err(ApiError::invalid(format!("malformed request: {e}"))),
        };
        let reply = match reply {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Error(capped(e)),
        };
        send(&mut w, &reply).await?;
    }
}

/// Longest error message sent: inputs are cut where they are quoted; this catches the rest.
const MAX_MESSAGE: usize = 4096;

/// `e` with its message cut to [`MAX_MESSAGE`] bytes (at a character boundary), saying so.
fn capped(mut e: ApiError) -> ApiError {
    if e.message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !e.message.is_char_boundary(end) {
            end -= 1;
        }
        let total = e.message.len();
        e.message.truncate(end);
        e.message
            .push_str(&format!("… (message cut: {total} bytes)"));
    }
    e
}

fn json<T: serde::Serialize>(v: T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(e.to_string()))
}

async fn handle(
    c: &Arc<Controller>,
    req: Request,
    w: &mut tokio::net::unix::OwnedWriteHalf,
) -> Result<serde_json::Value, ApiError> {
    // A change to a cluster is made only by the host that manages it.
    if let Request::Delete { name, .. }
    | Request::Stop { name }
    | Request::Start { name }
    | Request::Restart { name }
    | Request::Scale { name, .. }
    | Request::Switchover { name, .. }
    | Request::Rebuild { name, .. }
    | Request::Recover { name, .. }
    | Request::Password { name, .. }
    | Request::BackupCreate { cluster: name, .. }
    | Request::ScheduleRemove { cluster: name, .. } = &req
    {
        c.require_management(name).await?;
    }
    match req {
        Request::Ping => json(c.info()),
        Request::Engines => json(c.engine_views()),
        Request::Create { spec } => json(c.create(spec).await?),
        Request::Delete { name, purge } => json(c.submit(&name, Op::Delete { purge })?),
        Request::PurgeKept { name } => json(c.purge_kept(&name)?),
        Request::Stop { name } => json(c.submit(&name, Op::Stop {})?),
        Request::Start { name } => json(c.submit(&name, Op::Start {})?),
        Request::Restart { name } => json(c.submit(&name, Op::Restart {})?),
        Request::Scale {
            name,
            replicas,
            dry_run,
        } => json(c.scale(&name, replicas, dry_run)?),
        Request::List => json(c.list().await?),
        Request::Describe { name } => json(c.describe(&name).await?),
        Request::Events { name, limit } => json(c.events(&name, limit.clamp(1, 10_000))?),
        Request::Metrics { name } => json(c.metrics(&name).await?),
        Request::HookStats { engine } => json(c.hook_stats(&engine)?),
        Request::MarkerWrite { name, key, value } => {
            json(c.write_marker(&name, &key, &value).await?)
        }
        Request::MarkerRead {
            name,
            keys,
            instance,
        } => json(c.read_markers(&name, &keys, instance.as_deref()).await?),
        Request::Connect { name } => json(c.connect(&name)?),
        Request::Password { name, password } => json(c.password(&name, password)?),
        Request::Wait { op } => wait(c, op, w).await,
        Request::Switchover { name, to } => json(c.switchover(&name, to.as_deref()).await?),
        Request::Rebuild { name, instance } => json(c.rebuild(&name, &instance)?),
        Request::Recover {
            name,
            force_new_cluster,
        } => json(c.recover(&name, force_new_cluster)?),
        Request::RepoAdd {
            name,
            spec,
            default,
        } => json(c.repos().add(&name, spec, default).await?),
        Request::RepoList => json(c.repos().list()?),
        Request::RepoCheck { name } => json(c.repos().check(&name).await?),
        Request::RepoRemove { name } => json(c.repos().remove(&name)?),
        Request::BackupCreate {
            cluster,
            method,
            repo,
        } => json(
            c.backups()
                .create(&cluster, method.as_deref(), repo.as_deref(), "manual")?,
        ),
        Request::BackupList { cluster } => json(c.backups().list(cluster.as_deref())?),
        Request::BackupDescribe { id } => json(c.backups().describe(&id)?),
        Request::BackupDelete { id } => json(c.backups().delete(&id).await?),
        Request::BackupVerify { id, restore } => {
            let mut v = c.backups().verify(&id).await?;
            if restore {
                let t = restore_test(c, &id, w).await?;
                if !t.passed {
                    return Err(ApiError::failed(format!(
                        "backup {id} does not restore: {}",
                        t.detail
                    )));
                }
                v.restore_test = Some(t);
            }
            json(v)
        }
        Request::Restore {
            name,
            backup,
            replicas,
            to_unix_ms,
        } => json(
            c.backups()
                .restore(&name, &backup, replicas, to_unix_ms)
                .await?,
        ),
        Request::ConfigShow { name } => json(c.configuration().show(&name).await?),
        Request::ConfigSet {
            name,
            set,
            unset,
            dry_run,
        } => {
            c.require_management(&name).await?;
            json(c.configuration().set(&name, set, unset, dry_run).await?)
        }
        Request::ConfigHistory { name } => json(c.configuration().history(&name)?),
        Request::ConfigRollback { name, to, dry_run } => {
            c.require_management(&name).await?;
            json(c.configuration().rollback(&name, to, dry_run).await?)
        }
        Request::Resize {
            name,
            cpu,
            memory,
            dry_run,
        } => {
            c.require_management(&name).await?;
            json(
                c.configuration()
                    .resize(&name, cpu, memory, dry_run)
                    .await?,
            )
        }
        Request::ArchiveSet { cluster, repo, on } => {
            c.require_management(&cluster).await?;
            json(c.archive_set(&cluster, repo.as_deref(), on).await?)
        }
        Request::ArchiveList { cluster } => json(c.archive_list(cluster.as_deref())?),
        Request::ScheduleSet { schedule } => {
            c.require_management(&schedule.cluster).await?;
            json(c.schedules().set(schedule)?)
        }
        Request::ScheduleRemove { cluster, method } => json(
            c.schedules()
                .remove(&cluster, Some(method.as_str()).filter(|m| !m.is_empty()))?,
        ),
        Request::ScheduleList { cluster } => json(c.schedules().list(cluster.as_deref())?),
        Request::Logs {
            name,
            instance,
            lines,
            follow,
        } => logs(c, &name, instance.as_deref(), lines, follow, w).await,
    }
}

/// Run a restore test of backup `id` to its end, streaming the backed-up cluster's events
/// meanwhile. The test runs as its own task: a client that goes away does not leave a
/// throwaway server behind.
async fn restore_test(
    c: &Arc<Controller>,
    id: &str,
    w: &mut tokio::net::unix::OwnedWriteHalf,
) -> Result<shoal_api::RestoreTestView, ApiError> {
    let uid = c
        .db(|s| s.backup(id))?
        .map(|b| b.cluster_uid)
        .ok_or_else(|| ApiError::not_found(format!("no backup with id {id:?}")))?;
    let mut seen = c.db(|s| s.last_event_id())?;
    let (cc, idc) = (c.clone(), id.to_string());
    let mut task = tokio::spawn(async move { cc.restore_test(&idc).await });
    let mut listening = true;
    loop {
        let done = tokio::select! {
            r = &mut task => Some(r),
            _ = tokio::time::sleep(Duration::from_millis(200)) => None,
        };
        if listening {
            for (eid, e) in c.db(|s| s.events_after(uid, seen))? {
                seen = eid;
                if send(w, &Reply::Event(e)).await.is_err() {
                    listening = false;
                    break;
                }
            }
        }
        if let Some(r) = done {
            return r.map_err(|e| ApiError::internal(format!("the restore test failed: {e}")))?;
        }
    }
}

/// Stream the cluster's events from the operation's start until it ends.
async fn wait(
    c: &Arc<Controller>,
    id: i64,
    w: &mut tokio::net::unix::OwnedWriteHalf,
) -> Result<serde_json::Value, ApiError> {
    let op = c.op_view(id)?;
    let uid = c.db(|s| s.op_cluster_uid(id))?;
    let mut seen = c
        .db(|s| s.events(&op.cluster, 10_000))?
        .into_iter()
        .filter(|(_, e)| e.unix_ms < op.created_unix_ms)
        .map(|(id, _)| id)
        .max()
        .unwrap_or(0);
    loop {
        let op = c.op_view(id)?;
        for (eid, e) in c.db(|s| s.events_after(uid, seen))? {
            seen = eid;
            if send(w, &Reply::Event(e)).await.is_err() {
                return Err(ApiError::internal("client went away"));
            }
        }
        if op.state.is_final() {
            return json(op);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// The last lines of instance logs, then (with `follow`) new lines as they come.
async fn logs(
    c: &Arc<Controller>,
    name: &str,
    instance: Option<&str>,
    lines: u32,
    follow: bool,
    w: &mut tokio::net::unix::OwnedWriteHalf,
) -> Result<serde_json::Value, ApiError> {
    let all = c.db(|s| s.instances(name))?;
    if all.is_empty() && c.db(|s| s.cluster(name))?.is_none() {
        return Err(ApiError::not_found(format!("no cluster named {name:?}")));
    }
    let chosen: Vec<_> = match instance {
        Some(n) => {
            let i = all.iter().find(|i| i.name == n).ok_or_else(|| {
                ApiError::not_found(format!("cluster {name} has no instance {n:?}"))
            })?;
            vec![i.clone()]
        }
        None => all,
    };
    let mut offsets = Vec::new();
    for i in &chosen {
        let path = i.log_file();
        let text = tokio::fs::read(&path).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let tail: Vec<&str> = text.lines().collect();
        let start = tail.len().saturating_sub(lines as usize);
        for l in &tail[start..] {
            send(
                w,
                &Reply::Log(LogLine {
                    instance: i.name.clone(),
                    line: (*l).to_string(),
                }),
            )
            .await
            .map_err(|_| ApiError::internal("client went away"))?;
        }
        offsets.push((i.name.clone(), path, text.len() as u64));
    }
    if !follow {
        return json(serde_json::Value::Null);
    }
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        for (inst, path, offset) in offsets.iter_mut() {
            let Ok(mut f) = tokio::fs::File::open(&*path).await else {
                continue;
            };
            let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
            if len < *offset {
                *offset = 0;
            }
            if len == *offset {
                continue;
            }
            if f.seek(SeekFrom::Start(*offset)).await.is_err() {
                continue;
            }
            let mut buf = Vec::new();
            if f.read_to_end(&mut buf).await.is_err() {
                continue;
            }
            // Only whole lines; a partial last line waits for the next round.
            let upto = buf
                .iter()
                .rposition(|b| *b == b'\n')
                .map(|p| p + 1)
                .unwrap_or(0);
            *offset += upto as u64;
            for l in String::from_utf8_lossy(&buf[..upto]).lines() {
                send(
                    w,
                    &Reply::Log(LogLine {
                        instance: inst.clone(),
                        line: l.to_string(),
                    }),
                )
                .await
                .map_err(|_| ApiError::internal("client went away"))?;
            }
        }
    }
}
