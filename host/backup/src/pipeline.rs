//! The object pipeline. Writing: the bytes a backup hook streams are compressed (zstd, with
//! its frame checksum) on a thread of their own while another task hashes (sha256 of the
//! stored bytes) and uploads what is already compressed, so compression, hashing and the
//! engine's own tool run side by side. An object is completed only by [`PendingObject::finish`];
//! anything else (an error, a drop) aborts the upload. Reading: the stored bytes are hashed
//! as they stream and decompressed on a thread; [`Verdict::check`] says, after the reader hit
//! its end, whether the checksum and the size matched.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::buffered::BufWriter;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::io::SyncIoBridge;

use crate::repo::{RepoError, Repository};

/// Chunk read from the hook's stream at a time.
const CHUNK: usize = 256 << 10;
/// Bytes buffered between the stages.
const PIPE: usize = 4 << 20;

/// An object as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredObject {
    /// Key inside the repository.
    pub key: String,
    /// Bytes before compression.
    pub size: u64,
    /// Bytes stored.
    pub stored_size: u64,
    /// sha256 (hex) of the stored bytes.
    pub sha256: String,
}

/// An object being written.
pub struct PendingObject {
    key: String,
    raw: Arc<AtomicU64>,
    stored: Arc<AtomicU64>,
    commit: Option<oneshot::Sender<bool>>,
    upload: tokio::task::JoinHandle<Result<StoredObject, RepoError>>,
}

/// Start writing object `key` of `repo`, compressed at zstd `level`: returns the writer a
/// backup hook's sink wraps, and the pending object.
pub fn write_object(repo: &Repository, key: &str, level: i32) -> (DuplexStream, PendingObject) {
    // A duplex pipe, not a simplex one: dropping the hook's end (a failed call) ends the
    // stream, so the stages below always finish.
    let (into_sink, from_hook) = tokio::io::duplex(PIPE);
    let raw = Arc::new(AtomicU64::new(0));
    let stored = Arc::new(AtomicU64::new(0));
    let (chunks_tx, chunks_rx) = mpsc::channel::<Bytes>(8);
    let (compressed_tx, compressed_rx) = oneshot::channel::<Result<u64, String>>();
    let bridge = SyncIoBridge::new(from_hook);
    let counter = raw.clone();
    std::thread::Builder::new()
        .name("shoal-compress".into())
        .spawn(move || {
            let r = compress(bridge, level, &counter, &chunks_tx);
            let _ = compressed_tx.send(r);
        })
        .ok();
    let (commit_tx, commit_rx) = oneshot::channel::<bool>();
    let repo = repo.clone();
    let k = key.to_string();
    let stored_counter = stored.clone();
    let upload = tokio::spawn(async move {
        upload(repo, k, chunks_rx, compressed_rx, commit_rx, stored_counter).await
    });
    (
        into_sink,
        PendingObject {
            key: key.to_string(),
            raw,
            stored,
            commit: Some(commit_tx),
            upload,
        },
    )
}

/// The compression stage: read the hook's bytes, compress, hand compressed chunks on.
fn compress(
    mut from: SyncIoBridge<DuplexStream>,
    level: i32,
    raw: &AtomicU64,
    out: &mpsc::Sender<Bytes>,
) -> Result<u64, String> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::with_capacity(PIPE), level)
        .map_err(|e| format!("zstd: {e}"))?;
    enc.include_checksum(true)
        .map_err(|e| format!("zstd: {e}"))?;
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading the backup stream: {e}")),
        };
        total += n as u64;
        raw.store(total, Ordering::Relaxed);
        enc.write_all(&buf[..n]).map_err(|e| format!("zstd: {e}"))?;
        if enc.get_ref().len() >= CHUNK * 4 {
            let chunk = std::mem::take(enc.get_mut());
            out.blocking_send(Bytes::from(chunk))
                .map_err(|_| "the upload stopped".to_string())?;
        }
    }
    let rest = enc.finish().map_err(|e| format!("zstd: {e}"))?;
    if !rest.is_empty() {
        out.blocking_send(Bytes::from(rest))
            .map_err(|_| "the upload stopped".to_string())?;
    }
    Ok(total)
}

/// The upload stage: hash and store compressed chunks; complete the object only on commit.
async fn upload(
    repo: Repository,
    key: String,
    mut chunks: mpsc::Receiver<Bytes>,
    compressed: oneshot::Receiver<Result<u64, String>>,
    commit: oneshot::Receiver<bool>,
    stored: Arc<AtomicU64>,
) -> Result<StoredObject, RepoError> {
    let mut w = BufWriter::with_capacity(repo.store.clone(), repo.path(&key), 16 << 20)
        .with_max_concurrency(4);
    let mut hash = Sha256::new();
    let mut total = 0u64;
    let mut failure = None;
    while let Some(chunk) = chunks.recv().await {
        if failure.is_some() {
            continue; // drain, so the compressor is never stuck
        }
        hash.update(&chunk);
        total += chunk.len() as u64;
        stored.store(total, Ordering::Relaxed);
        if let Err(e) = w.put(chunk).await {
            failure = Some(repo.failed(format!("writing {key}: {e}")));
        }
    }
    let size = match compressed.await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            failure.get_or_insert(repo.failed(format!("{key}: {e}")));
            0
        }
        Err(_) => {
            failure.get_or_insert(repo.failed(format!("{key}: the compressor stopped")));
            0
        }
    };
    let committed = commit.await.unwrap_or(false);
    if let Some(f) = failure {
        let _ = w.abort().await;
        return Err(f);
    }
    if !committed {
        let _ = w.abort().await;
        return Err(repo.failed(format!("{key}: abandoned")));
    }
    w.shutdown()
        .await
        .map_err(|e| repo.failed(format!("completing {key}: {e}")))?;
    Ok(StoredObject {
        key,
        size,
        stored_size: total,
        sha256: hex::encode(hash.finalize()),
    })
}

