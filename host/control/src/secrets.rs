//! Cluster credentials: generated at creation, kept in `<home>/secrets/<cluster>.json` with
//! mode 0600 (the directory 0700, the host's alone), never in the state database.
//!
//! A cluster has two accounts:
//! * the **admin** account users get from `shoal cluster connect` (the addon manifest's
//!   `admin-user`: `postgres`, `root`, `default`), provisioned through the addon's
//!   `account-provision` hook and rotated by `shoal cluster password`;
//! * the **platform** account (`shoal`) the addon's hooks use to probe, promote, fence,
//!   replicate and back up. Its password is never shown to users, so nothing a user does with
//!   the accounts they know (changing their password, say) can blind or break the host.
//!
//! Clusters created before the platform account existed have only the admin account; their
//! hooks keep using it.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The platform's own account name on every engine that has accounts.
pub const PLATFORM_USER: &str = "shoal";

/// An account: name and password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, password hidden)", self.user)
    }
}

/// Everything secret about one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSecrets {
    /// The account users get.
    #[serde(flatten)]
    pub admin: Credentials,
    /// The account hooks use (none: a cluster from before it existed; hooks use `admin`).
    #[serde(default)]
    pub platform: Option<Credentials>,
    /// Bumped at every password rotation of the admin account.
    #[serde(default = "first")]
    pub admin_version: u32,
    /// A rotation under way: the new admin password, kept until every instance has it (a
    /// host that stops midway finishes it at its next start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_admin: Option<String>,
}

fn first() -> u32 {
    1
}

impl ClusterSecrets {
    /// New secrets with fresh random passwords.
    pub fn generate(admin_user: &str) -> std::io::Result<ClusterSecrets> {
        Ok(ClusterSecrets {
            admin: Credentials {
                user: admin_user.to_string(),
                password: generate_password()?,
            },
            platform: Some(Credentials {
                user: PLATFORM_USER.to_string(),
                password: generate_password()?,
            }),
            admin_version: 1,
            pending_admin: None,
        })
    }

    /// The account hooks use.
    pub fn platform(&self) -> &Credentials {
        self.platform.as_ref().unwrap_or(&self.admin)
    }
}

fn path(home: &Path, cluster: &str) -> PathBuf {
    home.join("secrets").join(format!("{cluster}.json"))
}

/// A random password of 32 letters and digits (no look-alikes such as 0/O, 1/l).
pub fn generate_password() -> std::io::Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    // Bytes at or above the largest multiple of the alphabet size are rejected: no bias.
    let limit = 256 - 256 % ALPHABET.len();
    let mut out = String::with_capacity(32);
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    while out.len() < 32 {
        let mut raw = [0u8; 64];
        urandom.read_exact(&mut raw)?;
        for b in raw {
            if (b as usize) < limit && out.len() < 32 {
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

/// Store the secrets of `cluster` (0600).
pub fn save(home: &Path, cluster: &str, s: &ClusterSecrets) -> std::io::Result<()> {
    write_private(
        home,
        &path(home, cluster),
        &serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?,
    )
}

/// Write `body` to `p` in `<home>/secrets` (0700): mode 0600, synced, renamed into place.
/// Concurrent writers of one file never share a temporary file: the last rename wins whole.
pub fn write_private(home: &Path, p: &Path, body: &[u8]) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home.join("secrets"))?;
    write_private_at(p, body)
}

/// Write `body` to `p` (its directory made 0700 if missing): mode 0600, synced, renamed into
/// place; concurrent writers never share a temporary file.
pub fn write_private_at(p: &Path, body: &[u8]) -> std::io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    if let Some(parent) = p.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    let tmp = p.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, p)
    };
    let r = write();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// An exclusive lock on `<home>/secrets/<name>.lock` (also against other Shoal hosts sharing
/// the home), held until the returned file is dropped: for read-modify-write of a secrets
/// file.
pub fn lock(home: &Path, name: &str) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home.join("secrets"))?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(home.join("secrets").join(format!("{name}.lock")))?;
    // SAFETY: flock on a descriptor this function owns; blocks until the lock is free.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

