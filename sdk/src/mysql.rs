//! A small MySQL/MariaDB client for addons (feature `mysql`): the classic wire protocol with
//! `mysql_native_password` authentication and the text protocol (COM_QUERY), text results.
//! Enough for probes and administration (`SHOW SLAVE STATUS`, `SELECT @@read_only`,
//! `CREATE USER …`), usable by every MySQL-compatible engine. No TLS, no compression, no
//! prepared statements.
//!
//! Sockets always carry read and write timeouts. A connection that saw an I/O or protocol error
//! may be out of step with the server, so it refuses every later call instead of reading some
//! other statement's answer; a server error (an ERR packet) leaves it usable.
//!
//! ```ignore
//! let mut my = MyConn::connect(&instance.endpoint, "root", "secret", timeout)?;
//! let status = my.query("SHOW SLAVE STATUS")?;
//! let replica = !status.rows.is_empty();
//! let lag = status.first("Seconds_Behind_Master");
//! ```

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sha1::{Digest, Sha1};

use crate::{Endpoint, HookError};

const CLIENT_LONG_PASSWORD: u32 = 0x0000_0001;
const CLIENT_LONG_FLAG: u32 = 0x0000_0004;
const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
const CLIENT_TRANSACTIONS: u32 = 0x0000_2000;
const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
const CLIENT_MULTI_RESULTS: u32 = 0x0002_0000;
const CLIENT_PLUGIN_AUTH: u32 = 0x0008_0000;
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;

const COM_QUIT: u8 = 0x01;
const COM_QUERY: u8 = 0x03;
const COM_PING: u8 = 0x0e;

/// utf8mb4_general_ci.
const CHARSET_UTF8MB4: u8 = 45;
/// The largest packet this client says it accepts (the server's max_allowed_packet rules).
const MAX_PACKET: u32 = 16 << 20;
/// Payload bytes in one wire packet; a full one continues in the next.
const MAX_CHUNK: usize = 0xFF_FFFF;
/// The largest payload (and result set) this client holds in memory.
const MAX_PAYLOAD: usize = 1 << 30;
/// The most columns a result set may declare.
const MAX_COLUMNS: u64 = 1 << 16;
const NATIVE_PASSWORD: &str = "mysql_native_password";

/// Why a MySQL operation failed.
#[derive(Debug)]
pub enum MyError {
    /// The connection failed (refused, reset, closed, timed out), or was unusable after an
    /// earlier failure.
    Io(io::Error),
    /// The server answered with an error packet.
    Server {
        /// The server error number (1045 access denied, 1064 syntax error).
        code: u16,
        /// The SQLSTATE ("28000", "42000"); "HY000" when the server sent none.
        state: String,
        /// The server's message.
        message: String,
    },
    /// The server said something this client does not understand, or asked for an
    /// authentication plugin it does not speak.
    Protocol(String),
}

impl std::fmt::Display for MyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MyError::Io(e) => write!(f, "{e}"),
            MyError::Server {
                code,
                state,
                message,
            } => write!(f, "{message} (error {code}, SQLSTATE {state})"),
            MyError::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

impl std::error::Error for MyError {}

impl From<io::Error> for MyError {
    fn from(e: io::Error) -> Self {
        MyError::Io(e)
    }
}

