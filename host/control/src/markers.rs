//! Markers: small key/values written and read back through an addon's `data` hooks
//! (`write-marker`, `read-markers`), kept apart from users' data by the addon. The conformance
//! kit writes them under load and reads them back after a kill, a switchover or a restore, to
//! count acknowledged writes that went missing. Which member a marker goes through is
//! [`marker_member`], a pure decision. Also the addon's per-hook call statistics
//! (`HookStats`), with which the kit checks that hooks end within their deadlines.

use shoal_api::{ApiError, MarkersView};

use crate::controller::Controller;
use crate::secrets;
use crate::store::{Health, InstanceRow, Phase, Role};

/// Longest marker key, and longest value.
pub const MAX_KEY: usize = 64;
pub const MAX_VALUE: usize = 256;
/// Most keys one read asks for.
pub const MAX_KEYS: usize = 1000;

/// Why a key or value is refused (none: fine). Keys are `[a-z0-9-]`, 1 to [`MAX_KEY`]
/// characters; values printable ASCII up to [`MAX_VALUE`].
pub fn check_marker(key: &str, value: Option<&str>) -> Option<String> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Some(format!(
            "marker key {key:?}: 1 to {MAX_KEY} characters, not {}",
            key.len()
        ));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Some(format!(
            "marker key {key:?}: only lowercase letters, digits and dashes"
        ));
    }
    let v = value?;
    if v.len() > MAX_VALUE || !v.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return Some(format!(
            "marker value for {key:?}: printable ASCII, at most {MAX_VALUE} characters"
        ));
    }
    None
}

/// The member a marker is written through (and read from, unless one is named), as clients
/// are routed: the running member the host made primary (unless its probe failed); else,
/// where the engine elects its own writer (quorum, sharded), a running, healthy member whose
/// last probe said it takes writes (the first by name); else any running, healthy member
/// (followers that forward writes, sharded engines whose addon routes the key). `None`: no
/// member can take it now.
pub fn marker_member(all: &[InstanceRow]) -> Option<&InstanceRow> {
    let running = || all.iter().filter(|i| i.state == Phase::Running);
    running()
        .find(|i| i.role == Role::Primary && i.health != Health::Unhealthy)
        .or_else(|| running().find(|i| i.writable == Some(true) && i.health == Health::Healthy))
        .or_else(|| running().find(|i| i.health == Health::Healthy))
}

impl Controller {
    /// `MarkerWrite`: store `value` under `key` in cluster `name`; the member that
    /// acknowledged it.
    pub async fn write_marker(
        &self,
        name: &str,
        key: &str,
        value: &str,
    ) -> Result<MarkersView, ApiError> {
        if let Some(why) = check_marker(key, Some(value)) {
            return Err(ApiError::invalid(why));
        }
        let (cl, all, cr) = self.marker_cluster(name)?;
        let on = marker_member(&all).ok_or_else(|| {
            ApiError::conflict(format!("{name} has no running, healthy member to write to"))
        })?;
        let hooks = self.hooks(&cl, on, &all, &cr).map_err(ApiError::internal)?;
        hooks
            .write_marker(key, value)
            .await
            .map_err(|e| marker_error(name, &on.name, e))?;
        Ok(MarkersView {
            instance: on.name.clone(),
            values: Vec::new(),
        })
    }

    /// `MarkerRead`: the values under `keys` as the writing member (or `instance`) sees them.
    pub async fn read_markers(
        &self,
        name: &str,
        keys: &[String],
        instance: Option<&str>,
    ) -> Result<MarkersView, ApiError> {
        if keys.len() > MAX_KEYS {
            return Err(ApiError::invalid(format!(
                "at most {MAX_KEYS} marker keys per read, not {}",
                keys.len()
            )));
        }
        if let Some(why) = keys.iter().find_map(|k| check_marker(k, None)) {
            return Err(ApiError::invalid(why));
        }
        let (cl, all, cr) = self.marker_cluster(name)?;
        let on = match instance {
            Some(n) => all
                .iter()
                .find(|i| i.name == n)
                .ok_or_else(|| ApiError::not_found(format!("{name} has no instance {n:?}")))?,
            None => marker_member(&all).ok_or_else(|| {
                ApiError::conflict(format!("{name} has no running, healthy member to read"))
            })?,
        };
        let hooks = self.hooks(&cl, on, &all, &cr).map_err(ApiError::internal)?;
        let values = hooks
            .read_markers(keys)
            .await
            .map_err(|e| marker_error(name, &on.name, e))?;
        if values.len() != keys.len() {
            return Err(ApiError::internal(format!(
                "the addon's read-markers answered {} values for {} keys",
                values.len(),
                keys.len()
            )));
        }
        Ok(MarkersView {
            instance: on.name.clone(),
            values,
        })
    }

