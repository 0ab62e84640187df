//! Cluster credentials: generated at creation, kept in `<home>/secrets/<cluster>.json` with
//! mode 0600 (the directory 0700), never in the state database.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The administrative account of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub user: String,
    pub password: String,
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

/// Store `creds` for `cluster` (0600).
pub fn save(home: &Path, cluster: &str, creds: &Credentials) -> std::io::Result<()> {
    write_private(
        home,
        &path(home, cluster),
        &serde_json::to_vec_pretty(creds).map_err(std::io::Error::other)?,
    )
}

/// Write `body` to `p` in `<home>/secrets` (0700): mode 0600, synced, renamed into place.
pub fn write_private(home: &Path, p: &Path, body: &[u8]) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home.join("secrets"))?;
    let tmp = p.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, p)
}

/// The stored credentials of `cluster`.
pub fn load(home: &Path, cluster: &str) -> std::io::Result<Credentials> {
    let bytes = std::fs::read(path(home, cluster))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

/// Forget the credentials of `cluster`.
pub fn remove(home: &Path, cluster: &str) {
    let _ = std::fs::remove_file(path(home, cluster));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_with_owner_only_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let c = Credentials {
            user: "postgres".into(),
            password: generate_password().unwrap(),
        };
        assert_eq!(c.password.len(), 32);
        save(dir.path(), "pg", &c).unwrap();
        let mode = std::fs::metadata(path(dir.path(), "pg"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(dir.path(), "pg").unwrap(), c);
    }
}