impl MyError {
    /// The error number of a server error.
    pub fn code(&self) -> Option<u16> {
        match self {
            MyError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the server refused the credentials (1045 access denied, 1698 no such user
    /// for the plugin, 4151 account locked): it answered, so it is alive.
    pub fn is_auth_failure(&self) -> bool {
        matches!(self.code(), Some(1045 | 1698 | 4151))
    }
}

/// The mysql_native_password hash of `password` (`*` and the upper-case hex of
/// SHA1(SHA1(password))), as MySQL and MariaDB store it: `IDENTIFIED BY PASSWORD '<hash>'`
/// sets the password without the password itself reaching the server or its logs.
pub fn native_password_hash(password: &str) -> String {
    let stage2 = Sha1::digest(Sha1::digest(password.as_bytes()));
    let mut out = String::from("*");
    for b in stage2 {
        out.push_str(&format!("{b:02X}"));
    }
    out
}

/// Connection failures, "too many connections", "shutdown in progress", lock wait timeouts,
/// deadlocks and killed connections are `retryable`; authentication and other server errors
/// `failed`.
impl From<MyError> for HookError {
    fn from(e: MyError) -> Self {
        match &e {
            MyError::Io(io) => HookError::from(io),
            MyError::Server {
                code: 1040 | 1053 | 1205 | 1213 | 1927 | 2013,
                ..
            } => HookError::Retryable(e.to_string()),
            _ => HookError::Failed(e.to_string()),
        }
    }
}

/// One result row; values in text format, `None` for SQL NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(Vec<Option<String>>);

impl Row {
    /// Column `i` as text, `None` when NULL or out of range.
    pub fn get(&self, i: usize) -> Option<&str> {
        self.0.get(i).and_then(|v| v.as_deref())
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What one statement returned: a result set (`columns`, `rows`), or for a statement without
/// one, the counts of its OK packet.
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    /// Column names (the `AS` name), in order; empty without a result set.
    pub columns: Vec<String>,
    /// The rows, in the server's order.
    pub rows: Vec<Row>,
    /// Rows changed by INSERT/UPDATE/DELETE (0 for a result set).
    pub affected_rows: u64,
    /// The first AUTO_INCREMENT value an INSERT generated (0 if none).
    pub last_insert_id: u64,
    /// Number of warnings the statement raised (`SHOW WARNINGS` lists them).
    pub warnings: u16,
}

impl QueryResult {
    /// The position of `column`, compared case-insensitively as MySQL does.
    pub fn index(&self, column: &str) -> Option<usize> {
        self.columns.iter().position(|c| {
            c.eq_ignore_ascii_case(column)
                || (!(c.is_ascii() && column.is_ascii())
                    && c.to_lowercase() == column.to_lowercase())
        })
    }

    /// Row `row`'s value of `column`; `None` when NULL, or the row or column does not exist.
    pub fn value(&self, row: usize, column: &str) -> Option<&str> {
        self.rows.get(row)?.get(self.index(column)?)
    }

    /// The first row's value of `column` (see [`QueryResult::value`]).
    pub fn first(&self, column: &str) -> Option<&str> {
        self.value(0, column)
    }
}

/// An open, authenticated MySQL/MariaDB connection.
pub struct MyConn {
    stream: TcpStream,
    /// The sequence id of the next packet, sent or received.
    seq: u8,
    peer: String,
    timeout: Duration,
    server_version: String,
    connection_id: u32,
    /// Why the connection is unusable, after an I/O or protocol error.
    broken: Option<String>,
}

impl MyConn {
    /// Connect to `endpoint` as `user` with `password`; `timeout` bounds the connect handshake
    /// and every later read and write. (The TCP connect itself blocks until it succeeds or
    /// fails, see [`crate::net::connect`]: a silent host is stopped by the hook's deadline.)
    pub fn connect(
        endpoint: &Endpoint,
        user: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<MyConn, MyError> {
        let peer = endpoint.to_string();
        let stream = crate::net::connect(endpoint, timeout)
            .map_err(|e| io::Error::new(e.kind(), format!("connecting to {peer}: {e}")))?;
        let mut conn = MyConn {
            stream,
            seq: 0,
            peer,
            timeout,
            server_version: String::new(),
            connection_id: 0,
            broken: None,
        };
        if let Err(e) = conn.handshake(user, password) {
            let e = conn.located(e);
            conn.broken = Some(e.to_string());
            return Err(e);
        }
        Ok(conn)
    }

    /// Bound every later read and write by `timeout` (a long statement needs a longer one).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), MyError> {
        self.stream.set_read_timeout(Some(timeout))?;
        self.stream.set_write_timeout(Some(timeout))?;
        self.timeout = timeout;
        Ok(())
    }

    /// The `host:port` this connection goes to.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The server's version string from the handshake, e.g. `10.11.19-MariaDB-0+deb12u1-log`
    /// (without the `5.5.5-` prefix MariaDB 10 sends for old replication clients).
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    /// The server's id of this connection (`CONNECTION_ID()`, the `Id` of `SHOW PROCESSLIST`).
    pub fn connection_id(&self) -> u32 {
        self.connection_id
    }

    /// Run one statement (COM_QUERY). A statement without a result set returns empty
    /// columns/rows and affected_rows. When the statement produces several results (a stored
    /// procedure's `CALL`), the first is returned and the others are read and dropped; an
    /// error in any of them is returned instead. Never pass user input unescaped: use
    /// [`quote_literal`] and [`quote_ident`].
    pub fn query(&mut self, sql: &str) -> Result<QueryResult, MyError> {
        self.run(|c| {
            c.command(COM_QUERY, sql.as_bytes())?;
            let (first, mut more) = c.read_result()?;
            let mut later_error = None;
            while more {
                let (next, m) = c.read_result()?;
                more = m;
                if let Err(e) = next {
                    later_error.get_or_insert(e);
                }
            }
            Ok(match (first, later_error) {
                (Ok(_), Some(e)) => Err(e),
                (first, _) => first,
            })
        })
    }

    /// Run one statement and return the number of rows it changed.
    pub fn execute(&mut self, sql: &str) -> Result<u64, MyError> {
        Ok(self.query(sql)?.affected_rows)
    }

    /// Run `sql` and return the first column of the first row, if any (`None` also for NULL).
    pub fn query_value(&mut self, sql: &str) -> Result<Option<String>, MyError> {
        let result = self.query(sql)?;
        Ok(result
            .rows
            .first()
            .and_then(|r| r.get(0))
            .map(str::to_string))
    }

    /// Check that the server answers (COM_PING).
    pub fn ping(&mut self) -> Result<(), MyError> {
        self.run(|c| {
            c.command(COM_PING, &[])?;
            let p = c.recv()?;
            match p.first() {
                Some(0x00) => Ok(Ok(())),
                Some(0xFF) => Ok(Err(parse_error(&p)?)),
                _ => Err(unexpected(&p, "the answer to COM_PING")),
            }
        })
    }

    /// Run `f` unless the connection is broken. `f` returns `Err` for errors that leave the
    /// connection out of step (I/O, protocol) and `Ok(Err)` for those that do not (server
    /// errors); the first kind marks the connection broken.
    fn run<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<Result<T, MyError>, MyError>,
    ) -> Result<T, MyError> {
        if let Some(why) = &self.broken {
            return Err(MyError::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!(
                    "the connection to {} is unusable after an earlier error: {why}",
                    self.peer
                ),
            )));
        }
        match f(self) {
            Ok(result) => result,
            Err(e) => {
                let e = self.located(e);
                self.broken = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// `e` with the peer named in a protocol error.
    fn located(&self, e: MyError) -> MyError {
        match e {
            MyError::Protocol(m) => MyError::Protocol(format!("{}: {m}", self.peer)),
            e => e,
        }
    }

    fn handshake(&mut self, user: &str, password: &str) -> Result<(), MyError> {
        let hello = parse_handshake(&self.recv()?)?;
        for (flag, what) in [
            (CLIENT_PROTOCOL_41, "protocol 4.1"),
            (
                CLIENT_SECURE_CONNECTION,
                "secure connection (4.1 authentication)",
            ),
        ] {
            if hello.capabilities & flag == 0 {
                return Err(MyError::Protocol(format!(
                    "the server ({}) does not support {what}",
                    hello.version
                )));
            }
        }
        if user.contains('\0') {
            return Err(MyError::Protocol(
                "the user name contains a NUL byte".into(),
            ));
        }
        self.server_version = hello.version;
        self.connection_id = hello.connection_id;
        if hello.plugin == NATIVE_PASSWORD && hello.scramble.len() != 20 {
            return Err(MyError::Protocol(format!(
                "the handshake carries a {}-byte scramble, not 20",
                hello.scramble.len()
            )));
        }
        let capabilities = CLIENT_LONG_PASSWORD
            | CLIENT_PROTOCOL_41
            | CLIENT_SECURE_CONNECTION
            | (hello.capabilities
                & (CLIENT_LONG_FLAG
                    | CLIENT_TRANSACTIONS
                    | CLIENT_MULTI_RESULTS
                    | CLIENT_PLUGIN_AUTH));
        // Answer with mysql_native_password whatever the server's default plugin: when the
        // account uses another one, the server asks to switch.
        let auth = native_password(password.as_bytes(), &hello.scramble);
        let mut response = Vec::with_capacity(64 + user.len());
        response.extend_from_slice(&capabilities.to_le_bytes());
        response.extend_from_slice(&MAX_PACKET.to_le_bytes());
        response.push(CHARSET_UTF8MB4);
        response.extend_from_slice(&[0; 23]);
        response.extend_from_slice(user.as_bytes());
        response.push(0);
        response.push(auth.len() as u8);
        response.extend_from_slice(&auth);
        if capabilities & CLIENT_PLUGIN_AUTH != 0 {
            response.extend_from_slice(NATIVE_PASSWORD.as_bytes());
            response.push(0);
        }
        self.send(&response)?;
        // Only a misbehaving server switches twice; stop it from switching forever.
        for _ in 0..3 {
            let p = self.recv()?;
            match p.first() {
                Some(0x00) => return Ok(()),
                Some(0xFF) => return Err(parse_error(&p)?),
                Some(0xFE) => {
                    let (plugin, scramble) = parse_auth_switch(&p)?;
                    if plugin != NATIVE_PASSWORD {
                        return Err(MyError::Protocol(format!(
                            "the server asks for authentication plugin '{plugin}'; this client \
                             speaks only {NATIVE_PASSWORD}"
                        )));
                    }
                    if scramble.len() != 20 {
                        return Err(MyError::Protocol(format!(
                            "the authentication switch carries a {}-byte scramble, not 20",
                            scramble.len()
                        )));
                    }
                    self.send(&native_password(password.as_bytes(), scramble))?;
                }
                _ => return Err(unexpected(&p, "authentication")),
            }
        }
        Err(MyError::Protocol(
            "the server keeps switching authentication plugins".into(),
        ))
    }

    /// Read one result: the statement's outcome and whether more results follow.
    fn read_result(&mut self) -> Result<(Result<QueryResult, MyError>, bool), MyError> {
        let p = self.recv()?;
        match p.first() {
            Some(0x00) => {
                let ok = parse_ok(&p)?;
                let result = QueryResult {
                    affected_rows: ok.affected_rows,
                    last_insert_id: ok.last_insert_id,
                    warnings: ok.warnings,
                    ..QueryResult::default()
                };
                Ok((Ok(result), ok.status & SERVER_MORE_RESULTS_EXISTS != 0))
            }
            Some(0xFF) => Ok((Err(parse_error(&p)?), false)),
            Some(0xFB) => Err(MyError::Protocol(
                "the server asks for a local file (LOAD DATA LOCAL), which this client does \
                 not send"
                    .into(),
            )),
            Some(_) => self.read_result_set(&p),
            None => Err(MyError::Protocol("an empty response packet".into())),
        }
    }

    /// Read a result set whose first packet (the column count) is `head`.
    fn read_result_set(
        &mut self,
        head: &[u8],
    ) -> Result<(Result<QueryResult, MyError>, bool), MyError> {
        let count = Reader::new(head, "column count").lenenc()?.unwrap_or(0);
        if count == 0 || count > MAX_COLUMNS {
            return Err(MyError::Protocol(format!(
                "a result set with {count} columns"
            )));
        }
        let count = count as usize;
        let mut result = QueryResult {
            columns: Vec::with_capacity(count),
            ..QueryResult::default()
        };
        for _ in 0..count {
            let p = self.recv()?;
            result.columns.push(column_name(&p)?);
        }
        let p = self.recv()?;
        if !is_eof(&p) {
            return Err(unexpected(&p, "the end of the column definitions"));
        }
        let mut total = 0usize;
        let mut bad_value = None;
        loop {
            let p = self.recv()?;
            if is_eof(&p) {
                let (warnings, status) = parse_eof(&p)?;
                result.warnings = warnings;
                let more = status & SERVER_MORE_RESULTS_EXISTS != 0;
                return Ok((bad_value.map_or(Ok(result), Err), more));
            }
            if p.first() == Some(&0xFF) {
                return Ok((Err(parse_error(&p)?), false));
            }
            total += p.len();
            if total > MAX_PAYLOAD {
                return Err(MyError::Protocol(format!(
                    "a result set over {} MiB",
                    MAX_PAYLOAD >> 20
                )));
            }
            let values = parse_row(&p, count)?;
            if bad_value.is_some() {
                continue;
            }
            let mut row = Vec::with_capacity(count);
            for (i, v) in values.into_iter().enumerate() {
                match v.map(|b| String::from_utf8(b.to_vec())).transpose() {
                    Ok(v) => row.push(v),
                    Err(_) => {
                        bad_value = Some(MyError::Protocol(format!(
                            "column '{}' of row {} is not UTF-8 text",
                            result.columns[i],
                            result.rows.len() + 1
                        )));
                        break;
                    }
                }
            }
            if bad_value.is_none() {
                result.rows.push(Row(row));
            }
        }
    }

    /// Start a command: a new sequence, then its packet.
    fn command(&mut self, command: u8, arg: &[u8]) -> Result<(), MyError> {
        self.seq = 0;
        let mut payload = Vec::with_capacity(1 + arg.len());
        payload.push(command);
        payload.extend_from_slice(arg);
        self.send(&payload)
    }

    fn send(&mut self, payload: &[u8]) -> Result<(), MyError> {
        let bytes = frame(payload, &mut self.seq);
        self.stream
            .write_all(&bytes)
            .and_then(|()| self.stream.flush())
            .map_err(|e| MyError::Io(self.io_error("writing to", e)))
    }

    fn recv(&mut self) -> Result<Vec<u8>, MyError> {
        read_packet(&mut self.stream, &mut self.seq).map_err(|e| match e {
            MyError::Io(e) => MyError::Io(self.io_error("reading from", e)),
            e => e,
        })
    }

    /// `e` with the peer named, and a read timeout (`WouldBlock` on Unix) as `TimedOut`.
    fn io_error(&self, doing: &str, e: io::Error) -> io::Error {
        let peer = &self.peer;
        if crate::engine::is_wasi_timeout(&e) {
            return io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{doing} {peer}: {}", crate::engine::NO_ANSWER_IN_TIME),
            );
        }
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{doing} {peer}: no progress within {:?}", self.timeout),
            ),
            io::ErrorKind::UnexpectedEof => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{doing} {peer}: the server closed the connection"),
            ),
            kind => io::Error::new(kind, format!("{doing} {peer}: {e}")),
        }
    }
}

