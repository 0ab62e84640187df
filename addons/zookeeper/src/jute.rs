//! A minimal ZooKeeper client speaking the wire protocol ("jute" records, each frame a 4-byte
//! big-endian length then the record): connect, digest authentication, getData, getChildren,
//! create, setData, getACL, setACL, reconfig and close. Enough for the addon's membership
//! changes, accounts and logical backups; no watches, no reconnects (a failed request drops
//! the session and the caller connects again).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use shoal_sdk::Endpoint;

/// Largest frame read (getData of a 1 MiB znode plus its stat; a page of children).
const MAX_FRAME: usize = 16 << 20;

/// Operation codes of the requests this client sends.
pub mod op {
    pub const CREATE: i32 = 1;
    pub const SET_DATA: i32 = 5;
    pub const GET_DATA: i32 = 4;
    pub const GET_ACL: i32 = 6;
    pub const SET_ACL: i32 = 7;
    pub const GET_CHILDREN: i32 = 8;
    pub const SYNC: i32 = 9;
    pub const RECONFIG: i32 = 16;
    pub const CLOSE: i32 = -11;
    pub const AUTH: i32 = 100;
}

/// Error codes (`KeeperException.Code`) the addon tells apart.
pub mod code {
    pub const OK: i32 = 0;
    pub const CONNECTION_LOSS: i32 = -4;
    pub const OPERATION_TIMEOUT: i32 = -7;
    pub const BAD_ARGUMENTS: i32 = -8;
    pub const NEW_CONFIG_NO_QUORUM: i32 = -13;
    pub const RECONFIG_IN_PROGRESS: i32 = -14;
    pub const NO_NODE: i32 = -101;
    pub const NO_AUTH: i32 = -102;
    pub const NODE_EXISTS: i32 = -110;
    pub const SESSION_EXPIRED: i32 = -112;
    pub const AUTH_FAILED: i32 = -115;
    pub const RECONFIG_DISABLED: i32 = -123;
}

/// Every permission (READ|WRITE|CREATE|DELETE|ADMIN).
pub const PERM_ALL: i32 = 31;
/// READ only.
pub const PERM_READ: i32 = 1;

/// The name of a ZooKeeper error code.
pub fn code_name(code: i32) -> &'static str {
    match code {
        code::CONNECTION_LOSS => "connection loss",
        code::OPERATION_TIMEOUT => "operation timeout",
        code::BAD_ARGUMENTS => "bad arguments",
        code::NEW_CONFIG_NO_QUORUM => "no quorum of the new configuration is up",
        code::RECONFIG_IN_PROGRESS => "another reconfiguration is in progress",
        code::NO_NODE => "no such node",
        code::NO_AUTH => "not authorized",
        code::NODE_EXISTS => "node exists",
        code::SESSION_EXPIRED => "session expired",
        code::AUTH_FAILED => "authentication failed",
        code::RECONFIG_DISABLED => "reconfiguration is disabled",
        -1 => "system error",
        -5 => "marshalling error",
        -6 => "unimplemented",
        -9 => "new config no quorum",
        -111 => "node not empty",
        -118 => "ephemeral on local session",
        -119 => "no watcher",
        -120 => "request timeout",
        -121 => "ZooKeeper is not serving requests (no quorum)",
        -103 => "bad version",
        -108 => "no children for ephemerals",
        -114 => "invalid ACL",
        _ => "error",
    }
}

/// Why a request failed.
#[derive(Debug)]
pub enum ZkError {
    /// The connection failed (refused, reset, timed out, closed).
    Io(std::io::Error),
    /// The server answered with an error code.
    Code(i32),
    /// The server sent something this client cannot read.
    Protocol(String),
}

impl std::fmt::Display for ZkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ZkError::Io(e) => write!(f, "{e}"),
            ZkError::Code(c) => write!(f, "{} ({c})", code_name(*c)),
            ZkError::Protocol(m) => write!(f, "protocol: {m}"),
        }
    }
}

impl From<std::io::Error> for ZkError {
    fn from(e: std::io::Error) -> Self {
        ZkError::Io(e)
    }
}

/// An access-control entry: permissions for `scheme:id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    pub perms: i32,
    pub scheme: String,
    pub id: String,
}