    /// `HookStats`: how the hook calls of `engine`'s addon went since it was loaded.
    pub fn hook_stats(&self, engine: &str) -> Result<Vec<shoal_api::HookStatView>, ApiError> {
        let addon = self.addon(engine)?;
        Ok(addon
            .hook_stats()
            .into_iter()
            .map(|(hook, s, limits)| shoal_api::HookStatView {
                hook: hook.name().to_string(),
                calls: s.calls,
                failures: s.failures,
                deadline_hits: s.deadline_hits,
                max_ms: s.max_elapsed.as_millis() as u64,
                mean_ms: s.total_elapsed.as_millis() as u64 / s.calls.max(1),
                limit_ms: limits.timeout.as_millis() as u64,
            })
            .collect())
    }

    fn marker_cluster(
        &self,
        name: &str,
    ) -> Result<
        (
            crate::store::ClusterRow,
            Vec<InstanceRow>,
            secrets::Credentials,
        ),
        ApiError,
    > {
        let cl = self
            .db(|s| s.cluster(name))?
            .ok_or_else(|| ApiError::not_found(format!("no cluster named {name:?}")))?;
        let all = self.db(|s| s.instances(name))?;
        let cr = secrets::load(&self.home, name).map_err(|e| {
            ApiError::internal(format!("cannot read the credentials of {name}: {e}"))
        })?;
        Ok((cl, all, cr))
    }
}

/// A failed marker hook as an API error: `unsupported` is the request's fault (the engine
/// has no markers), anything else a failure on that member.
fn marker_error(cluster: &str, instance: &str, e: shoal_runtime::CallError) -> ApiError {
    if e.is_unsupported() {
        ApiError::invalid(format!(
            "{cluster}: the engine keeps no markers ({})",
            shoal_runtime::UNSUPPORTED_TEXT
        ))
    } else {
        ApiError {
            kind: shoal_api::ErrorKind::Failed,
            message: format!("{cluster}/{instance}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Role;

    fn row(name: &str, state: Phase, health: Health, writable: Option<bool>) -> InstanceRow {
        let mut r = InstanceRow::for_test("c", name, 0, Role::Member);
        r.state = state;
        r.health = health;
        r.writable = writable;
        r
    }

    #[test]
    fn markers_go_through_the_member_that_takes_writes() {
        let all = [
            row("c-0", Phase::Running, Health::Healthy, Some(false)),
            row("c-1", Phase::Running, Health::Healthy, Some(true)),
        ];
        assert_eq!(marker_member(&all).map(|i| i.name.as_str()), Some("c-1"));
        // Just after a failover: the new primary (still degraded) wins over the old one
        // whose last probe, before it was demoted, said writable.
        let mut promoted = row("c-0", Phase::Running, Health::Degraded, Some(false));
        promoted.role = Role::Primary;
        let all = [
            promoted,
            row("c-1", Phase::Running, Health::Healthy, Some(true)),
        ];
        assert_eq!(marker_member(&all).map(|i| i.name.as_str()), Some("c-0"));
        // A writer that is not healthy (killed, not yet seen back) is passed over.
        let all = [
            row("c-0", Phase::Running, Health::Healthy, Some(false)),
            row("c-1", Phase::Running, Health::Unhealthy, Some(true)),
        ];
        assert_eq!(marker_member(&all).map(|i| i.name.as_str()), Some("c-0"));
        let all = [
            row("c-0", Phase::Stopped, Health::Healthy, Some(true)),
            row("c-1", Phase::Running, Health::Unhealthy, None),
        ];
        assert!(marker_member(&all).is_none());
    }

    #[test]
    fn marker_keys_and_values_are_checked() {
        assert_eq!(check_marker("kit-000123", Some("value of it")), None);
        for (key, value, want) in [
            ("", None, "1 to 64"),
            ("Kit", None, "lowercase"),
            ("a b", None, "lowercase"),
            ("k", Some("tab\there"), "printable"),
        ] {
            let e = check_marker(key, value).unwrap_or_default();
            assert!(e.contains(want), "{key:?}: {e}");
        }
        assert!(check_marker(&"k".repeat(65), None).is_some());
        assert!(check_marker("k", Some(&"v".repeat(257))).is_some());
    }
}
