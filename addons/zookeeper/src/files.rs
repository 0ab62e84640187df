//! ZooKeeper's own files, read back inside the addon: a tar of `version-2` (snapshots
//! `snapshot.<zxid>` and transaction logs `log.<zxid>`), the newest intact snapshot loaded and
//! every logged transaction after it replayed, giving the tree of persistent znodes as of the
//! last intact transaction. Formats (ZooKeeper 3.8, `FileSnap`, `FileTxnLog`, jute binary
//! records):
//!
//! - snapshot: header (magic `ZKSN`, version, dbid), sessions (count, then id + timeout),
//!   the ACL cache (count, then id + ACL vector), the nodes depth-first (path, data, ACL id,
//!   persisted stat; the root's path is empty) up to the path `/`, then the Adler-32 of all
//!   of that and `/` again (then, since 3.6, an optional digest);
//! - transaction log: header (magic `ZKLG`, version, dbid), then entries (Adler-32, a buffer
//!   holding the transaction header and record, the byte 0x42) up to zeros (the file is
//!   preallocated) or a torn entry.

use std::collections::BTreeMap;
use std::io::Read;

use crate::jute::In;

const SNAP_MAGIC: i32 = 0x5a4b_534e; // "ZKSN"
const LOG_MAGIC: i32 = 0x5a4b_4c47; // "ZKLG"

/// Largest transaction entry read (ZooKeeper's jute.maxbuffer default is 1 MiB; leave room).
const MAX_ENTRY: usize = 64 << 20;

/// Adler-32, as `java.util.zip.Adler32`.
pub fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in bytes.chunks(5552) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

/// One change a transaction makes to the tree of persistent znodes.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A znode created, or its data set.
    Put(String, Vec<u8>),
    /// A znode deleted.
    Delete(String),
}

/// A loaded snapshot: the persistent znodes (path → data) and the zxid it was started at.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub zxid: u64,
    pub nodes: BTreeMap<String, Vec<u8>>,
}

fn err(e: crate::jute::ZkError) -> String {
    e.to_string()
}

/// The zxid in a file name `snapshot.<hex>` or `log.<hex>` (under any directory).
pub fn file_zxid(name: &str, kind: &str) -> Option<u64> {
    let base = name.rsplit('/').next().unwrap_or(name);
    let hex = base.strip_prefix(kind)?.strip_prefix('.')?;
    u64::from_str_radix(hex, 16).ok()
}

/// Parse a whole snapshot file; its checksum must hold.
pub fn parse_snapshot(bytes: &[u8], zxid: u64) -> Result<Snapshot, String> {
    let mut r = In::new(bytes);
    if r.int().map_err(err)? != SNAP_MAGIC {
        return Err("not a ZooKeeper snapshot (bad magic)".into());
    }
    let _version = r.int().map_err(err)?;
    let _dbid = r.long().map_err(err)?;
    let sessions = r.int().map_err(err)?;
    for _ in 0..sessions.max(0) {
        r.long().map_err(err)?;
        r.int().map_err(err)?;
    }
    let acls = r.int().map_err(err)?;
    for _ in 0..acls.max(0) {
        r.long().map_err(err)?;
        r.acls().map_err(err)?;
    }
    let mut nodes = BTreeMap::new();
    loop {
        let path = r.string().map_err(err)?;
        if path == "/" {
            break;
        }
        let data = r.buffer().map_err(err)?.unwrap_or_default();
        let _acl = r.long().map_err(err)?;
        // StatPersisted: czxid, mzxid, ctime, mtime, version, cversion, aversion,
        // ephemeralOwner, pzxid.
        for _ in 0..4 {
            r.long().map_err(err)?;
        }
        for _ in 0..3 {
            r.int().map_err(err)?;
        }
        let owner = r.long().map_err(err)?;
        r.long().map_err(err)?;
        // A session's ephemeral node (containers and TTL nodes have negative owners).
        if owner > 0 {
            continue;
        }
        let path = if path.is_empty() { "/".into() } else { path };
        nodes.insert(path, data);
    }
    let covered = r.position();
    let want = r.long().map_err(err)?;
    let have = u64::from(adler32(&bytes[..covered]));
    if want as u64 != have {
        return Err(format!(
            "snapshot checksum mismatch (file says {want:x}, content gives {have:x}): torn"
        ));
    }
    if r.string().ok().as_deref() != Some("/") {
        return Err("snapshot ends without its signature: torn".into());
    }
    Ok(Snapshot { zxid, nodes })
}

