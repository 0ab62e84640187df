//! The OS user engines run as. When the host runs as root, engines run as an unprivileged
//! user (PostgreSQL refuses root outright); the user is created as a system account if missing.

use serde::{Deserialize, Serialize};

use crate::LocalError;

/// A user and primary group id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of user `name`, if it exists.
pub fn lookup(name: &str) -> Option<RunAs> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam takes a NUL-terminated string and returns static storage or null;
    // the fields are copied out at once.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(RunAs {
                uid: (*pw).pw_uid,
                gid: (*pw).pw_gid,
            })
        }
    }
}

/// The user engines run as: `None` when the host is not root (engines run as the host's own
/// user); otherwise `name`, created as a system user without a home or login shell if missing.
pub fn engine_user(name: &str) -> Result<Option<RunAs>, LocalError> {
    if !is_root() {
        return Ok(None);
    }
    if let Some(u) = lookup(name) {
        if u.uid == 0 {
            return Err(LocalError::User(format!(
                "engine user {name:?} is root; engines must run as an unprivileged user"
            )));
        }
        return Ok(Some(u));
    }
    let out = std::process::Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => lookup(name).map(Some).ok_or_else(|| {
            LocalError::User(format!("useradd created {name:?} but it cannot be found"))
        }),
        Ok(o) => Err(LocalError::User(format!(
            "engines must not run as root and user {name:?} does not exist; creating it failed \
             ({}): {}. Create it yourself: useradd --system --user-group {name}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
        Err(e) => Err(LocalError::User(format!(
            "engines must not run as root and user {name:?} does not exist; cannot run useradd \
             ({e}). Create it yourself: useradd --system --user-group {name}"
        ))),
    }
}

/// Give `path` to `user` (when set).
pub fn chown(path: &std::path::Path, user: Option<RunAs>) -> Result<(), LocalError> {
    if let Some(u) = user {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
            .map_err(|e| LocalError::io(format!("chown {}", path.display()), e))?;
    }
    Ok(())
}