/// A znode's stat (the fields the addon reads).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    pub czxid: i64,
    pub mzxid: i64,
    pub version: i32,
    pub ephemeral_owner: i64,
    pub num_children: i32,
}

/// Serializes jute records.
#[derive(Default)]
pub struct Out(pub Vec<u8>);

impl Out {
    pub fn int(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn long(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn boolean(&mut self, v: bool) -> &mut Self {
        self.0.push(u8::from(v));
        self
    }
    /// A buffer or string: its length (-1 for none), then the bytes.
    pub fn buffer(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            None => self.int(-1),
            Some(b) => {
                self.int(b.len() as i32);
                self.0.extend_from_slice(b);
                self
            }
        }
    }
    pub fn string(&mut self, v: &str) -> &mut Self {
        self.buffer(Some(v.as_bytes()))
    }
    pub fn acls(&mut self, acls: &[Acl]) -> &mut Self {
        self.int(acls.len() as i32);
        for a in acls {
            self.int(a.perms).string(&a.scheme).string(&a.id);
        }
        self
    }
    /// The record framed: its length, then the bytes.
    pub fn framed(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(self.0.len() + 4);
        f.extend_from_slice(&(self.0.len() as i32).to_be_bytes());
        f.extend_from_slice(&self.0);
        f
    }
}

/// Reads jute records from one frame.
pub struct In<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> In<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        In { buf, at: 0 }
    }
    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.at
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ZkError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| ZkError::Protocol(format!("a record cut short at byte {}", self.at)))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    pub fn int(&mut self) -> Result<i32, ZkError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn long(&mut self) -> Result<i64, ZkError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    pub fn boolean(&mut self) -> Result<bool, ZkError> {
        Ok(self.take(1)?[0] != 0)
    }
    pub fn buffer(&mut self) -> Result<Option<Vec<u8>>, ZkError> {
        let n = self.int()?;
        if n < 0 {
            return Ok(None);
        }
        Ok(Some(self.take(n as usize)?.to_vec()))
    }
    pub fn string(&mut self) -> Result<String, ZkError> {
        let b = self.buffer()?.unwrap_or_default();
        String::from_utf8(b).map_err(|_| ZkError::Protocol("a string not in UTF-8".into()))
    }
    pub fn strings(&mut self) -> Result<Vec<String>, ZkError> {
        let n = self.int()?;
        (0..n.max(0)).map(|_| self.string()).collect()
    }
    pub fn acls(&mut self) -> Result<Vec<Acl>, ZkError> {
        let n = self.int()?;
        (0..n.max(0))
            .map(|_| {
                Ok(Acl {
                    perms: self.int()?,
                    scheme: self.string()?,
                    id: self.string()?,
                })
            })
            .collect()
    }
    pub fn stat(&mut self) -> Result<Stat, ZkError> {
        let czxid = self.long()?;
        let mzxid = self.long()?;
        let _ctime = self.long()?;
        let _mtime = self.long()?;
        let version = self.int()?;
        let _cversion = self.int()?;
        let _aversion = self.int()?;
        let ephemeral_owner = self.long()?;
        let _data_length = self.int()?;
        let num_children = self.int()?;
        let _pzxid = self.long()?;
        Ok(Stat {
            czxid,
            mzxid,
            version,
            ephemeral_owner,
            num_children,
        })
    }
}

/// The connect request a new session starts with.
pub fn connect_request(session_timeout_ms: i32) -> Out {
    let mut o = Out::default();
    o.int(0) // protocol version
        .long(0) // last zxid seen
        .int(session_timeout_ms)
        .long(0) // session id: a new session
        .buffer(Some(&[0u8; 16])) // session password
        .boolean(false); // read-only allowed
    o
}

/// One session with one server.
pub struct Session {
    stream: TcpStream,
    xid: i32,
    pub session_id: i64,
}

impl Session {
    /// Connect to `endpoint` and open a session; every read and write waits at most `timeout`.
    pub fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Session, ZkError> {
        let stream = shoal_sdk::net::connect(endpoint, timeout)?;
        let mut s = Session {
            stream,
            xid: 0,
            session_id: 0,
        };
        let ms = (timeout.as_millis() as i32).clamp(4000, 30000);
        s.stream.write_all(&connect_request(ms).framed())?;
        let frame = s.read_frame()?;
        let mut r = In::new(&frame);
        let _protocol = r.int()?;
        let negotiated = r.int()?;
        s.session_id = r.long()?;
        if negotiated <= 0 {
            return Err(ZkError::Code(code::SESSION_EXPIRED));
        }
        Ok(s)
    }

