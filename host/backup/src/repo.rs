//! Backup repositories: where backup objects live. A local directory or an S3-compatible
//! bucket, both behind `object_store`. Writes become visible only when complete (a staged file
//! renamed into place, a multipart upload completed), so a failed backup leaves no partial
//! object that looks finished.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use serde::{Deserialize, Serialize};

pub use shoal_api::RepoSpec;

/// Why a repository operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RepoError {
    #[error("{0}")]
    Invalid(String),
    #[error("object {0} is missing from the repository")]
    NotFound(String),
    #[error("repository {repo}: {detail}")]
    Failed { repo: String, detail: String },
}

/// An opened repository.
#[derive(Clone)]
pub struct Repository {
    pub name: String,
    pub spec: RepoSpec,
    pub(crate) store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({} = {})", self.name, self.spec.describe())
    }
}

/// What `check` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReport {
    pub write_ms: u64,
    pub read_ms: u64,
    pub delete_ms: u64,
}

impl Repository {
    /// Open `spec` (creating an fs repository's directory). Touches no network.
    pub fn open(name: &str, spec: &RepoSpec) -> Result<Repository, RepoError> {
        spec.validate().map_err(RepoError::Invalid)?;
        let store: Arc<dyn ObjectStore> = match spec {
            RepoSpec::Fs { path } => {
                use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(path)
                    .map_err(|e| {
                        RepoError::Invalid(format!("cannot create {}: {e}", path.display()))
                    })?;
                // Backups hold whole databases: the repository is its owner's alone, however
                // it was made (objects inherit the host's umask, 077 under `shoal serve`).
                let mode = std::fs::metadata(path)
                    .map_err(|e| RepoError::Invalid(format!("{}: {e}", path.display())))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                        .map_err(|e| {
                            RepoError::Invalid(format!(
                                "cannot make {} private (mode 0700): {e}",
                                path.display()
                            ))
                        })?;
                }
                Arc::new(
                    LocalFileSystem::new_with_prefix(path)
                        .map_err(|e| RepoError::Invalid(e.to_string()))?
                        .with_automatic_cleanup(true),
                )
            }
            RepoSpec::S3 {
                endpoint,
                bucket,
                region,
                access_key_id,
                secret_access_key,
                ..
            } => {
                let mut b = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_access_key_id(access_key_id)
                    .with_secret_access_key(secret_access_key)
                    // Fail within seconds when the server is unreachable, not minutes.
                    .with_client_options(
                        ClientOptions::new()
                            .with_connect_timeout(Duration::from_secs(5))
                            .with_timeout(Duration::from_secs(120))
                            .with_allow_http(
                                endpoint
                                    .as_deref()
                                    .is_some_and(|e| e.starts_with("http://")),
                            ),
                    )
                    .with_retry(RetryConfig {
                        max_retries: 3,
                        retry_timeout: Duration::from_secs(15),
                        ..Default::default()
                    });
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
                }
                Arc::new(b.build().map_err(|e| RepoError::Invalid(e.to_string()))?)
            }
        };
        Ok(Repository {
            name: name.to_string(),
            spec: spec.clone(),
            store,
        })
    }

    /// The object path of `key` (under the S3 prefix, if any).
    pub(crate) fn path(&self, key: &str) -> ObjectPath {
        match &self.spec {
            RepoSpec::S3 {
                prefix: Some(p), ..
            } if !p.is_empty() => ObjectPath::from(format!("{}/{key}", p.trim_matches('/'))),
            _ => ObjectPath::from(key),
        }
    }

    pub(crate) fn failed(&self, e: impl std::fmt::Display) -> RepoError {
        RepoError::Failed {
            repo: format!("{} ({})", self.name, self.spec.describe()),
            detail: e.to_string(),
        }
    }

    fn map_err(&self, key: &str, e: object_store::Error) -> RepoError {
        match e {
            object_store::Error::NotFound { .. } => RepoError::NotFound(key.to_string()),
            other => self.failed(other),
        }
    }

    /// Write, read back and delete a small probe object.
    pub async fn check(&self) -> Result<CheckReport, RepoError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = format!(".shoal-check/{nanos}");
        let body = format!("shoal repository check {nanos}");
        let t = Instant::now();
        self.put(&key, Bytes::from(body.clone())).await?;
        let write_ms = t.elapsed().as_millis() as u64;
        let t = Instant::now();
        let back = self.get(&key).await?;
        let read_ms = t.elapsed().as_millis() as u64;
        if back != body.as_bytes() {
            return Err(self.failed(format!(
                "the probe object {key} read back differently than written"
            )));
        }
        let t = Instant::now();
        self.delete(&key).await?;
        Ok(CheckReport {
            write_ms,
            read_ms,
            delete_ms: t.elapsed().as_millis() as u64,
        })
    }

    /// Store a small object whole.
    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), RepoError> {
        self.store
            .put(&self.path(key), body.into())
            .await
            .map(|_| ())
            .map_err(|e| self.map_err(key, e))
    }

    /// Read a small object whole.
    pub async fn get(&self, key: &str) -> Result<Bytes, RepoError> {
        let r = self
            .store
            .get(&self.path(key))
            .await
            .map_err(|e| self.map_err(key, e))?;
        r.bytes().await.map_err(|e| self.map_err(key, e))
    }

    /// Stream an object.
    pub async fn stream(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, RepoError>>, RepoError> {
        let r = self
            .store
            .get(&self.path(key))
            .await
            .map_err(|e| self.map_err(key, e))?;
        let me = self.clone();
        let k = key.to_string();
        Ok(r.into_stream().map_err(move |e| me.map_err(&k, e)).boxed())
    }

    /// Size of an object.
    pub async fn size(&self, key: &str) -> Result<u64, RepoError> {
        self.store
            .head(&self.path(key))
            .await
            .map(|m| m.size)
            .map_err(|e| self.map_err(key, e))
    }

    /// Delete an object (a missing one is not an error).
    pub async fn delete(&self, key: &str) -> Result<(), RepoError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Move an object to `to`, replacing what is there (S3: a server-side copy, then delete).
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), RepoError> {
        self.store
            .rename(&self.path(from), &self.path(to))
            .await
            .map_err(|e| self.map_err(from, e))
    }

    /// Keys under `prefix` (relative to the repository), with their sizes.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, RepoError> {
        let base = self.path("");
        let base = base.as_ref().trim_end_matches('/').to_string();
        let metas: Vec<_> = self
            .store
            .list(Some(&self.path(prefix)))
            .try_collect()
            .await
            .map_err(|e| self.failed(e))?;
        Ok(metas
            .into_iter()
            .map(|m| {
                let full = m.location.as_ref().to_string();
                let key = if base.is_empty() {
                    full
                } else {
                    full.strip_prefix(&format!("{base}/"))
                        .unwrap_or(&full)
                        .to_string()
                };
                (key, m.size)
            })
            .collect())
    }
}
