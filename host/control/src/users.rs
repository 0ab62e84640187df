//! The OS users engines run as. A root host gives each cluster a user of its own (named from
//! a prefix of the home, `shoal-3fa2c1-17`, created on first use and remembered); clusters
//! created before that, and a host that is not root, fall back to the shared engine user (or
//! the host's own user). This module is the one place that decides which user a cluster's
//! processes, init commands and hook programs get.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use shoal_local::RunAs;

use crate::store::ClusterRow;

/// Which OS user each cluster's engine runs as.
#[derive(Debug)]
pub struct EngineUsers {
    /// The shared engine user (None: engines run as the host's own user).
    shared: Option<RunAs>,
    /// What the host reports as its engine user.
    shown: String,
    /// The prefix of per-cluster user names (only when engines run as other users).
    prefix: Option<String>,
    /// Each cluster's user, by cluster name, as looked up last.
    cache: Mutex<HashMap<String, Option<RunAs>>>,
}

impl EngineUsers {
    /// The users of the host whose home is `home`, whose configured engine user is
    /// `configured` and resolves to `shared` (None when the host is not root).
    pub fn new(home: &Path, configured: &str, shared: Option<RunAs>) -> EngineUsers {
        EngineUsers {
            shared,
            shown: if shared.is_some() {
                configured.to_string()
            } else {
                std::env::var("USER").unwrap_or_else(|_| "the host's user".into())
            },
            prefix: shared.map(|_| user_prefix(home, configured)),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The name shown as the host's engine user.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The shared engine user (None: the host's own).
    pub fn shared(&self) -> Option<RunAs> {
        self.shared
    }

    /// The prefix a new cluster's own user name starts with (its uid follows), when engines
    /// run as other users than the host's.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// The OS user `cl`'s engine runs as: its own (created when missing), else the shared
    /// engine user, else none (the host's own user).
    pub fn of(&self, cl: &ClusterRow) -> Result<Option<RunAs>, String> {
        let Some(name) = cl.os_user.as_deref().filter(|_| self.shared.is_some()) else {
            return Ok(self.shared);
        };
        if let Some(u) = self.cached(&cl.name) {
            return Ok(u);
        }
        let u = shoal_local::users::ensure_user(name).map_err(|e| e.to_string())?;
        self.lock().insert(cl.name.clone(), Some(u));
        Ok(Some(u))
    }

    /// The user of cluster `cluster` as looked up last, if it was.
    pub fn cached(&self, cluster: &str) -> Option<Option<RunAs>> {
        self.lock().get(cluster).copied()
    }

    /// Forget the user of `cluster` (it was deleted).
    pub fn forget(&self, cluster: &str) {
        self.lock().remove(cluster);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<RunAs>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `<engine user>-<6 hex digits of the home's path>-`: the home's part keeps two homes on one
/// machine (tests, a second installation) from sharing users.
fn user_prefix(home: &Path, engine_user: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(home.as_os_str().as_encoded_bytes());
    format!("{engine_user}-{}-", &hex::encode(digest)[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(os_user: Option<&str>) -> ClusterRow {
        ClusterRow {
            name: "orders".into(),
            engine: "e".into(),
            version: "1".into(),
            spec: Default::default(),
            addon_digest: String::new(),
            state: crate::store::ClusterState::Running,
            created_ms: 0,
            uid: 7,
            os_user: os_user.map(str::to_string),
        }
    }

    #[test]
    fn homes_get_their_own_user_names() {
        let a = user_prefix(Path::new("/var/lib/shoal"), "shoal");
        let b = user_prefix(Path::new("/tmp/other"), "shoal");
        assert!(a.starts_with("shoal-") && a.ends_with('-') && a.len() == "shoal-".len() + 7);
        assert_ne!(a, b);
        assert_eq!(a, user_prefix(Path::new("/var/lib/shoal"), "shoal"));
    }

    #[test]
    fn a_host_that_is_not_root_runs_every_engine_as_itself() {
        let u = EngineUsers::new(Path::new("/h"), "shoal", None);
        assert_eq!(u.prefix(), None);
        assert_eq!(u.shared(), None);
        // A cluster with a user of its own (created by a root host) still runs as the host.
        assert_eq!(u.of(&cluster(Some("shoal-abcdef-7"))).ok(), Some(None));
        assert_eq!(u.of(&cluster(None)).ok(), Some(None));
        assert_eq!(u.cached("orders"), None);
        u.forget("orders");
    }
}