impl Drop for MyConn {
    fn drop(&mut self) {
        if self.broken.is_none() {
            let _ = self.stream.write_all(&frame(&[COM_QUIT], &mut 0));
        }
    }
}

/// `s` as a single-quoted SQL string literal with backslash escapes: `'it\'s'`. Safe for
/// MariaDB's and MySQL's default `sql_mode` and this client's utf8mb4 connection; it assumes
/// `NO_BACKSLASH_ESCAPES` is off (with it on, a backslash would end up doubled in the value
/// and a quote would end the literal).
pub fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\x1a' => out.push_str("\\Z"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `s` as a SQL identifier: `` `my``table` ``.
pub fn quote_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// The mysql_native_password answer to `scramble`:
/// SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password))); empty for an empty password.
fn native_password(password: &[u8], scramble: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = Sha1::digest(password);
    let stage2 = Sha1::digest(stage1);
    let mut hasher = Sha1::new();
    hasher.update(scramble);
    hasher.update(stage2);
    let stage3 = hasher.finalize();
    stage1
        .iter()
        .zip(stage3.iter())
        .map(|(a, b)| a ^ b)
        .collect()
}

/// `payload` as wire packets, numbered from `seq` on: full packets of 0xFFFFFF bytes continue
/// in the next one, and the last is shorter (empty if need be).
fn frame(payload: &[u8], seq: &mut u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4 * (payload.len() / MAX_CHUNK + 1));
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_CHUNK);
        out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        out.push(*seq);
        *seq = seq.wrapping_add(1);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        if n < MAX_CHUNK {
            return out;
        }
    }
}