    fn read_frame(&mut self) -> Result<Vec<u8>, ZkError> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let n = i32::from_be_bytes(len);
        if n < 0 || n as usize > MAX_FRAME {
            return Err(ZkError::Protocol(format!("a frame of {n} bytes")));
        }
        let mut buf = vec![0u8; n as usize];
        self.stream.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Send request `op` with `body` under `xid`; the reply's body once its header says OK.
    fn call_xid(&mut self, xid: i32, op: i32, body: &[u8]) -> Result<Vec<u8>, ZkError> {
        let mut o = Out::default();
        o.int(xid).int(op);
        o.0.extend_from_slice(body);
        self.stream.write_all(&o.framed())?;
        loop {
            let frame = self.read_frame()?;
            let mut r = In::new(&frame);
            let rxid = r.int()?;
            let _zxid = r.long()?;
            let err = r.int()?;
            // -1: a watch event, -2: a ping answer; neither is this request's.
            if rxid == -1 || rxid == -2 {
                continue;
            }
            if rxid != xid {
                return Err(ZkError::Protocol(format!(
                    "an answer to request {rxid}, waiting for {xid}"
                )));
            }
            if err != code::OK {
                return Err(ZkError::Code(err));
            }
            return Ok(frame[r.at..].to_vec());
        }
    }

    fn call(&mut self, op: i32, body: &Out) -> Result<Vec<u8>, ZkError> {
        self.xid = self.xid.wrapping_add(1).max(1);
        let xid = self.xid;
        self.call_xid(xid, op, &body.0)
    }

    /// `addauth digest user:password`.
    pub fn auth_digest(&mut self, user: &str, password: &str) -> Result<(), ZkError> {
        let mut o = Out::default();
        o.int(0)
            .string("digest")
            .buffer(Some(format!("{user}:{password}").as_bytes()));
        self.call_xid(-4, op::AUTH, &o.0).map(|_| ())
    }

    /// The data and stat of `path`.
    pub fn get_data(&mut self, path: &str) -> Result<(Vec<u8>, Stat), ZkError> {
        let mut o = Out::default();
        o.string(path).boolean(false);
        let b = self.call(op::GET_DATA, &o)?;
        let mut r = In::new(&b);
        let data = r.buffer()?.unwrap_or_default();
        Ok((data, r.stat()?))
    }

    /// `sync`: this server catches up with the leader before answering later reads.
    pub fn sync(&mut self, path: &str) -> Result<(), ZkError> {
        let mut o = Out::default();
        o.string(path);
        self.call(op::SYNC, &o).map(|_| ())
    }

    /// The names of `path`'s children.
    pub fn get_children(&mut self, path: &str) -> Result<Vec<String>, ZkError> {
        let mut o = Out::default();
        o.string(path).boolean(false);
        let b = self.call(op::GET_CHILDREN, &o)?;
        In::new(&b).strings()
    }

    /// Create a persistent `path` holding `data` with `acl`.
    pub fn create(&mut self, path: &str, data: &[u8], acl: &[Acl]) -> Result<String, ZkError> {
        let mut o = Out::default();
        o.string(path).buffer(Some(data)).acls(acl).int(0);
        let b = self.call(op::CREATE, &o)?;
        In::new(&b).string()
    }

    /// Set `path`'s data whatever its version.
    pub fn set_data(&mut self, path: &str, data: &[u8]) -> Result<Stat, ZkError> {
        let mut o = Out::default();
        o.string(path).buffer(Some(data)).int(-1);
        let b = self.call(op::SET_DATA, &o)?;
        In::new(&b).stat()
    }

    /// The ACL of `path`.
    pub fn get_acl(&mut self, path: &str) -> Result<Vec<Acl>, ZkError> {
        let mut o = Out::default();
        o.string(path);
        let b = self.call(op::GET_ACL, &o)?;
        In::new(&b).acls()
    }