/// The changes of one transaction record of `op` (persistent znodes only).
fn changes_of(op: i32, r: &mut In<'_>, out: &mut Vec<Change>) -> Result<(), String> {
    match op {
        // create, create2: CreateTxn (path, data, acl, ephemeral, parentCVersion)
        1 | 15 => {
            let path = r.string().map_err(err)?;
            let data = r.buffer().map_err(err)?.unwrap_or_default();
            r.acls().map_err(err)?;
            let ephemeral = r.boolean().map_err(err)?;
            if !ephemeral {
                out.push(Change::Put(path, data));
            }
        }
        // createContainer (path, data, acl, parentCVersion), createTTL (…, ttl)
        19 | 21 => {
            let path = r.string().map_err(err)?;
            let data = r.buffer().map_err(err)?.unwrap_or_default();
            out.push(Change::Put(path, data));
        }
        // delete, deleteContainer: DeleteTxn (path)
        2 | 20 => out.push(Change::Delete(r.string().map_err(err)?)),
        // setData, reconfig: SetDataTxn (path, data, version)
        5 | 16 => {
            let path = r.string().map_err(err)?;
            let data = r.buffer().map_err(err)?.unwrap_or_default();
            out.push(Change::Put(path, data));
        }
        // multi: a vector of (type, record); a failed multi holds error records and changed
        // nothing.
        14 => {
            let n = r.int().map_err(err)?;
            let mut parts = Vec::new();
            for _ in 0..n.max(0) {
                let t = r.int().map_err(err)?;
                let b = r.buffer().map_err(err)?.unwrap_or_default();
                parts.push((t, b));
            }
            if parts.iter().any(|(t, _)| *t == -1) {
                return Ok(());
            }
            for (t, b) in parts {
                changes_of(t, &mut In::new(&b), out)?;
            }
        }
        // sessions, ACLs, checks, errors: nothing in the tree of persistent data.
        _ => {}
    }
    Ok(())
}