/// Read one payload, joining continued packets, checking that they are numbered from `seq`.
fn read_packet(r: &mut impl Read, seq: &mut u8) -> Result<Vec<u8>, MyError> {
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; 4];
        r.read_exact(&mut header)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
        if header[3] != *seq {
            return Err(MyError::Protocol(format!(
                "packet out of order: sequence id {} where {} was expected",
                header[3], *seq
            )));
        }
        *seq = seq.wrapping_add(1);
        let start = payload.len();
        if start + len > MAX_PAYLOAD {
            return Err(MyError::Protocol(format!(
                "a packet payload over {} MiB",
                MAX_PAYLOAD >> 20
            )));
        }
        payload.resize(start + len, 0);
        r.read_exact(&mut payload[start..])?;
        if len < MAX_CHUNK {
            return Ok(payload);
        }
    }
}

/// A bounds-checked reader over one payload; running past the end is a protocol error that
/// names the part being read.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], MyError> {
        let remaining = self.buf.len() - self.pos;
        if n > remaining {
            return Err(MyError::Protocol(format!(
                "truncated {}: {n} bytes needed at offset {} of {}",
                self.what,
                self.pos,
                self.buf.len()
            )));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, MyError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, MyError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, MyError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A little-endian integer of `n` ≤ 8 bytes.
    fn uint(&mut self, n: usize) -> Result<u64, MyError> {
        let mut bytes = [0u8; 8];
        bytes[..n].copy_from_slice(self.take(n)?);
        Ok(u64::from_le_bytes(bytes))
    }

    /// A length-encoded integer; `None` for 0xFB (NULL in a row).
    fn lenenc(&mut self) -> Result<Option<u64>, MyError> {
        Ok(Some(match self.u8()? {
            n @ 0..=0xFA => u64::from(n),
            0xFB => return Ok(None),
            0xFC => self.uint(2)?,
            0xFD => self.uint(3)?,
            0xFE => self.uint(8)?,
            0xFF => {
                return Err(MyError::Protocol(format!(
                    "0xFF as a length-encoded integer in {}",
                    self.what
                )))
            }
        }))
    }

    /// A length-encoded string; `None` for NULL.
    fn lenenc_bytes(&mut self) -> Result<Option<&'a [u8]>, MyError> {
        match self.lenenc()? {
            None => Ok(None),
            Some(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                self.take(n).map(Some)
            }
        }
    }

    /// Bytes up to a NUL (consumed, not returned).
    fn nul_terminated(&mut self) -> Result<&'a [u8], MyError> {
        let rest = &self.buf[self.pos..];
        match rest.iter().position(|&b| b == 0) {
            Some(n) => {
                self.pos += n + 1;
                Ok(&rest[..n])
            }
            None => Err(MyError::Protocol(format!(
                "truncated {}: a string without its NUL terminator",
                self.what
            ))),
        }
    }

    /// Everything not read yet.
    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.pos..];
        self.pos = self.buf.len();
        rest
    }
}