impl PendingObject {
    /// Bytes received so far (before compression).
    pub fn raw_bytes(&self) -> Arc<AtomicU64> {
        self.raw.clone()
    }

    /// Bytes stored so far.
    pub fn stored_bytes(&self) -> Arc<AtomicU64> {
        self.stored.clone()
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Complete the object (after the writer was shut down): waits for the upload.
    pub async fn finish(mut self) -> Result<StoredObject, RepoError> {
        if let Some(c) = self.commit.take() {
            let _ = c.send(true);
        }
        (&mut self.upload).await.unwrap_or_else(|e| {
            Err(RepoError::Failed {
                repo: String::new(),
                detail: format!("upload task: {e}"),
            })
        })
    }

    /// Abandon the object: nothing of it stays in the repository.
    pub async fn abort(mut self) {
        if let Some(c) = self.commit.take() {
            let _ = c.send(false);
        }
        let _ = (&mut self.upload).await;
    }
}

/// Whether a read object was intact; known once its reader reached the end.
pub struct Verdict {
    fetch: tokio::task::JoinHandle<Result<(), RepoError>>,
    decompress: oneshot::Receiver<Result<u64, String>>,
    key: String,
}

impl Verdict {
    /// Ok with the decompressed size, or what was wrong with the object, naming it.
    pub async fn check(self) -> Result<u64, RepoError> {
        let fetched = self
            .fetch
            .await
            .unwrap_or_else(|e| Err(RepoError::Invalid(format!("{}: fetch task: {e}", self.key))));
        let decompressed = self
            .decompress
            .await
            .unwrap_or_else(|_| Err("the decompressor stopped".to_string()));
        fetched?;
        decompressed.map_err(|e| RepoError::Invalid(format!("object {} is damaged: {e}", self.key)))
    }
}

/// Read object `obj` of `repo`: returns its decompressed bytes as a stream and the verdict.
/// The stored bytes are hashed as they arrive; a size or checksum mismatch makes the
/// verdict fail naming the object (and cuts the stream short).
pub async fn read_object(
    repo: &Repository,
    obj: &StoredObject,
) -> Result<(DuplexStream, Verdict), RepoError> {
    let mut stream = repo.stream(&obj.key).await?;
    let (mut compressed_w, compressed_r) = tokio::io::duplex(PIPE);
    let (plain_w, plain_r) = tokio::io::duplex(PIPE);
    let expect = obj.clone();
    let fetch = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut total = 0u64;
        let mut reader_gone = false;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?; // dropping the writer ends the decompressor's input
            hash.update(&chunk);
            total += chunk.len() as u64;
            // If the reader stopped early, still hash the rest for the verdict.
            if !reader_gone && compressed_w.write_all(&chunk).await.is_err() {
                reader_gone = true;
            }
        }
        drop(compressed_w);
        let digest = hex::encode(hash.finalize());
        if total != expect.stored_size || digest != expect.sha256 {
            return Err(RepoError::Invalid(format!(
                "object {} is damaged: {total} bytes with sha256 {digest}, the manifest \
                 records {} bytes with sha256 {}",
                expect.key, expect.stored_size, expect.sha256
            )));
        }
        Ok(())
    });
    let (done_tx, done_rx) = oneshot::channel();
    let from = SyncIoBridge::new(compressed_r);
    let mut to = SyncIoBridge::new(plain_w);
    std::thread::Builder::new()
        .name("shoal-decompress".into())
        .spawn(move || {
            let r = (|| {
                let mut dec =
                    zstd::stream::read::Decoder::new(from).map_err(|e| format!("zstd: {e}"))?;
                let mut buf = vec![0u8; CHUNK];
                let mut total = 0u64;
                let mut reader_gone = false;
                loop {
                    let n = match dec.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(format!("zstd: {e}")),
                    };
                    total += n as u64;
                    if !reader_gone && to.write_all(&buf[..n]).is_err() {
                        reader_gone = true;
                    }
                }
                drop(to);
                Ok(total)
            })();
            let _ = done_tx.send(r);
        })
        .map_err(|e| repo.failed(format!("cannot start a thread: {e}")))?;
    Ok((
        plain_r,
        Verdict {
            fetch,
            decompress: done_rx,
            key: obj.key.clone(),
        },
    ))
}

/// Read `obj` whole, checking its checksum and its compression frames; the bytes go nowhere.
pub async fn verify_object(repo: &Repository, obj: &StoredObject) -> Result<u64, RepoError> {
    let (mut r, verdict) = read_object(repo, obj).await?;
    let sink = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
    let size = verdict.check().await?;
    sink.map_err(|e| repo.failed(format!("reading {}: {e}", obj.key)))?;
    if size != obj.size {
        return Err(RepoError::Invalid(format!(
            "object {} is damaged: it decompresses to {size} bytes, the manifest records {}",
            obj.key, obj.size
        )));
    }
    Ok(size)
}