/// Read a transaction log from `r` (the file's bytes, then EOF): every intact transaction
/// as (zxid, changes). Stops at the preallocated zeros or at a torn entry; the rest of the
/// stream is left unread.
pub fn read_log(r: &mut impl Read) -> Result<Vec<(u64, Vec<Change>)>, String> {
    let mut head = [0u8; 16];
    if r.read_exact(&mut head).is_err() {
        return Ok(vec![]);
    }
    if i32::from_be_bytes([head[0], head[1], head[2], head[3]]) != LOG_MAGIC {
        return Err("not a ZooKeeper transaction log (bad magic)".into());
    }
    let mut txns = Vec::new();
    loop {
        let mut crc_len = [0u8; 12];
        if r.read_exact(&mut crc_len).is_err() {
            break;
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(&crc_len[..8]);
        let crc = u64::from_be_bytes(c);
        let len = i32::from_be_bytes([crc_len[8], crc_len[9], crc_len[10], crc_len[11]]);
        if len <= 0 || len as usize > MAX_ENTRY {
            break;
        }
        let mut buf = vec![0u8; len as usize];
        if r.read_exact(&mut buf).is_err() {
            break;
        }
        let mut eor = [0u8; 1];
        if r.read_exact(&mut eor).is_err() || eor[0] != 0x42 {
            break;
        }
        if u64::from(adler32(&buf)) != crc {
            break;
        }
        let mut t = In::new(&buf);
        // TxnHeader: clientId, cxid, zxid, time, type.
        let _client = t.long().map_err(err)?;
        let _cxid = t.int().map_err(err)?;
        let zxid = t.long().map_err(err)? as u64;
        let _time = t.long().map_err(err)?;
        let op = t.int().map_err(err)?;
        let mut changes = Vec::new();
        changes_of(op, &mut t, &mut changes)?;
        txns.push((zxid, changes));
    }
    Ok(txns)
}

/// The tree after applying `txns` (any order; those at or before the snapshot's zxid are
/// skipped, the others applied by zxid) to `snap`. Applying is idempotent, as ZooKeeper's
/// replay onto a fuzzy snapshot is. Also returns the last zxid applied.
pub fn replay(mut snap: Snapshot, mut txns: Vec<(u64, Vec<Change>)>) -> (Snapshot, u64) {
    txns.sort_by_key(|(z, _)| *z);
    let mut last = snap.zxid;
    for (zxid, changes) in txns {
        if zxid <= snap.zxid {
            continue;
        }
        for c in changes {
            match c {
                Change::Put(p, d) => {
                    snap.nodes.insert(p, d);
                }
                Change::Delete(p) => {
                    snap.nodes.remove(&p);
                }
            }
        }
        last = zxid;
    }
    (snap, last)
}

/// A tar stream's regular files, one at a time.
pub struct Tar<R: Read> {
    r: R,
    /// Bytes of the current entry not yet read, then its padding.
    left: u64,
    pad: u64,
}

impl<R: Read> Tar<R> {
    pub fn new(r: R) -> Self {
        Tar { r, left: 0, pad: 0 }
    }

    fn skip(&mut self, mut n: u64) -> Result<(), String> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = (n.min(buf.len() as u64)) as usize;
            self.r
                .read_exact(&mut buf[..k])
                .map_err(|e| format!("the tar stream ends early: {e}"))?;
            n -= k as u64;
        }
        Ok(())
    }

    /// The next regular file's name and size; its bytes are read with [`Tar::body`]. `None`
    /// at the end of the archive.
    pub fn next_file(&mut self) -> Result<Option<(String, u64)>, String> {
        let rest = self.left + self.pad;
        self.skip(rest)?;
        self.left = 0;
        self.pad = 0;
        let mut long_name: Option<String> = None;
        loop {
            let mut h = [0u8; 512];
            if self.r.read_exact(&mut h).is_err() {
                return Ok(None);
            }
            if h.iter().all(|b| *b == 0) {
                return Ok(None);
            }
            let field = |a: usize, b: usize| {
                let f = &h[a..b];
                let end = f.iter().position(|c| *c == 0).unwrap_or(f.len());
                String::from_utf8_lossy(&f[..end]).into_owned()
            };
            let size_text = field(124, 136);
            let size = u64::from_str_radix(size_text.trim(), 8)
                .map_err(|_| format!("a tar header with size {size_text:?}"))?;
            let pad = (512 - size % 512) % 512;
            let kind = h[156];
            let mut name = field(0, 100);
            if &h[257..262] == b"ustar" {
                let prefix = field(345, 500);
                if !prefix.is_empty() {
                    name = format!("{prefix}/{name}");
                }
            }
            match kind {
                // GNU long name: the data is the next entry's name.
                b'L' => {
                    let mut b = vec![0u8; size as usize];
                    self.r
                        .read_exact(&mut b)
                        .map_err(|e| format!("the tar stream ends early: {e}"))?;
                    self.skip(pad)?;
                    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
                    long_name = Some(String::from_utf8_lossy(&b[..end]).into_owned());
                }
                b'0' | 0 => {
                    self.left = size;
                    self.pad = pad;
                    return Ok(Some((long_name.take().unwrap_or(name), size)));
                }
                _ => {
                    self.skip(size + pad)?;
                    long_name = None;
                }
            }
        }
    }

    /// A reader of the current file's bytes.
    pub fn body(&mut self) -> Body<'_, R> {
        Body { tar: self }
    }
}

/// The bytes of a tar's current file.
pub struct Body<'a, R: Read> {
    tar: &'a mut Tar<R>,
}

impl<R: Read> Read for Body<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.tar.left == 0 {
            return Ok(0);
        }
        let k = (buf.len() as u64).min(self.tar.left) as usize;
        let n = self.tar.r.read(&mut buf[..k])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the tar stream ends inside a file",
            ));
        }
        self.tar.left -= n as u64;
        Ok(n)
    }
}

/// Persistent znodes: path → data.
pub type Znodes = BTreeMap<String, Vec<u8>>;