/// What the server's initial handshake packet says.
#[derive(Debug)]
struct Handshake {
    version: String,
    connection_id: u32,
    capabilities: u32,
    scramble: Vec<u8>,
    plugin: String,
}

/// Parse a HandshakeV10 packet (or the ERR packet a server sends instead, e.g. too many
/// connections).
fn parse_handshake(p: &[u8]) -> Result<Handshake, MyError> {
    let mut r = Reader::new(p, "handshake");
    match r.u8()? {
        10 => {}
        0xFF => return Err(parse_error(p)?),
        v => {
            return Err(MyError::Protocol(format!(
                "handshake protocol version {v}, not 10"
            )))
        }
    }
    let version = String::from_utf8_lossy(r.nul_terminated()?);
    let version = match version.strip_prefix("5.5.5-") {
        Some(v) if v.contains("MariaDB") => v.to_string(),
        _ => version.into_owned(),
    };
    let connection_id = r.u32()?;
    let mut scramble = r.take(8)?.to_vec();
    r.take(1)?; // filler
    let mut capabilities = u32::from(r.u16()?);
    let mut plugin = String::new();
    if !r.is_empty() {
        r.take(1)?; // character set
        r.take(2)?; // status flags
        capabilities |= u32::from(r.u16()?) << 16;
        let data_len = usize::from(r.u8()?);
        r.take(10)?; // reserved (MariaDB: extended capabilities)
        if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let part2 = r.take(data_len.saturating_sub(8).max(13))?;
            scramble.extend_from_slice(part2.strip_suffix(&[0]).unwrap_or(part2));
        }
        if capabilities & CLIENT_PLUGIN_AUTH != 0 {
            // Some servers leave out the final NUL.
            let rest = r.rest();
            let name = rest.split(|&b| b == 0).next().unwrap_or(rest);
            plugin = String::from_utf8_lossy(name).into_owned();
        }
    }
    Ok(Handshake {
        version,
        connection_id,
        capabilities,
        scramble,
        plugin,
    })
}

/// An AuthSwitchRequest: the plugin's name and its data (the scramble, without the final NUL).
fn parse_auth_switch(p: &[u8]) -> Result<(String, &[u8]), MyError> {
    if p.len() == 1 {
        // The pre-4.1 "use the old password hash" request.
        return Ok(("mysql_old_password".into(), &[]));
    }
    let mut r = Reader::new(p, "authentication switch request");
    r.take(1)?;
    let plugin = String::from_utf8_lossy(r.nul_terminated()?).into_owned();
    let data = r.rest();
    Ok((plugin, data.strip_suffix(&[0]).unwrap_or(data)))
}

/// An ERR packet as the error it carries. `Err` only when the packet itself is malformed.
fn parse_error(p: &[u8]) -> Result<MyError, MyError> {
    let mut r = Reader::new(p, "error packet");
    r.take(1)?;
    let code = r.u16()?;
    let mut state = "HY000".to_string();
    if r.buf.get(r.pos) == Some(&b'#') {
        r.take(1)?;
        state = String::from_utf8_lossy(r.take(5)?).into_owned();
    }
    let message = String::from_utf8_lossy(r.rest()).into_owned();
    Ok(MyError::Server {
        code,
        state,
        message,
    })
}

/// The parts of an OK packet this client uses.
struct OkPacket {
    affected_rows: u64,
    last_insert_id: u64,
    status: u16,
    warnings: u16,
}

fn parse_ok(p: &[u8]) -> Result<OkPacket, MyError> {
    let mut r = Reader::new(p, "OK packet");
    r.take(1)?;
    let mut int = || {
        r.lenenc()?.ok_or_else(|| {
            MyError::Protocol("NULL as a length-encoded integer in an OK packet".into())
        })
    };
    let affected_rows = int()?;
    let last_insert_id = int()?;
    Ok(OkPacket {
        affected_rows,
        last_insert_id,
        status: r.u16()?,
        warnings: r.u16()?,
    })
}

