//! A small PostgreSQL client for addons (feature `postgres`): startup with trust, password, MD5
//! or SCRAM-SHA-256 authentication, and the simple query protocol with text results. Enough
//! for probes and administration (`SELECT pg_is_in_recovery()`, `CREATE ROLE …`), usable by
//! every PostgreSQL-compatible engine. Sockets always carry read and write timeouts.
//!
//! ```ignore
//! let mut pg = PgConn::connect(&instance.endpoint, "postgres", Some("secret"), "postgres", timeout)?;
//! let rows = pg.query("SELECT pg_is_in_recovery()")?;
//! let in_recovery = rows[0].get(0) == Some("t");
//! ```

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::{backend, frontend};

use crate::{Endpoint, HookError};

/// Why a PostgreSQL operation failed.
#[derive(Debug)]
pub enum PgError {
    /// The connection failed (refused, reset, timed out).
    Io(io::Error),
    /// The server answered with an error.
    Server {
        /// SQLSTATE code ("28P01" bad password, "57P03" cannot connect now).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server said something this client does not understand.
    Protocol(String),
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PgError::Io(e) => write!(f, "{e}"),
            PgError::Server { code, message } => write!(f, "{message} (SQLSTATE {code})"),
            PgError::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

impl std::error::Error for PgError {}

impl From<io::Error> for PgError {
    fn from(e: io::Error) -> Self {
        PgError::Io(e)
    }
}

impl PgError {
    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            PgError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the server refused the credentials (SQLSTATE class 28: a wrong password, a
    /// role that cannot log in or does not exist): it answered, so it is alive.
    pub fn is_auth_failure(&self) -> bool {
        self.code().is_some_and(|c| c.starts_with("28"))
    }
}

/// The SCRAM-SHA-256 verifier of `password` (random salt, 4096 iterations), as PostgreSQL
/// stores it: `ALTER ROLE … PASSWORD '<verifier>'` sets the password without the password
/// itself ever reaching the server, so no server log (`log_statement`, an error's STATEMENT
/// line) can show it.
pub fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// Connection failures and "starting up / shutting down / too many connections" are
/// `retryable`; authentication and other server errors `failed`.
impl From<PgError> for HookError {
    fn from(e: PgError) -> Self {
        match &e {
            PgError::Io(io) => HookError::from(io),
            PgError::Server { code, .. }
                if code.starts_with("57P") || code == "53300" || code.starts_with("08") =>
            {
                HookError::Retryable(e.to_string())
            }
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

/// An open, authenticated PostgreSQL connection.
pub struct PgConn {
    stream: TcpStream,
    buf: BytesMut,
    peer: String,
}

impl PgConn {
    /// Connect to `endpoint` as `user` (with `password` if the server asks) to `database`;
    /// `timeout` bounds every read and write.
    pub fn connect(
        endpoint: &Endpoint,
        user: &str,
        password: Option<&str>,
        database: &str,
        timeout: Duration,
    ) -> Result<PgConn, PgError> {
        let stream = crate::net::connect(endpoint, timeout)?;
        let mut conn = PgConn {
            stream,
            buf: BytesMut::with_capacity(8192),
            peer: endpoint.to_string(),
        };
        let mut out = BytesMut::new();
        frontend::startup_message(
            [
                ("user", user),
                ("database", database),
                ("application_name", "shoal"),
                ("client_encoding", "UTF8"),
            ],
            &mut out,
        )?;
        conn.send(&out)?;
        conn.authenticate(user, password)?;
        // Drain parameter status and key data up to ReadyForQuery.
        loop {
            match conn.next()? {
                backend::Message::ReadyForQuery(_) => return Ok(conn),
                backend::Message::ErrorResponse(body) => return Err(server_error(&body)),
                _ => {}
            }
        }
    }

    /// Bound every later read and write by `timeout` (a long statement needs a longer one).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), PgError> {
        self.stream.set_read_timeout(Some(timeout))?;
        self.stream.set_write_timeout(Some(timeout))?;
        Ok(())
    }

    /// The `host:port` this connection goes to.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    fn authenticate(&mut self, user: &str, password: Option<&str>) -> Result<(), PgError> {
        let need_password = || {
            password.ok_or_else(|| PgError::Server {
                code: "28000".into(),
                message: format!("the server asks for a password for {user} and none was given"),
            })
        };
        let mut out = BytesMut::new();
        match self.next()? {
            backend::Message::AuthenticationOk => return Ok(()),
            backend::Message::AuthenticationCleartextPassword => {
                frontend::password_message(need_password()?.as_bytes(), &mut out)?;
                self.send(&out)?;
            }
            backend::Message::AuthenticationMd5Password(body) => {
                let hash = postgres_protocol::authentication::md5_hash(
                    user.as_bytes(),
                    need_password()?.as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut out)?;
                self.send(&out)?;
            }
            backend::Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut scram = false;
                while let Some(m) = mechanisms.next()? {
                    scram |= m == SCRAM_SHA_256;
                }
                if !scram {
                    return Err(PgError::Protocol(
                        "the server offers no SASL mechanism this client speaks (SCRAM-SHA-256)"
                            .into(),
                    ));
                }
                let mut sc =
                    ScramSha256::new(need_password()?.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, sc.message(), &mut out)?;
                self.send(&out)?;
                match self.next()? {
                    backend::Message::AuthenticationSaslContinue(body) => sc.update(body.data())?,
                    backend::Message::ErrorResponse(body) => return Err(server_error(&body)),
                    _ => return Err(PgError::Protocol("unexpected message during SCRAM".into())),
                }
                out.clear();
                frontend::sasl_response(sc.message(), &mut out)?;
                self.send(&out)?;
                match self.next()? {
                    backend::Message::AuthenticationSaslFinal(body) => sc.finish(body.data())?,
                    backend::Message::ErrorResponse(body) => return Err(server_error(&body)),
                    _ => return Err(PgError::Protocol("unexpected message during SCRAM".into())),
                }
            }
            backend::Message::ErrorResponse(body) => return Err(server_error(&body)),
            _ => {
                return Err(PgError::Protocol(
                    "the server asks for an authentication method this client does not speak"
                        .into(),
                ))
            }
        }
        match self.next()? {
            backend::Message::AuthenticationOk => Ok(()),
            backend::Message::ErrorResponse(body) => Err(server_error(&body)),
            _ => Err(PgError::Protocol("expected AuthenticationOk".into())),
        }
    }

    /// Run `sql` (one or more statements, simple query protocol) and return the rows of the
    /// last statement that returned rows. Never pass user input unescaped: use
    /// [`quote_literal`] and [`quote_ident`].
    pub fn query(&mut self, sql: &str) -> Result<Vec<Row>, PgError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.send(&out)?;
        let mut rows = Vec::new();
        let mut current = Vec::new();
        let mut error = None;
        loop {
            match self.next()? {
                backend::Message::RowDescription(_) => current.clear(),
                backend::Message::DataRow(body) => current.push(row(&body)?),
                backend::Message::CommandComplete(_) if !current.is_empty() => {
                    rows = std::mem::take(&mut current);
                }
                backend::Message::ErrorResponse(body) => error = Some(server_error(&body)),
                backend::Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// Run `sql` and return the first column of the first row, if any.
    pub fn query_value(&mut self, sql: &str) -> Result<Option<String>, PgError> {
        let rows = self.query(sql)?;
        Ok(rows.first().and_then(|r| r.get(0)).map(str::to_string))
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    fn next(&mut self) -> Result<backend::Message, PgError> {
        loop {
            if let Some(message) = backend::Message::parse(&mut self.buf)? {
                return Ok(message);
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(PgError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} closed the connection", self.peer),
                )));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = self.stream.write_all(&out);
    }
}

fn row(body: &backend::DataRowBody) -> Result<Row, PgError> {
    let buf = body.buffer();
    let mut values = Vec::new();
    let mut ranges = body.ranges();
    while let Some(range) = ranges.next()? {
        values.push(match range {
            Some(r) => Some(
                std::str::from_utf8(&buf[r])
                    .map_err(|e| PgError::Protocol(format!("non-UTF-8 value: {e}")))?
                    .to_string(),
            ),
            None => None,
        });
    }
    Ok(Row(values))
}

fn server_error(body: &backend::ErrorResponseBody) -> PgError {
    let mut code = String::new();
    let mut message = String::new();
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    PgError::Server { code, message }
}

/// `s` as a SQL string literal: `'it''s'`.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `s` as a SQL identifier: `"my ""table"""`.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_carries_no_password_and_salts_each_time() {
        let v = scram_verifier("s3cret-pw");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        assert!(!v.contains("s3cret"));
        assert_ne!(v, scram_verifier("s3cret-pw"));
        let refused = PgError::Server {
            code: "28P01".into(),
            message: "password authentication failed".into(),
        };
        assert!(refused.is_auth_failure());
        assert!(!PgError::Io(io::Error::from(io::ErrorKind::ConnectionRefused)).is_auth_failure());
    }

    #[test]
    fn quoting_doubles_the_quote_characters() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_ident("my \"t\""), "\"my \"\"t\"\"\"");
    }

    #[test]
    fn server_errors_map_to_hook_errors_by_sqlstate() {
        let starting = PgError::Server {
            code: "57P03".into(),
            message: "the database system is starting up".into(),
        };
        assert!(matches!(HookError::from(starting), HookError::Retryable(_)));
        let auth = PgError::Server {
            code: "28P01".into(),
            message: "password authentication failed".into(),
        };
        assert!(matches!(HookError::from(auth), HookError::Failed(_)));
    }
}
