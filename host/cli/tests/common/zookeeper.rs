//! ZooKeeper from tests: the addon's own wire client (jute), compiled natively here, plus a
//! writer, a reader and the four-letter words. Not in `common/mod.rs`: only the ZooKeeper
//! test includes it (with the jute client's own unit tests).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use shoal_sdk::Endpoint;

#[path = "../../../../addons/zookeeper/src/jute.rs"]
pub mod jute;

use crate::common::{Commit, Writer};
pub use jute::{Acl, Session, ZkError};

fn ep(port: u16) -> Endpoint {
    Endpoint {
        host: "127.0.0.1".into(),
        port,
    }
}

/// A session with 127.0.0.1:`port`, authenticated as `user` when given.
pub fn zk(port: u16, auth: Option<(&str, &str)>) -> Result<Session, String> {
    let mut s = Session::connect(&ep(port), Duration::from_secs(3)).map_err(|e| e.to_string())?;
    if let Some((u, p)) = auth {
        s.auth_digest(u, p).map_err(|e| e.to_string())?;
    }
    Ok(s)
}

/// A four-letter word's answer.
pub fn four(port: u16, word: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(word.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The server ids in a member's `conf`.
pub fn engine_members(port: u16) -> Vec<u64> {
    four(port, "conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("server.")?.split_once('=')?.0.parse().ok())
        .collect()
}

/// Every acknowledged write is a child `/w/<n>`: a writer creating them through `port` as
/// `user`, a new session after every failure.
pub fn zk_writer(port: u16, user: &str, password: &str) -> Writer {
    let (user, pw) = (user.to_string(), password.to_string());
    Writer::start_with(1, move || {
        let mut s = zk(port, Some((&user, &pw)))?;
        let acl = open_to(&user);
        Ok(Box::new(move |n: u64| -> Result<u16, String> {
            s.create(&format!("/w/{n:08}"), b"1", &acl)
                .map_err(|e| e.to_string())?;
            Ok(port)
        }) as Commit)
    })
}

/// An ACL giving `user` (as digest-authenticated) every permission.
pub fn open_to(_user: &str) -> Vec<Acl> {
    vec![Acl {
        perms: jute::PERM_ALL,
        scheme: "auth".into(),
        id: String::new(),
    }]
}

/// The numbers under /w, read through `port`.
pub fn stored(port: u16, user: &str, password: &str) -> Result<BTreeSet<u64>, String> {
    let mut s = zk(port, Some((user, password)))?;
    let c = s.get_children("/w").map_err(|e| e.to_string())?;
    s.close();
    Ok(c.iter().filter_map(|n| n.parse().ok()).collect())
}