/// Everything secret about `cluster`.
pub fn load_all(home: &Path, cluster: &str) -> std::io::Result<ClusterSecrets> {
    let bytes = std::fs::read(path(home, cluster))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

/// The account hooks use for `cluster` (the platform's own).
pub fn load(home: &Path, cluster: &str) -> std::io::Result<Credentials> {
    load_all(home, cluster).map(|s| s.platform().clone())
}

/// The account users of `cluster` get.
pub fn load_admin(home: &Path, cluster: &str) -> std::io::Result<Credentials> {
    load_all(home, cluster).map(|s| s.admin)
}

/// Forget the secrets of `cluster`.
pub fn remove(home: &Path, cluster: &str) {
    let _ = std::fs::remove_file(path(home, cluster));
}

/// Keep the secrets of deleted cluster `cluster` (uid `uid`) beside its kept data:
/// `<home>/secrets/kept/<cluster>-<uid>.json`, out of the way of a new cluster of the name.
pub fn keep(home: &Path, cluster: &str, uid: i64) {
    let dir = home.join("secrets").join("kept");
    if std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .is_ok()
    {
        let _ = std::fs::rename(
            path(home, cluster),
            dir.join(format!("{cluster}-{uid}.json")),
        );
    }
}

/// Forget the kept secrets of deleted cluster `cluster` (uid `uid`).
pub fn remove_kept(home: &Path, cluster: &str, uid: i64) {
    let _ = std::fs::remove_file(
        home.join("secrets")
            .join("kept")
            .join(format!("{cluster}-{uid}.json")),
    );
}

/// Where the source cluster's platform account is kept for physical backup `id`:
/// `<home>/secrets/backups/<id>.json`.
pub fn backup_path(home: &Path, id: &str) -> PathBuf {
    home.join("secrets")
        .join("backups")
        .join(format!("{id}.json"))
}

/// Keep `platform`, the account the hooks of a physical backup's source cluster use, for the
/// life of backup `id` (0600; `secrets/` and `secrets/backups/` 0700). A physical copy carries
/// the source's accounts, so a cluster restored from it first runs with this account (see
/// `ops::create`, a physical backup restored into a quorum). Never in the state database or
/// the repository.
pub fn keep_for_backup(home: &Path, id: &str, platform: &Credentials) -> std::io::Result<()> {
    write_private(
        home,
        &backup_path(home, id),
        &serde_json::to_vec_pretty(platform).map_err(std::io::Error::other)?,
    )
}

/// The source's platform account kept for physical backup `id`.
pub fn kept_for_backup(home: &Path, id: &str) -> std::io::Result<Credentials> {
    let bytes = std::fs::read(backup_path(home, id))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

/// Forget the account kept for backup `id` (the backup is deleted; nothing kept is fine).
pub fn remove_for_backup(home: &Path, id: &str) {
    let _ = std::fs::remove_file(backup_path(home, id));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_with_owner_only_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = ClusterSecrets::generate("postgres").unwrap();
        assert_eq!(s.admin.password.len(), 32);
        assert_ne!(s.admin.password, s.platform().password);
        assert_eq!(s.platform().user, PLATFORM_USER);
        save(dir.path(), "pg", &s).unwrap();
        let mode = std::fs::metadata(path(dir.path(), "pg"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_all(dir.path(), "pg").unwrap(), s);
        assert_eq!(load(dir.path(), "pg").unwrap(), *s.platform());
        assert_eq!(load_admin(dir.path(), "pg").unwrap(), s.admin);
        // No password in debug output.
        assert!(!format!("{s:?}").contains(&s.admin.password));
    }

    #[test]
    fn a_backups_source_account_is_kept_privately_until_the_backup_goes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let cr = ClusterSecrets::generate("root").unwrap().platform().clone();
        keep_for_backup(home, "kv-20260101t000000000z-snapshot", &cr).unwrap();
        let p = backup_path(home, "kv-20260101t000000000z-snapshot");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(&home.join("secrets").join("backups")), 0o700);
        assert_eq!(mode(&home.join("secrets")), 0o700);
        assert_eq!(
            kept_for_backup(home, "kv-20260101t000000000z-snapshot").unwrap(),
            cr
        );
        remove_for_backup(home, "kv-20260101t000000000z-snapshot");
        assert!(!p.exists());
        assert!(kept_for_backup(home, "kv-20260101t000000000z-snapshot").is_err());
    }

    #[test]
    fn a_cluster_from_before_the_platform_account_uses_its_admin_account() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
        std::fs::write(
            path(dir.path(), "old"),
            br#"{"user": "postgres", "password": "pw"}"#,
        )
        .unwrap();
        let s = load_all(dir.path(), "old").unwrap();
        assert_eq!(s.admin_version, 1);
        assert_eq!(load(dir.path(), "old").unwrap().user, "postgres");
    }

    #[test]
    fn concurrent_writers_of_one_file_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|n| {
                let home = home.clone();
                std::thread::spawn(move || {
                    let p = home.join("secrets").join("repos.json");
                    write_private(&home, &p, format!("{n}").as_bytes())
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let left: Vec<_> = std::fs::read_dir(home.join("secrets")).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
    }
}
