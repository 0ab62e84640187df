//! A kept connection per addon instance: the one reconnect policy every engine uses. The host
//! may keep an addon instance alive across calls (its probe loop does), so a connection kept
//! in the engine value saves a connect (and an authentication) per probe; it may equally
//! use a fresh instance per call, so nothing may depend on the connection being there.
//!
//! ```ignore
//! struct Memcached { conn: Kept<LineConn> }
//! let version = self.conn.with(instance, connect, |c| c.request("version"))?;
//! ```

use crate::{HookError, HookResult, Instance};

/// A connection of type `C` to one instance's address, kept between calls.
pub struct Kept<C> {
    kept: Option<(String, C)>,
}

impl<C> Default for Kept<C> {
    fn default() -> Self {
        Kept { kept: None }
    }
}

impl<C> Kept<C> {
    /// No connection yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run `f` on a connection to `instance`. A kept connection to the same address is
    /// reused; when `f` fails on it (the server restarted, the connection went stale), `f`
    /// runs once more on a new connection made by `connect`. So `f` must be safe to run
    /// twice (a read, an idempotent write); use [`Kept::once`] otherwise. A failure on the
    /// new connection drops it and is returned with the instance's address as context.
    pub fn with<T, E: Into<HookError>>(
        &mut self,
        instance: &Instance,
        connect: impl FnOnce(&Instance) -> Result<C, E>,
        mut f: impl FnMut(&mut C) -> Result<T, E>,
    ) -> HookResult<T> {
        let addr = instance.address();
        if let Some((_, c)) = self.kept.as_mut().filter(|(peer, _)| *peer == addr) {
            match f(c) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let e: HookError = e.into();
                    crate::debug!("{addr}: reconnecting after: {e:?}");
                }
            }
        }
        self.kept = None;
        let mut c = connect(instance).map_err(|e| e.into().context(format!("connect {addr}")))?;
        let v = f(&mut c).map_err(|e| e.into().context(&addr))?;
        self.kept = Some((addr, c));
        Ok(v)
    }

    /// Run `f` once on a connection to `instance` (the kept one when it goes to the same
    /// address, else a new one): for requests that must not run twice. A failure drops the
    /// connection, so the next call starts on a fresh one.
    pub fn once<T, E: Into<HookError>>(
        &mut self,
        instance: &Instance,
        connect: impl FnOnce(&Instance) -> Result<C, E>,
        f: impl FnOnce(&mut C) -> Result<T, E>,
    ) -> HookResult<T> {
        let addr = instance.address();
        if self.kept.as_ref().is_none_or(|(peer, _)| *peer != addr) {
            self.kept = None;
            let c = connect(instance).map_err(|e| e.into().context(format!("connect {addr}")))?;
            self.kept = Some((addr.clone(), c));
        }
        let Some((_, c)) = self.kept.as_mut() else {
            return Err(HookError::failed("no connection"));
        };
        f(c).map_err(|e| {
            self.kept = None;
            e.into().context(&addr)
        })
    }

    /// Forget the kept connection (after a role change, say).
    pub fn reset(&mut self) {
        self.kept = None;
    }
}