/// Whether `p` is an EOF packet (a row may start with 0xFE too, but is then 9 bytes or more).
fn is_eof(p: &[u8]) -> bool {
    p.first() == Some(&0xFE) && p.len() < 9
}

/// An EOF packet's warning count and status flags.
fn parse_eof(p: &[u8]) -> Result<(u16, u16), MyError> {
    let mut r = Reader::new(p, "EOF packet");
    r.take(1)?;
    Ok((r.u16()?, r.u16()?))
}

/// The `name` of a ColumnDefinition41 packet.
fn column_name(p: &[u8]) -> Result<String, MyError> {
    let mut r = Reader::new(p, "column definition");
    for _ in 0..4 {
        r.lenenc_bytes()?; // catalog, schema, table, original table
    }
    let name = r.lenenc_bytes()?.unwrap_or_default();
    Ok(String::from_utf8_lossy(name).into_owned())
}

/// The `count` values of a text-protocol row.
fn parse_row(p: &[u8], count: usize) -> Result<Vec<Option<&[u8]>>, MyError> {
    let mut r = Reader::new(p, "row");
    let mut values = Vec::with_capacity(count);
    for _ in 0..count {
        values.push(r.lenenc_bytes()?);
    }
    if !r.is_empty() {
        return Err(MyError::Protocol(format!(
            "a row with more than the {count} declared values"
        )));
    }
    Ok(values)
}

