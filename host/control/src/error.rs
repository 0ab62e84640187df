//! Errors that say where they happened: the cluster, the instance when there is one, and
//! what failed as a typed cause ([`Failure`]). They become the text a user reads only at the
//! edge (an operation's record, an event, an API reply), where `Display` gives
//! "cluster/instance: what failed".

use std::path::PathBuf;

use shoal_runtime::CallError;

use crate::topology::Refusal;

/// What failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A change that breaks a topology rule; nothing was changed.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// An addon hook answered with an error (or trapped, or ran out of time or fuel).
    #[error("{hook}: {source}")]
    Hook {
        hook: &'static str,
        #[source]
        source: CallError,
    },
    /// A file or directory the host manages.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A command or server process: it could not start, failed, or did not get ready.
    #[error("{0}")]
    Process(String),
    /// The state database.
    #[error("the state store: {0}")]
    Store(String),
    /// Anything not given a kind of its own yet (the text of a lower layer).
    #[error("{0}")]
    Other(String),
}

/// A failure with where it happened.
#[derive(Debug, thiserror::Error)]
#[error("{}: {failure}", self.place())]
pub struct ControlError {
    pub cluster: String,
    pub instance: Option<String>,
    /// Boxed: errors travel up many frames, and a small `Result` keeps the happy path cheap.
    #[source]
    pub failure: Box<Failure>,
}

impl ControlError {
    /// `failure` on instance `instance` of `cluster`.
    pub fn on(cluster: &str, instance: &str, failure: impl Into<Failure>) -> ControlError {
        ControlError {
            cluster: cluster.to_string(),
            instance: Some(instance.to_string()),
            failure: Box::new(failure.into()),
        }
    }

    /// `failure` of `cluster` as a whole.
    pub fn of(cluster: &str, failure: impl Into<Failure>) -> ControlError {
        ControlError {
            cluster: cluster.to_string(),
            instance: None,
            failure: Box::new(failure.into()),
        }
    }

    /// Where: `cluster/instance`, or `cluster`.
    pub fn place(&self) -> String {
        match &self.instance {
            Some(i) => format!("{}/{i}", self.cluster),
            None => self.cluster.clone(),
        }
    }

    /// The text within the cluster's own record (an operation's error, an event of the
    /// cluster): the instance, if any, and what failed.
    pub fn within_cluster(&self) -> String {
        match &self.instance {
            Some(i) => format!("{i}: {}", self.failure),
            None => self.failure.to_string(),
        }
    }

    /// Whether the addon said trying again may work.
    pub fn is_retryable(&self) -> bool {
        matches!(&*self.failure, Failure::Hook { source, .. } if source.is_retryable())
    }
}

impl Failure {
    /// A failed hook call, named: `.map_err(Failure::hook("member-join"))`.
    pub fn hook(hook: &'static str) -> impl FnOnce(CallError) -> Failure {
        move |source| Failure::Hook { hook, source }
    }
}

/// The controller's own lookups answer in the API's terms: a failed state store stays a
/// store failure, anything else (an engine not loaded) its text.
impl From<shoal_api::ApiError> for Failure {
    fn from(e: shoal_api::ApiError) -> Failure {
        match e.kind {
            shoal_api::ErrorKind::Internal => Failure::Store(e.message),
            _ => Failure::Other(e.message),
        }
    }
}

impl From<String> for Failure {
    fn from(s: String) -> Failure {
        Failure::Other(s)
    }
}

impl From<&str> for Failure {
    fn from(s: &str) -> Failure {
        Failure::Other(s.to_string())
    }
}

/// For callers still on `Result<_, String>`: the whole message, place first.
impl From<ControlError> for String {
    fn from(e: ControlError) -> String {
        e.to_string()
    }
}

/// Attach where a lower layer's error happened.
pub trait At<T> {
    /// The error happened on instance `instance` of `cluster`.
    fn on(self, cluster: &str, instance: &str) -> Result<T, ControlError>;
    /// The error happened to `cluster` as a whole.
    fn of(self, cluster: &str) -> Result<T, ControlError>;
}

impl<T, E: Into<Failure>> At<T> for Result<T, E> {
    fn on(self, cluster: &str, instance: &str) -> Result<T, ControlError> {
        self.map_err(|e| ControlError::on(cluster, instance, e))
    }
    fn of(self, cluster: &str) -> Result<T, ControlError> {
        self.map_err(|e| ControlError::of(cluster, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_names_its_cluster_and_instance_and_keeps_its_cause() {
        let e = ControlError::on(
            "orders",
            "orders-1",
            Failure::Io {
                path: "/x/data".into(),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            },
        );
        let text = e.to_string();
        assert!(text.starts_with("orders/orders-1: /x/data: "), "{text}");
        assert!(std::error::Error::source(&e).is_some());
        let r = Refusal::ShardCount { max: 64, got: 0 };
        let e = ControlError::of("r", r.clone());
        assert_eq!(e.to_string(), format!("r: {r}"));
        assert!(matches!(
            *e.failure,
            Failure::Refused(Refusal::ShardCount { got: 0, .. })
        ));
        assert!(!e.is_retryable());
        let e: Result<(), String> = Err("boom".into());
        assert_eq!(String::from(e.on("c", "c-0").unwrap_err()), "c/c-0: boom");
    }
}
