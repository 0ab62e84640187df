//! The account users get, rotated on request (`shoal cluster password`): the new password is
//! kept as pending in the cluster's secrets, set on every running instance through the
//! addon's `account-provision` (the writable one first: where accounts replicate, that is the
//! one that counts), and only then becomes the password `connect` hands out. A rotation a
//! host restart interrupted is finished at the next start (the pending password is still
//! there). The platform's own account is never rotated this way and never shown.

use std::sync::Arc;

use shoal_api::{ApiError, OpView};

use crate::controller::Controller;
use crate::error::{At, ControlError};
use crate::events::Level;
use crate::primary_replica::{self, Sequence};
use crate::secrets;
use crate::store::Phase;

/// Shortest password a user may choose.
const MIN_PASSWORD: usize = 12;

/// Whether `pw` can be a password of every engine's account and of an option file: 12 to
/// 128 printable ASCII characters without quotes, backslashes or spaces.
pub fn check_password(pw: &str) -> Result<(), String> {
    if pw.len() < MIN_PASSWORD || pw.len() > 128 {
        return Err(format!(
            "a password must be {MIN_PASSWORD} to 128 characters (got {})",
            pw.chars().count()
        ));
    }
    if let Some(c) = pw
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '\'' | '"' | '\\' | '`'))
    {
        return Err(format!(
            "a password may hold printable ASCII characters other than quotes, backslashes \
             and spaces; {c:?} is not allowed"
        ));
    }
    Ok(())
}

impl Controller {
    /// Validate a rotation of `name`'s admin password (to `password`, or a new random one),
    /// keep it as pending and queue the operation that sets it.
    pub fn password(
        self: &Arc<Self>,
        name: &str,
        password: Option<String>,
    ) -> Result<OpView, ApiError> {
        self.db(|s| s.cluster(name))?
            .ok_or_else(|| ApiError::not_found(format!("no cluster named {name:?}")))?;
        let pw = match password {
            Some(p) => {
                check_password(&p).map_err(ApiError::invalid)?;
                p
            }
            None => secrets::generate_password()
                .map_err(|e| ApiError::internal(format!("cannot generate a password: {e}")))?,
        };
        let _lock = secrets::lock(&self.home, name)
            .map_err(|e| ApiError::internal(format!("cannot lock the secrets of {name}: {e}")))?;
        let mut s = secrets::load_all(&self.home, name).map_err(|e| {
            ApiError::internal(format!("cannot read the credentials of {name}: {e}"))
        })?;
        if s.platform.is_none() {
            return Err(ApiError::invalid(format!(
                "{name} was created before clusters had a platform account of their own: its \
                 hooks use the admin account, whose password cannot change under them"
            )));
        }
        if s.pending_admin.is_some() {
            return Err(ApiError::conflict(format!(
                "a password change of {name} is already under way"
            )));
        }
        s.pending_admin = Some(pw);
        secrets::save(&self.home, name, &s)
            .map_err(|e| ApiError::internal(format!("cannot store credentials: {e}")))?;
        self.submit(name, crate::operation::Op::Password {})
            .inspect_err(|_| {
                // Not queued: nothing is under way.
                s.pending_admin = None;
                let _ = secrets::save(&self.home, name, &s);
            })
    }
}

/// The password operation: set the pending admin password on every running instance (the
/// primary first), then make it the one handed out. If the primary refuses, nothing changed.
pub(crate) async fn run(c: &Arc<Controller>, name: &str) -> Result<(), ControlError> {
    let cl = crate::ops::cluster(c, name)?;
    let mut all_secrets = secrets::load_all(&c.home, name)
        .map_err(|e| format!("cannot read its credentials: {e}"))
        .of(name)?;
    let Some(pw) = all_secrets.pending_admin.clone() else {
        return Ok(()); // finished already
    };
    let platform = all_secrets.platform().clone();
    let new = secrets::Credentials {
        user: all_secrets.admin.user.clone(),
        password: pw,
    };
    let mut all = crate::ops::instances(c, name)?;
    primary_replica::order(&mut all, Sequence::Start);
    let mut warnings = Vec::new();
    for (n, i) in all.iter().filter(|i| i.state == Phase::Running).enumerate() {
        match c.provision_account(&cl, i, &all, &platform, &new).await {
            Ok(()) => c.event(name, Some(&i.name), Level::Info, "admin password set"),
            Err(e) if n == 0 => {
                all_secrets.pending_admin = None;
                let _ = secrets::save(&c.home, name, &all_secrets);
                return Err(ControlError::on(
                    name,
                    &i.name,
                    format!("{}; the password is unchanged", e.failure),
                ));
            }
            // A replica's own account store: it gets the password at its next start.
            Err(e) => warnings.push(e.within_cluster()),
        }
    }
    all_secrets.admin = new;
    all_secrets.admin_version += 1;
    all_secrets.pending_admin = None;
    secrets::save(&c.home, name, &all_secrets)
        .map_err(|e| format!("cannot store the new password: {e}"))
        .of(name)?;
    for w in warnings {
        c.event(
            name,
            None,
            Level::Warning,
            format!("{w}; it gets the new password when it restarts"),
        );
    }
    c.event(
        name,
        None,
        Level::Info,
        format!(
            "the password of {} changed (version {})",
            all_secrets.admin.user, all_secrets.admin_version
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_users_choose_are_checked() {
        assert!(check_password("Correct-Horse-9").is_ok());
        for bad in [
            "short",
            "has space inside",
            "quote'inside12",
            "back\\slash1234",
            "tab\tinside1234",
            &"x".repeat(129),
        ] {
            assert!(check_password(bad).is_err(), "{bad:?}");
        }
    }
}