/// A protocol error for packet `p` arriving where `during` was expected.
fn unexpected(p: &[u8], during: &str) -> MyError {
    match p.first() {
        Some(b) => MyError::Protocol(format!(
            "unexpected packet (0x{b:02X}, {} bytes) during {during}",
            p.len()
        )),
        None => MyError::Protocol(format!("an empty packet during {during}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// `n` as a length-encoded integer (the client never sends one; the tests build packets).
    fn lenenc(n: u64) -> Vec<u8> {
        match n {
            0..=250 => vec![n as u8],
            251..=0xFFFF => [&[0xFC][..], &(n as u16).to_le_bytes()].concat(),
            0x1_0000..=0xFF_FFFF => [&[0xFD][..], &(n as u32).to_le_bytes()[..3]].concat(),
            _ => [&[0xFE][..], &n.to_le_bytes()].concat(),
        }
    }

    fn decode(bytes: &[u8]) -> Result<Option<u64>, MyError> {
        Reader::new(bytes, "test").lenenc()
    }

    #[test]
    fn native_password_hashes_as_the_server_computes_them() {
        // SELECT PASSWORD('secret') on MariaDB 10.11.
        assert_eq!(
            native_password_hash("secret"),
            "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"
        );
    }

    #[test]
    fn length_encoded_integers_of_every_width() {
        let cases: &[(u64, &[u8])] = &[
            (0, &[0x00]),
            (250, &[0xFA]),
            (251, &[0xFC, 0xFB, 0x00]),
            (0xFFFF, &[0xFC, 0xFF, 0xFF]),
            (0x1_0000, &[0xFD, 0x00, 0x00, 0x01]),
            (0xFF_FFFF, &[0xFD, 0xFF, 0xFF, 0xFF]),
            (0x100_0000, &[0xFE, 0, 0, 0, 1, 0, 0, 0, 0]),
            (
                u64::MAX,
                &[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
            ),
        ];
        for (n, bytes) in cases {
            assert_eq!(lenenc(*n), *bytes, "encoding {n}");
            assert_eq!(decode(bytes).unwrap(), Some(*n), "decoding {bytes:02X?}");
        }
        assert_eq!(decode(&[0xFB]).unwrap(), None);
        for bad in [
            &[][..],
            &[0xFF],
            &[0xFC, 0x01],
            &[0xFD, 1, 2],
            &[0xFE, 1, 2, 3, 4, 5, 6, 7],
        ] {
            assert!(
                matches!(decode(bad), Err(MyError::Protocol(_))),
                "{bad:02X?} decodes"
            );
        }
        let mut r = Reader::new(&[0x03, b'a', b'b'], "test");
        assert!(matches!(r.lenenc_bytes(), Err(MyError::Protocol(_))));
        let mut r = Reader::new(
            &[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
            "test",
        );
        assert!(matches!(r.lenenc_bytes(), Err(MyError::Protocol(_))));
    }

    #[test]
    fn native_password_scramble_matches_an_independent_computation() {
        // python3: s1 = sha1(b"secret"); s3 = sha1(bytes(range(1, 21)) + sha1(s1));
        //          bytes(a ^ b for a, b in zip(s1, s3)).hex()
        let scramble: Vec<u8> = (1..=20).collect();
        let expected = "b32bb3a583e1340c0a1108d58b1be49781ad8c2f";
        let got: String = native_password(b"secret", &scramble)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, expected);
        assert!(native_password(b"", &scramble).is_empty());
    }

    #[test]
    fn quoting_escapes_what_mariadb_needs() {
        assert_eq!(quote_literal("it's"), r"'it\'s'");
        assert_eq!(
            quote_literal("a\\b\"c\0d\ne\rf\x1ag żółw"),
            r#"'a\\b\"c\0d\ne\rf\Zg żółw'"#
        );
        assert_eq!(quote_literal(""), "''");
        assert_eq!(quote_ident("my`t"), "`my``t`");
        assert_eq!(quote_ident("plain"), "`plain`");
    }

    /// A MariaDB 10.11 handshake as sent on the wire (payload only).
    const MARIADB_HANDSHAKE: &[u8] = b"\n5.5.5-10.11.19-MariaDB-0+deb12u1\x00\x05\x00\x00\x00\
        R:g{Uwxq\x00\xfe\xf7\x08\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00\
        R&b>LFZqLc2k\x00mysql_native_password\x00";

    #[test]
    fn handshake_parses_and_truncations_are_protocol_errors() {
        let h = parse_handshake(MARIADB_HANDSHAKE).unwrap();
        assert_eq!(h.version, "10.11.19-MariaDB-0+deb12u1");
        assert_eq!(h.connection_id, 5);
        assert_eq!(h.scramble, b"R:g{UwxqR&b>LFZqLc2k");
        assert_eq!(h.plugin, NATIVE_PASSWORD);
        assert_eq!(h.capabilities, 0x81FF_F7FE);
        for len in 0..MARIADB_HANDSHAKE.len() {
            match parse_handshake(&MARIADB_HANDSHAKE[..len]) {
                Err(MyError::Protocol(_)) => {}
                // Ending right after the lower capability flags is a valid (old) handshake,
                // and a plugin name may lack its NUL.
                Ok(_) if len == 49 || len >= 78 => {}
                other => panic!("{len} bytes: {other:?}"),
            }
        }
        let err = parse_handshake(b"\xff\x10\x04Too many connections").unwrap_err();
        assert_eq!(err.code(), Some(1040));
        assert!(matches!(
            parse_handshake(b"\x09abc\0"),
            Err(MyError::Protocol(_))
        ));
    }

    #[test]
    fn packets_split_at_16_mib_and_join_again() {
        for size in [0, 1, MAX_CHUNK - 1, MAX_CHUNK, MAX_CHUNK + 5, 2 * MAX_CHUNK] {
            let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let mut seq = 7;
            let wire = frame(&payload, &mut seq);
            assert_eq!(
                wire.len(),
                size + 4 * (size / MAX_CHUNK + 1),
                "{size} bytes"
            );
            assert_eq!(seq, 7 + (size / MAX_CHUNK + 1) as u8);
            let mut seq = 7;
            let back = read_packet(&mut &wire[..], &mut seq).unwrap();
            assert!(back == payload, "{size} bytes come back changed");
            assert_eq!(seq, 7 + (size / MAX_CHUNK + 1) as u8);
        }
        let wire = frame(b"hello", &mut 3);
        let err = read_packet(&mut &wire[..], &mut 4).unwrap_err();
        assert!(err.to_string().contains("sequence id 3 where 4"), "{err}");
        let err = read_packet(&mut &wire[..wire.len() - 1], &mut 3).unwrap_err();
        assert!(matches!(err, MyError::Io(ref e) if e.kind() == io::ErrorKind::UnexpectedEof));
    }

    #[test]
    fn result_packets_parse_and_malformed_ones_are_errors() {
        let err = parse_error(b"\xff\x15\x04#28000Access denied").unwrap();
        assert_eq!(
            err.to_string(),
            "Access denied (error 1045, SQLSTATE 28000)"
        );
        let err = parse_error(b"\xff\x10\x04Too many connections").unwrap();
        assert!(matches!(err, MyError::Server { code: 1040, ref state, .. } if state == "HY000"));
        assert!(parse_error(b"\xff\x15").is_err());

        let ok = parse_ok(b"\x00\x03\xfc\x00\x01\x02\x00\x01\x00").unwrap();
        assert_eq!((ok.affected_rows, ok.last_insert_id), (3, 256));
        assert_eq!((ok.status, ok.warnings), (2, 1));
        assert!(parse_ok(b"\x00\x03\xfc\x00").is_err());

        let row = parse_row(b"\x01a\xfb\x00", 3).unwrap();
        assert_eq!(row, vec![Some(&b"a"[..]), None, Some(&b""[..])]);
        assert!(parse_row(b"\x05ab", 1).is_err());
        assert!(parse_row(b"\x01a\x01b", 1).is_err());
        assert!(parse_row(b"\x01a", 2).is_err());
        assert!(is_eof(b"\xfe\x00\x00\x02\x00"));
        assert!(!is_eof(b"\xfe\x00\x00\x00\x00\x00\x00\x00\x00"));
        assert!(column_name(b"\x03def").is_err());
    }

    #[test]
    fn server_errors_map_to_hook_errors_by_code() {
        let server = |code| MyError::Server {
            code,
            state: "HY000".into(),
            message: "m".into(),
        };
        for code in [1040, 1053, 1205, 1213, 1927, 2013] {
            assert!(
                matches!(HookError::from(server(code)), HookError::Retryable(_)),
                "{code}"
            );
        }
        assert!(
            matches!(HookError::from(server(1045)), HookError::Failed(m) if m == "m (error 1045, SQLSTATE HY000)")
        );
        assert!(matches!(
            HookError::from(MyError::Protocol("x".into())),
            HookError::Failed(_)
        ));
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        assert!(matches!(
            HookError::from(MyError::Io(refused)),
            HookError::Retryable(_)
        ));
    }

    #[test]
    fn result_lookups_by_column_name() {
        let result = QueryResult {
            columns: vec!["Slave_IO_Running".into(), "Äpfel".into()],
            rows: vec![Row(vec![Some("Yes".into()), None])],
            ..QueryResult::default()
        };
        assert_eq!(result.index("slave_io_running"), Some(0));
        assert_eq!(result.index("äPFEL"), Some(1));
        assert_eq!(result.first("SLAVE_IO_RUNNING"), Some("Yes"));
        assert_eq!(result.first("Äpfel"), None);
        assert_eq!(result.value(1, "Slave_IO_Running"), None);
        assert_eq!(result.index("missing"), None);
    }

    /// One step of a scripted server.
    enum Step {
        /// Send this payload.
        Send(Vec<u8>),
        /// Read a packet; check its payload if given.
        Recv(Option<Vec<u8>>),
        /// Read a command packet (the sequence restarts) and check its payload.
        Command(Vec<u8>),
    }

    /// A server on a loopback port that plays `script` to the first client.
    fn fake_server(script: Vec<Step>) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut seq = 0;
            for step in script {
                match step {
                    Step::Send(p) => s.write_all(&frame(&p, &mut seq)).unwrap(),
                    Step::Recv(expect) => {
                        let got = read_packet(&mut s, &mut seq).unwrap();
                        if let Some(expect) = expect {
                            assert_eq!(got, expect);
                        }
                    }
                    Step::Command(expect) => {
                        seq = 0;
                        assert_eq!(read_packet(&mut s, &mut seq).unwrap(), expect);
                    }
                }
            }
            // Hold the connection until the client goes.
            let _ = s.read(&mut [0u8; 64]);
        });
        Endpoint {
            host: "127.0.0.1".into(),
            port,
        }
    }

    /// A MySQL 8 handshake (connection 42) offering `plugin` with the scramble 1..=20.
    fn hello(plugin: &str) -> Vec<u8> {
        let mut p = b"\x0a8.0.36\x00\x2a\x00\x00\x00".to_vec();
        p.extend(1..=8);
        p.extend_from_slice(b"\x00\xff\xf7\x2d\x02\x00\xff\xdf\x15");
        p.extend_from_slice(&[0; 10]);
        p.extend((9..=20).chain([0]));
        p.extend_from_slice(plugin.as_bytes());
        p.push(0);
        p
    }

    const OK: &[u8] = b"\x00\x00\x00\x02\x00\x00\x00";

    #[test]
    fn auth_switch_to_native_password_and_multi_results() {
        let scramble: Vec<u8> = (101..=120).collect();
        let mut switch = b"\xfemysql_native_password\x00".to_vec();
        switch.extend_from_slice(&scramble);
        switch.push(0);
        let column =
            b"\x03def\x00\x00\x00\x01x\x00\x0c\x3f\x00\x15\x00\x00\x00\x08\x81\x00\x00\x00\x00";
        // The EOF after the rows says "more results": the final OK of the CALL follows.
        let more = b"\xfe\x00\x00\x0a\x00";
        let endpoint = fake_server(vec![
            Step::Send(hello("caching_sha2_password")),
            Step::Recv(None),
            Step::Send(switch),
            Step::Recv(Some(native_password(b"pw", &scramble))),
            Step::Send(OK.to_vec()),
            Step::Command(b"\x03CALL p()".to_vec()),
            Step::Send(b"\x01".to_vec()),
            Step::Send(column.to_vec()),
            Step::Send(b"\xfe\x00\x00\x02\x00".to_vec()),
            Step::Send(b"\x0242".to_vec()),
            Step::Send(more.to_vec()),
            Step::Send(OK.to_vec()),
            Step::Command(b"\x0e".to_vec()),
            Step::Send(OK.to_vec()),
        ]);
        let mut conn = MyConn::connect(&endpoint, "app", "pw", Duration::from_secs(2)).unwrap();
        assert_eq!(conn.server_version(), "8.0.36");
        assert_eq!(conn.connection_id(), 42);
        let result = conn.query("CALL p()").unwrap();
        assert_eq!(result.columns, ["x"]);
        assert_eq!(result.rows, [Row(vec![Some("42".into())])]);
        conn.ping().unwrap();
    }

    #[test]
    fn an_unknown_auth_plugin_is_named() {
        let endpoint = fake_server(vec![
            Step::Send(hello(NATIVE_PASSWORD)),
            Step::Recv(None),
            Step::Send(b"\xfeclient_ed25519\x00abc\x00".to_vec()),
        ]);
        let err = MyConn::connect(&endpoint, "app", "pw", Duration::from_secs(2))
            .err()
            .unwrap();
        assert!(
            matches!(err, MyError::Protocol(ref m) if m.contains("'client_ed25519'")),
            "{err}"
        );
    }

    #[test]
    fn a_malformed_row_breaks_the_connection() {
        let column =
            b"\x03def\x00\x00\x00\x01x\x00\x0c\x3f\x00\x15\x00\x00\x00\x08\x81\x00\x00\x00\x00";
        let endpoint = fake_server(vec![
            Step::Send(hello(NATIVE_PASSWORD)),
            Step::Recv(None),
            Step::Send(OK.to_vec()),
            Step::Command(b"\x03SELECT x".to_vec()),
            Step::Send(b"\x01".to_vec()),
            Step::Send(column.to_vec()),
            Step::Send(b"\xfe\x00\x00\x02\x00".to_vec()),
            Step::Send(b"\x09short".to_vec()),
        ]);
        let mut conn = MyConn::connect(&endpoint, "app", "", Duration::from_secs(2)).unwrap();
        let err = conn.query("SELECT x").unwrap_err();
        assert!(
            matches!(err, MyError::Protocol(ref m) if m.contains("truncated row")),
            "{err}"
        );
        let err = conn.ping().unwrap_err();
        assert!(
            matches!(err, MyError::Io(ref e) if e.kind() == io::ErrorKind::ConnectionAborted),
            "{err}"
        );
        assert!(err.to_string().contains("truncated row"), "{err}");
    }
}
