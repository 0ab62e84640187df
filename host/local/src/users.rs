//! The OS users engines run as. When the host runs as root, engines run as unprivileged
//! users (PostgreSQL refuses root outright), one per cluster, so that one cluster's engine
//! (and a database superuser who makes it run programs or read files) cannot reach another
//! cluster's files; each is created as a system account without a home or login shell.

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
    ensure_user(name).map(Some)
}

/// Whether `name` is a usable system user name (what `useradd` accepts, kept simple).
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// User `name`, created as a system user (own group, no home, no login shell) if missing.
/// Refuses root.
pub fn ensure_user(name: &str) -> Result<RunAs, LocalError> {
    if !valid_user_name(name) {
        return Err(LocalError::User(format!(
            "{name:?} is not a valid user name (lowercase letters, digits, '-', '_'; at most 32)"
        )));
    }
    if let Some(u) = lookup(name) {
        if u.uid == 0 {
            return Err(LocalError::User(format!(
                "engine user {name:?} is root; engines must run as an unprivileged user"
            )));
        }
        return Ok(u);
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
        Ok(o) if o.status.success() => lookup(name).ok_or_else(|| {
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

/// Remove system user `name` and its group (its files must be gone already). A user that
/// does not exist is not an error.
pub fn remove_user(name: &str) -> Result<(), LocalError> {
    if lookup(name).is_none() {
        return Ok(());
    }
    let out = std::process::Command::new("userdel")
        .arg(name)
        .output()
        .map_err(|e| LocalError::User(format!("cannot run userdel {name}: {e}")))?;
    if !out.status.success() && lookup(name).is_some() {
        return Err(LocalError::User(format!(
            "userdel {name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Give `path` to `user` (when set).
pub fn chown(path: &std::path::Path, user: Option<RunAs>) -> Result<(), LocalError> {
    if let Some(u) = user {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
            .map_err(|e| LocalError::io(format!("chown {}", path.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_checked_before_useradd_sees_them() {
        for good in ["shoal", "shoal-c17", "_x", "a_b-c"] {
            assert!(valid_user_name(good), "{good}");
        }
        for bad in ["", "Root", "-x", "1abc", "a b", "a/b", &"x".repeat(33)] {
            assert!(!valid_user_name(bad), "{bad}");
        }
    }
}