    /// Replace the ACL of `path` whatever its version.
    pub fn set_acl(&mut self, path: &str, acl: &[Acl]) -> Result<(), ZkError> {
        let mut o = Out::default();
        o.string(path).acls(acl).int(-1);
        self.call(op::SET_ACL, &o).map(|_| ())
    }

    /// An incremental reconfiguration: `joining` and `leaving` are comma-separated server
    /// specs and ids (either may be empty). The new configuration's text.
    pub fn reconfig(&mut self, joining: &str, leaving: &str) -> Result<String, ZkError> {
        let mut o = Out::default();
        let opt = |s: &str| {
            if s.is_empty() {
                None
            } else {
                Some(s.to_string())
            }
        };
        match opt(joining) {
            Some(j) => o.string(&j),
            None => o.buffer(None),
        };
        match opt(leaving) {
            Some(l) => o.string(&l),
            None => o.buffer(None),
        };
        o.buffer(None).long(-1);
        let b = self.call(op::RECONFIG, &o)?;
        let mut r = In::new(&b);
        let data = r.buffer()?.unwrap_or_default();
        Ok(String::from_utf8_lossy(&data).into_owned())
    }

    /// Close the session (best effort).
    pub fn close(mut self) {
        let mut o = Out::default();
        o.int(self.xid.wrapping_add(1).max(1)).int(op::CLOSE);
        let _ = self.stream.write_all(&o.framed());
    }
}

/// `base64(sha1("user:password"))`: the hash a digest ACL id and the super digest carry.
pub fn digest(user: &str, password: &str) -> String {
    format!(
        "{user}:{}",
        base64(&sha1(format!("{user}:{password}").as_bytes()))
    )
}

/// SHA-1 (FIPS 180-4), for ZooKeeper's digest scheme.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

pub use shoal_sdk::encoding::{base64, unbase64};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_known_digests() {
        let hex = |b: [u8; 20]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(hex(sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        let long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(hex(sha1(long)), "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
    }

    #[test]
    fn the_digest_is_what_zookeeper_stores() {
        // `printf 'shoal:secret' | openssl dgst -binary -sha1 | base64`
        assert_eq!(
            digest("shoal", "secret"),
            "shoal:+IGACi6D91Ch462lsn2VNYTKUck="
        );
    }

    #[test]
    fn the_connect_request_is_framed_like_the_java_client_sends_it() {
        let f = connect_request(10000).framed();
        // length 45: int, long, int, long, buffer(4 + 16), bool
        assert_eq!(&f[..4], &45i32.to_be_bytes());
        assert_eq!(f.len(), 49);
        assert_eq!(&f[16..20], &10000i32.to_be_bytes());
        assert_eq!(&f[28..32], &16i32.to_be_bytes());
        assert_eq!(f[48], 0);
    }

    #[test]
    fn records_round_trip() {
        let acl = vec![Acl {
            perms: PERM_ALL,
            scheme: "digest".into(),
            id: "u:h=".into(),
        }];
        let mut o = Out::default();
        o.string("/a")
            .buffer(None)
            .acls(&acl)
            .int(7)
            .long(-3)
            .boolean(true);
        let mut r = In::new(&o.0);
        assert_eq!(r.string().unwrap(), "/a");
        assert_eq!(r.buffer().unwrap(), None);
        assert_eq!(r.acls().unwrap(), acl);
        assert_eq!(r.int().unwrap(), 7);
        assert_eq!(r.long().unwrap(), -3);
        assert!(r.boolean().unwrap());
        assert!(r.int().is_err(), "reading past the end is an error");
    }

    #[test]
    fn a_stat_is_68_bytes() {
        let mut o = Out::default();
        o.long(1)
            .long(2)
            .long(3)
            .long(4)
            .int(5)
            .int(6)
            .int(7)
            .long(8);
        o.int(9).int(10).long(11);
        assert_eq!(o.0.len(), 68);
        let s = In::new(&o.0).stat().unwrap();
        assert_eq!(
            s,
            Stat {
                czxid: 1,
                mzxid: 2,
                version: 5,
                ephemeral_owner: 8,
                num_children: 10
            }
        );
    }

    #[test]
    fn base64_round_trips() {
        for b in [&b""[..], b"\0", b"ab", b"abc", b"\xff\x00\x10key/1"] {
            assert_eq!(unbase64(&base64(b)).as_deref(), Some(b));
        }
    }
}
