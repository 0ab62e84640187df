//! The two kinds of accounts a Shoal cluster has, as an addon sees them.
//!
//! * `instance.credentials` is the **platform account** (`shoal`): the one every hook uses to
//!   probe, promote, fence, replicate and back up. Users never get its password. The addon
//!   creates it when it initialises an instance (initdb's bootstrap user, an init script, a
//!   `user` line in a config file) and keeps it working.
//! * The **admin account** users get (the manifest's `admin-user`) reaches the addon only
//!   through `account-provision`, which the host calls on every instance after it starts and
//!   whenever the password is rotated (`shoal cluster password`). Engines whose accounts
//!   replicate do nothing on read-only instances; engines whose accounts are per server set
//!   it on each one.
//!
//! Nothing a user can do with the accounts they know should blind the host: when the server
//! answers but refuses the platform account (a database superuser changed its password, say),
//! the probe reports it with [`credentials_refused`] — the instance is alive, so the host
//! reports it degraded and never fails it over for that.

use crate::ha::{Health, RoleReport};
use crate::{HookError, HookResult, Instance};

/// The platform account's name (`instance.credentials.username`).
pub fn platform_user(instance: &Instance) -> HookResult<&str> {
    instance
        .credentials
        .as_ref()
        .map(|c| c.username.as_str())
        .ok_or_else(|| HookError::invalid("the host gave no credentials for the platform account"))
}

/// The platform account's password.
pub fn platform_password(instance: &Instance) -> HookResult<&str> {
    instance
        .credentials
        .as_ref()
        .map(|c| c.password.as_str())
        .ok_or_else(|| HookError::invalid("the host gave no credentials for the platform account"))
}

/// The probe report of an instance that answered but refused the platform account's
/// credentials: alive, so not a failover, but `degraded`, with `detail` saying why. The role
/// is the one the host believes it holds; it is reported not writable (the host cannot tell).
pub fn credentials_refused(instance: &Instance, detail: impl std::fmt::Display) -> RoleReport {
    RoleReport {
        role: instance.role.clone().unwrap_or_else(|| "unknown".into()),
        writable: false,
        term: None,
        lag_bytes: None,
        lag_ms: None,
        health: Health::Degraded,
        position: None,
        detail: format!(
            "the server refused the platform account ({detail}); was its password changed \
             inside the engine? Shoal cannot watch or fail over this instance until it works \
             again"
        ),
    }
}

/// Whether an account name is one the host's account hooks accept: 1 to 63 characters,
/// letters, digits, `_`, `-` and `.`, not starting with a digit or `-`.
pub fn valid_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with(|c: char| c.is_ascii_digit() || c == '-')
}

/// Check an account `account-provision` is asked for: a plain name ([`valid_account_name`])
/// that is not the platform's own (users must never be able to use or change that one).
/// The one call with the platform's name comes from the host itself, after a quorum was
/// restored from a physical copy carrying the source's password: an addon with such a
/// method handles it before this check (`addons/etcd`).
pub fn check_user_account(instance: &Instance, name: &str) -> HookResult<()> {
    if !valid_account_name(name) {
        return Err(HookError::invalid(format!(
            "account name {name:?}: 1-63 letters, digits, '_', '-' or '.'"
        )));
    }
    if name == platform_user(instance)? {
        return Err(HookError::invalid(format!(
            "{name} is the platform's own account; users get another"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names() {
        for good in ["postgres", "root", "default", "app_user", "a.b-c"] {
            assert!(valid_account_name(good), "{good}");
        }
        for bad in ["", "1x", "-x", "a b", "a'b", "a;b", &"x".repeat(64)] {
            assert!(!valid_account_name(bad), "{bad}");
        }
    }
}