/// Everything a tar of `version-2` holds, loaded: the newest intact snapshot with every
/// intact logged transaction after it applied. Returns the tree, the snapshot's zxid and the
/// last zxid applied.
pub fn load(r: impl Read) -> Result<(Znodes, u64, u64), String> {
    let mut tar = Tar::new(r);
    let mut snaps: Vec<Snapshot> = Vec::new();
    let mut problems = Vec::new();
    let mut txns = Vec::new();
    while let Some((name, size)) = tar.next_file()? {
        if let Some(z) = file_zxid(&name, "snapshot") {
            if size > (1u64 << 30) {
                return Err(format!("{name}: {size} bytes, too large to load"));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            tar.body()
                .read_to_end(&mut bytes)
                .map_err(|e| format!("{name}: {e}"))?;
            match parse_snapshot(&bytes, z) {
                Ok(s) => {
                    // Keep only the newest intact one.
                    if snaps.first().is_none_or(|o| o.zxid < s.zxid) {
                        snaps = vec![s];
                    }
                }
                Err(e) => problems.push(format!("{name}: {e}")),
            }
        } else if file_zxid(&name, "log").is_some() {
            let mut body = tar.body();
            txns.extend(read_log(&mut body).map_err(|e| format!("{name}: {e}"))?);
        }
    }
    let snap = snaps.pop().ok_or_else(|| {
        format!(
            "the backup holds no intact snapshot{}",
            if problems.is_empty() {
                String::new()
            } else {
                format!(" ({})", problems.join("; "))
            }
        )
    })?;
    let base = snap.zxid;
    // Transactions must follow on from the snapshot without a gap in their own epoch.
    let (tree, last) = replay(snap, txns);
    Ok((tree.nodes, base, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jute::{Acl, Out};

    #[test]
    fn adler32_matches_java() {
        // java.util.zip.Adler32 of "Wikipedia" is 0x11E60398.
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        assert_eq!(adler32(b""), 1);
    }

    fn snapshot_bytes(nodes: &[(&str, &[u8], i64)]) -> Vec<u8> {
        let mut o = Out::default();
        o.int(SNAP_MAGIC).int(2).long(-1);
        o.int(1).long(0x100).int(30000); // one session
        o.int(1).long(1).acls(&[Acl {
            perms: 31,
            scheme: "world".into(),
            id: "anyone".into(),
        }]);
        for (path, data, owner) in nodes {
            o.string(path).buffer(Some(data)).long(1);
            o.long(1).long(2).long(3).long(4).int(0).int(0).int(0);
            o.long(*owner).long(5);
        }
        o.string("/");
        let crc = adler32(&o.0);
        o.long(i64::from(crc)).string("/");
        o.0
    }

    fn entry(zxid: i64, op: i32, body: &Out) -> Vec<u8> {
        let mut t = Out::default();
        t.long(0x100).int(1).long(zxid).long(0).int(op);
        t.0.extend_from_slice(&body.0);
        let mut e = Out::default();
        e.long(i64::from(adler32(&t.0))).buffer(Some(&t.0));
        e.0.push(0x42);
        e.0
    }

    fn log_bytes(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut o = Out::default();
        o.int(LOG_MAGIC).int(2).long(0);
        for e in entries {
            o.0.extend_from_slice(e);
        }
        // Preallocated zeros.
        o.0.extend_from_slice(&[0u8; 100]);
        o.0
    }

    fn create(path: &str, data: &[u8], ephemeral: bool) -> Out {
        let mut o = Out::default();
        o.string(path)
            .buffer(Some(data))
            .acls(&[])
            .boolean(ephemeral)
            .int(0);
        o
    }

    #[test]
    fn a_snapshot_loads_without_ephemerals_and_a_torn_one_is_refused() {
        let b = snapshot_bytes(&[
            ("", b"", 0),
            ("/zookeeper", b"", 0),
            ("/a", b"1", 0),
            ("/e", b"", 0x0100_0000_0000_0001),
            ("/c", b"", i64::MIN),
        ]);
        let s = parse_snapshot(&b, 7).unwrap();
        assert_eq!(
            s.nodes.keys().collect::<Vec<_>>(),
            ["/", "/a", "/c", "/zookeeper"]
        );
        assert_eq!(s.nodes["/a"], b"1");
        let mut torn = b.clone();
        let n = torn.len();
        torn[n - 20] ^= 1;
        assert!(parse_snapshot(&torn, 7).is_err());
    }

    #[test]
    fn a_log_replays_onto_the_snapshot_up_to_its_torn_tail() {
        let mut set = Out::default();
        set.string("/a").buffer(Some(b"2")).int(1);
        let mut del = Out::default();
        del.string("/b");
        let mut multi = Out::default();
        let sub = create("/m", b"", false);
        multi.int(1).int(1).buffer(Some(&sub.0));
        let mut failed = Out::default();
        failed
            .int(2)
            .int(1)
            .buffer(Some(&create("/no", b"", false).0));
        failed.int(-1).buffer(Some(&[0, 0, 0, 1]));
        let mut entries = vec![
            entry(5, 1, &create("/old", b"", false)), // before the snapshot: skipped
            entry(8, 1, &create("/b", b"", false)),
            entry(9, 5, &set),
            entry(10, 1, &create("/eph", b"", true)),
            entry(11, 2, &del),
            entry(12, 14, &multi),
            entry(13, 14, &failed),
            entry(14, 1, &create("/late", b"x", false)),
        ];
        // A torn last entry: its checksum does not hold.
        let mut torn = entry(15, 1, &create("/torn", b"", false));
        torn[3] ^= 0xff;
        entries.push(torn);
        let txns = read_log(&mut &log_bytes(&entries)[..]).unwrap();
        assert_eq!(txns.len(), 8);
        let snap = parse_snapshot(&snapshot_bytes(&[("", b"", 0), ("/a", b"1", 0)]), 7).unwrap();
        let (tree, last) = replay(snap, txns);
        assert_eq!(last, 14);
        assert_eq!(
            tree.nodes.keys().collect::<Vec<_>>(),
            ["/", "/a", "/late", "/m"]
        );
        assert_eq!(tree.nodes["/a"], b"2");
    }

    #[test]
    fn a_tar_of_version_2_loads_the_newest_intact_snapshot() {
        fn header(name: &str, size: usize) -> Vec<u8> {
            let mut h = vec![0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            let s = format!("{size:011o}\0");
            h[124..136].copy_from_slice(s.as_bytes());
            h[156] = b'0';
            h[257..262].copy_from_slice(b"ustar");
            h
        }
        let mut tar = Vec::new();
        let mut add = |name: &str, body: &[u8]| {
            tar.extend(header(name, body.len()));
            tar.extend_from_slice(body);
            tar.extend(vec![0u8; (512 - body.len() % 512) % 512]);
        };
        let old = snapshot_bytes(&[("", b"", 0)]);
        let new = snapshot_bytes(&[("", b"", 0), ("/s", b"", 0)]);
        let mut broken = snapshot_bytes(&[("", b"", 0), ("/x", b"", 0)]);
        broken.truncate(broken.len() - 3);
        add("version-2/snapshot.0", &old);
        add(
            "version-2/log.1",
            &log_bytes(&[entry(1, 1, &create("/l", b"", false))]),
        );
        add("version-2/acceptedEpoch", b"1\n");
        add("version-2/snapshot.2", &new);
        add("version-2/snapshot.9", &broken);
        add(
            "version-2/log.3",
            &log_bytes(&[entry(3, 1, &create("/t", b"", false))]),
        );
        tar.extend(vec![0u8; 1024]);
        let (nodes, base, last) = load(&tar[..]).unwrap();
        assert_eq!((base, last), (2, 3));
        assert_eq!(nodes.keys().collect::<Vec<_>>(), ["/", "/s", "/t"]);
        assert!(load(&vec![0u8; 1024][..]).is_err());
    }

    #[test]
    fn file_names_carry_zxids() {
        assert_eq!(file_zxid("version-2/snapshot.1a", "snapshot"), Some(0x1a));
        assert_eq!(file_zxid("log.100000001", "log"), Some(0x1_0000_0001));
        assert_eq!(file_zxid("version-2/snapshot.1a.gz", "snapshot"), None);
        assert_eq!(file_zxid("version-2/currentEpoch", "log"), None);
    }
}
