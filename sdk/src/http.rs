//! The HTTP kit: a small HTTP/1.1 client for engines with HTTP APIs (etcd's JSON gateway,
//! InfluxDB, ClickHouse, RabbitMQ's management API, VictoriaMetrics) over the SDK's TCP
//! helpers. One kept-alive connection ([`HttpConn`]) sends requests with headers and a body
//! ([`Request`]) and reads answers framed by `Content-Length`, chunked, or the end of the
//! connection: whole, up to a cap on what is held in memory ([`Response`]), or as a stream
//! for answers too large to hold, a snapshot say ([`Streamed`], whose [`Body`] is a
//! [`BufRead`]). Timeouts are the SDK's: connect, read and write always bounded.
//!
//! No JSON in here, on purpose: the SDK does not depend on serde_json. An addon for a JSON
//! API serializes its own body (`Request::post_json(path, &value.to_string())`) and parses
//! [`Response::text`] with its own serde_json, so guests that speak CSV, TSV or a line
//! protocol over HTTP carry no JSON code and the SDK pins no serde version. Plain HTTP only
//! (no TLS): engines are reached on the cluster's own addresses.
//!
//! Header values (an `Authorization` token or password) never appear in an error message.
//!
//! ```ignore
//! let mut http = HttpConn::connect(&instance.endpoint, Duration::from_secs(2))?;
//! let answer = http.send(&Request::get("/health").header("Authorization", &basic))?;
//! if !answer.is_success() {
//!     return Err(answer.error("GET /health"));
//! }
//! ```
//!
//! A connection whose answer was not read to its end, or that the server said it would
//! close, is replaced by a new one at the next request. A kept connection the server closed
//! while idle fails the next request like any stale socket: keep the connection in a
//! [`crate::kept::Kept`], which retries once on a fresh one.

use std::borrow::Cow;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::net::read_capped_line;
use crate::{Endpoint, HookError};

/// The largest answer [`HttpConn::send`] holds unless [`HttpConn::with_max_body`] says
/// otherwise.
pub const DEFAULT_MAX_BODY: usize = 16 << 20;

/// Longest status, header, chunk-size or trailer line accepted.
const MAX_LINE: usize = 16 << 10;

/// Most header (or trailer) lines accepted in one answer.
const MAX_HEADERS: usize = 128;

/// How much of an answer's body an error message quotes.
const QUOTED: usize = 200;

/// One request: method, path, headers and an optional body with its content type.
///
/// Not `Debug` on purpose: its headers may carry credentials.
pub struct Request<'a> {
    method: &'a str,
    path: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    body: Option<(&'a str, &'a [u8])>,
}

impl<'a> Request<'a> {
    /// A request with `method` ("GET", "DELETE", …) to `path` ("/v3/kv/range?x=1"), no body.
    pub fn new(method: &'a str, path: &'a str) -> Self {
        Request {
            method,
            path,
            headers: Vec::new(),
            body: None,
        }
    }

    /// `GET path`.
    pub fn get(path: &'a str) -> Self {
        Self::new("GET", path)
    }

    /// `POST path` with `body` of `content_type`.
    pub fn post(path: &'a str, content_type: &'a str, body: &'a [u8]) -> Self {
        Self::new("POST", path).body(content_type, body)
    }

    /// `POST path` with a JSON body (already serialized).
    pub fn post_json(path: &'a str, json: &'a str) -> Self {
        Self::post(path, "application/json", json.as_bytes())
    }

    /// Send `body` of `content_type` (an empty type sends no `Content-Type`); the length is
    /// sent as `Content-Length`.
    pub fn body(mut self, content_type: &'a str, body: &'a [u8]) -> Self {
        self.body = Some((content_type, body));
        self
    }

    /// Add the header `name: value` (`Authorization`, `Accept`, …). `Host` defaults to the
    /// endpoint; `Content-Length` is always the body's.
    pub fn header(mut self, name: &'a str, value: &'a str) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The request as bytes, after checking that nothing in it can split it: a CR or LF in
    /// the path or a header would let a value smuggle a header or a second request.
    fn encode(&self, host: &str) -> io::Result<Vec<u8>> {
        if self.method.is_empty() || !self.method.bytes().all(is_token) {
            return Err(refused(format!(
                "method {:?} is not an HTTP token",
                self.method
            )));
        }
        if !self.path.starts_with('/') && self.path != "*" {
            return Err(refused("a request path must start with '/'".into()));
        }
        if self.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(refused(
                "a request path may not hold spaces or control characters".into(),
            ));
        }
        for (name, value) in &self.headers {
            if name.is_empty() || !name.bytes().all(is_token) {
                return Err(refused(format!(
                    "header name {name:?} is not an HTTP token"
                )));
            }
            if name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding")
            {
                return Err(refused(format!("header {name} is set by the client")));
            }
            // The value is not quoted: it may be a secret.
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(refused(format!(
                    "the value of header {name} holds a line break"
                )));
            }
        }
        if let Some((content_type, _)) = self.body {
            if content_type.bytes().any(|b| b < b' ' || b == 0x7f) {
                return Err(refused("the content type holds control characters".into()));
            }
        }
        let mut out =
            Vec::with_capacity(128 + self.path.len() + self.body.map_or(0, |(_, b)| b.len()));
        let mut put = |s: &str| out.extend_from_slice(s.as_bytes());
        put(self.method);
        put(" ");
        put(self.path);
        put(" HTTP/1.1\r\n");
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("host"))
        {
            put("Host: ");
            put(host);
            put("\r\n");
        }
        for (name, value) in &self.headers {
            put(name);
            put(": ");
            put(value);
            put("\r\n");
        }
        if let Some((content_type, body)) = self.body {
            if !content_type.is_empty() {
                put("Content-Type: ");
                put(content_type);
                put("\r\n");
            }
            put(&format!("Content-Length: {}\r\n", body.len()));
        }
        put("\r\n");
        if let Some((_, body)) = self.body {
            out.extend_from_slice(body);
        }
        Ok(out)
    }
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code (200, 404, …).
    pub status: u16,
    /// The headers as sent (names in the server's case; see [`Response::header`]).
    pub headers: Vec<(String, String)>,
    /// The body, framing removed.
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// This answer as a hook error about `what` ("GET /health"): the status and the start of
    /// the body. 429 and 502–504 (busy, or a proxy that found no server) are `retryable`,
    /// everything else `failed`.
    pub fn error(&self, what: impl std::fmt::Display) -> HookError {
        let text: String = self.text().chars().take(QUOTED).collect();
        let text = text.trim();
        let message = if text.is_empty() {
            format!("{what}: HTTP {}", self.status)
        } else {
            format!("{what}: HTTP {}: {text}", self.status)
        };
        match self.status {
            429 | 502..=504 => HookError::Retryable(message),
            _ => HookError::Failed(message),
        }
    }
}

/// An answer whose body is read as it arrives.
pub struct Streamed<'c> {
    /// The status code.
    pub status: u16,
    /// The headers as sent.
    pub headers: Vec<(String, String)>,
    /// The body: read it with [`Read`], [`BufRead`], [`Body::next_line`] or
    /// [`Body::read_all`].
    pub body: Body<'c>,
}

impl Streamed<'_> {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// A connection to one HTTP server.
pub struct HttpConn {
    endpoint: Endpoint,
    timeout: Duration,
    peer: String,
    /// `None` once the server closed or said it would close.
    reader: Option<BufReader<TcpStream>>,
    /// An answer was begun and not read to its end: the connection cannot carry another.
    unfinished: bool,
    max_body: usize,
}

impl HttpConn {
    /// Connect to `endpoint` with `timeout` on the connect and on every read and write (see
    /// [`crate::net::connect`]).
    pub fn connect(endpoint: &Endpoint, timeout: Duration) -> io::Result<Self> {
        let stream = crate::net::connect(endpoint, timeout)?;
        Ok(HttpConn {
            endpoint: endpoint.clone(),
            timeout,
            peer: endpoint.to_string(),
            reader: Some(BufReader::new(stream)),
            unfinished: false,
            max_body: DEFAULT_MAX_BODY,
        })
    }

    /// Hold answers of up to `max` bytes in [`HttpConn::send`] (default
    /// [`DEFAULT_MAX_BODY`]); a longer one is refused with `InvalidData`.
    pub fn with_max_body(mut self, max: usize) -> Self {
        self.max_body = max;
        self
    }

    /// The `host:port` this connection goes to.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// `GET path`, the whole answer.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.send(&Request::get(path))
    }

    /// `POST path` with `json` (already serialized), the whole answer.
    pub fn post_json(&mut self, path: &str, json: &str) -> io::Result<Response> {
        self.send(&Request::post_json(path, json))
    }

    /// Send `request` and read the whole answer, at most the cap ([`HttpConn::with_max_body`]).
    /// Any status is an `Ok` answer; `Err` is a connection or protocol failure.
    pub fn send(&mut self, request: &Request<'_>) -> io::Result<Response> {
        let max = self.max_body;
        let Streamed {
            status,
            headers,
            body,
        } = self.stream(request)?;
        let body = body.read_all(max)?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// Send `request` and read the status and headers; the body is read as it arrives,
    /// without a cap (the caller holds only what it keeps). Reading the body to its end
    /// leaves the connection ready for the next request.
    pub fn stream(&mut self, request: &Request<'_>) -> io::Result<Streamed<'_>> {
        let bytes = request.encode(&self.peer)?;
        if self.unfinished {
            self.reader = None;
        }
        let reader = match self.reader.take() {
            Some(r) => r,
            None => BufReader::new(crate::net::connect(&self.endpoint, self.timeout)?),
        };
        let reader = self.reader.insert(reader);
        self.unfinished = true;
        let stream = reader.get_mut();
        stream.write_all(&bytes)?;
        stream.flush()?;
        let head = self.read_head(request.method)?;
        let mut body = Body {
            conn: self,
            framing: head.framing,
            keep_alive: head.keep_alive,
            chunked: head.chunked,
        };
        if let Framing::Length(0) = body.framing {
            // Nothing to read: the connection is ready for the next request now.
            body.finish();
        }
        Ok(Streamed {
            status: head.status,
            headers: head.headers,
            body,
        })
    }

    /// The status line and headers of the final answer (1xx interim answers skipped).
    fn read_head(&mut self, method: &str) -> io::Result<Head> {
        loop {
            let line = self.line()?;
            let (version, status) = parse_status_line(&line).ok_or_else(|| {
                invalid(format!(
                    "{}: not an HTTP status line: {:?}",
                    self.peer,
                    line.chars().take(QUOTED).collect::<String>()
                ))
            })?;
            let headers = self.header_lines()?;
            if (100..200).contains(&status) {
                continue;
            }
            return frame(&self.peer, method, version, status, headers);
        }
    }

    /// Header (or trailer) lines up to the blank line.
    fn header_lines(&mut self) -> io::Result<Vec<(String, String)>> {
        let mut headers = Vec::new();
        loop {
            let line = self.line()?;
            if line.is_empty() {
                return Ok(headers);
            }
            if headers.len() >= MAX_HEADERS {
                return Err(invalid(format!(
                    "{} sent more than {MAX_HEADERS} header lines",
                    self.peer
                )));
            }
            // A line without a colon is not a header; skip it as browsers do.
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
        }
    }

    fn line(&mut self) -> io::Result<String> {
        let reader = self
            .reader
            .as_mut()
            .ok_or_else(|| closed(&self.peer, "before the answer ended"))?;
        read_capped_line(reader, MAX_LINE, &self.peer)
    }
}

/// What the head of an answer says about its body.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    framing: Framing,
    keep_alive: bool,
    chunked: bool,
}

/// `HTTP/1.1 200 OK` as (minor version, status).
fn parse_status_line(line: &str) -> Option<(u8, u16)> {
    let rest = line.strip_prefix("HTTP/1.")?;
    let minor = rest.get(..1)?.parse().ok()?;
    let rest = rest.get(1..)?.strip_prefix(' ')?;
    let code = rest.get(..3)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) || !matches!(rest.get(3..4), None | Some(" ")) {
        return None;
    }
    Some((minor, code.parse().ok()?))
}

/// How the body is framed and whether the connection stays open, from the head (RFC 9112
/// section 6: chunked wins over a length; no length reads to the close).
fn frame(
    peer: &str,
    method: &str,
    minor: u8,
    status: u16,
    headers: Vec<(String, String)>,
) -> io::Result<Head> {
    let connection = |token: &str| {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let mut keep_alive = if minor == 0 {
        connection("keep-alive")
    } else {
        !connection("close")
    };
    let codings: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let mut lengths = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim);
    let chunked = codings
        .last()
        .is_some_and(|c| c.eq_ignore_ascii_case("chunked"));
    let framing = if method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked {
            left: 0,
            first: true,
        }
    } else if !codings.is_empty() {
        Framing::ToClose
    } else if let Some(first) = lengths.next() {
        let n = parse_length(first)
            .ok_or_else(|| invalid(format!("{peer}: bad Content-Length {first:?}")))?;
        if lengths.any(|other| parse_length(other) != Some(n)) {
            return Err(invalid(format!(
                "{peer}: conflicting Content-Length headers"
            )));
        }
        Framing::Length(n)
    } else {
        Framing::ToClose
    };
    if matches!(framing, Framing::ToClose) {
        keep_alive = false;
    }
    Ok(Head {
        status,
        headers,
        framing,
        keep_alive,
        chunked,
    })
}

fn parse_length(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A chunk-size line ("1a2b;name=value") as the size; `None` when it is not one.
fn parse_chunk_size(line: &str) -> Option<u64> {
    let digits = line.split(';').next().unwrap_or("").trim();
    // 15 hex digits is 2^60 bytes: more is an attack, not a chunk.
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// How much of the body is left and how it is framed.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// `Content-Length`: this many bytes left.
    Length(u64),
    /// Chunked: `left` bytes of the current chunk; 0 means a size line comes next (after the
    /// CRLF that ends the previous chunk, unless this is the `first`).
    Chunked { left: u64, first: bool },
    /// Neither: the body ends when the server closes.
    ToClose,
    /// Read to its end.
    Done,
}

/// The body of a [`Streamed`] answer, framing removed: a [`Read`] and a [`BufRead`] that end
/// where the body ends.
pub struct Body<'c> {
    conn: &'c mut HttpConn,
    framing: Framing,
    keep_alive: bool,
    chunked: bool,
}

impl Body<'_> {
    /// Whether the server sent the body chunked (a stream of unknown length).
    pub fn is_chunked(&self) -> bool {
        self.chunked
    }

    /// The rest of the body, at most `max` bytes (a longer one is `InvalidData`).
    pub fn read_all(mut self, max: usize) -> io::Result<Vec<u8>> {
        if let Framing::Length(n) = self.framing {
            if n > max as u64 {
                return Err(invalid(format!(
                    "{}: an answer of {n} bytes is over the cap of {max}",
                    self.conn.peer
                )));
            }
        }
        let mut out = Vec::new();
        loop {
            let buf = self.fill_buf()?;
            if buf.is_empty() {
                return Ok(out);
            }
            let n = buf.len();
            if out.len() + n > max {
                return Err(invalid(format!(
                    "{}: an answer over the cap of {max} bytes",
                    self.conn.peer
                )));
            }
            out.extend_from_slice(buf);
            self.consume(n);
        }
    }

    /// The next line of the body, with its `\n` (the last line may lack one), or `None` at
    /// the end of the body. A line longer than `max` bytes is `InvalidData`. For APIs that
    /// stream one JSON document a line.
    pub fn next_line(&mut self, max: usize) -> io::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        loop {
            let buf = self.fill_buf()?;
            if buf.is_empty() {
                return Ok((!line.is_empty()).then_some(line));
            }
            let (n, end) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if line.len() + n > max {
                return Err(invalid(format!(
                    "{}: a line of the answer is longer than {max} bytes",
                    self.conn.peer
                )));
            }
            line.extend_from_slice(&buf[..n]);
            self.consume(n);
            if end {
                return Ok(Some(line));
            }
        }
    }

    /// The body has ended: the connection can carry the next request if the server keeps it.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        self.conn.unfinished = false;
        if !self.keep_alive {
            self.conn.reader = None;
        }
    }

    /// Read past a chunk's end, a size line and, after the last chunk, the trailers.
    fn next_chunk(&mut self, first: bool) -> io::Result<()> {
        if !first {
            let end = self.conn.line()?;
            if !end.is_empty() {
                return Err(invalid(format!(
                    "{}: a chunk longer than its size",
                    self.conn.peer
                )));
            }
        }
        let line = self.conn.line()?;
        let size = parse_chunk_size(&line).ok_or_else(|| {
            invalid(format!(
                "{}: bad chunk size {:?}",
                self.conn.peer,
                line.chars().take(40).collect::<String>()
            ))
        })?;
        if size == 0 {
            self.conn.header_lines()?;
            self.finish();
        } else {
            self.framing = Framing::Chunked {
                left: size,
                first: false,
            };
        }
        Ok(())
    }
}

impl BufRead for Body<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        loop {
            match self.framing {
                Framing::Done => return Ok(&[]),
                Framing::Length(0) => self.finish(),
                Framing::Chunked { left: 0, first } => self.next_chunk(first)?,
                Framing::Length(_) | Framing::Chunked { .. } | Framing::ToClose => break,
            }
        }
        let peer = &self.conn.peer;
        let reader = self
            .conn
            .reader
            .as_mut()
            .ok_or_else(|| closed(peer, "before the answer ended"))?;
        let available = reader.fill_buf()?.len();
        let take = match self.framing {
            Framing::Length(left) | Framing::Chunked { left, .. } => {
                if available == 0 {
                    return Err(closed(peer, "in the middle of an answer"));
                }
                available.min(usize::try_from(left).unwrap_or(usize::MAX))
            }
            _ => {
                if available == 0 {
                    self.finish();
                    return Ok(&[]);
                }
                available
            }
        };
        // The buffer is not empty, so this is the same data, without another read.
        let reader = self
            .conn
            .reader
            .as_mut()
            .ok_or_else(|| closed(&self.conn.peer, "before the answer ended"))?;
        Ok(&reader.fill_buf()?[..take])
    }

    fn consume(&mut self, n: usize) {
        if let Some(reader) = self.conn.reader.as_mut() {
            reader.consume(n);
        }
        match &mut self.framing {
            Framing::Length(left) | Framing::Chunked { left, .. } => {
                *left = left.saturating_sub(n as u64);
            }
            Framing::ToClose | Framing::Done => {}
        }
    }
}

impl Read for Body<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let buf = self.fill_buf()?;
        let n = buf.len().min(out.len());
        out[..n].copy_from_slice(&buf[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// A byte allowed in a method or header name (RFC 9110 `tchar`).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn refused(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn closed(peer: &str, when: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{peer} closed the connection {when}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::test_server;
    use std::net::TcpListener;

    const T: Duration = Duration::from_secs(5);

    /// One request as the server got it: head and body.
    fn read_request(reader: &mut BufReader<TcpStream>) -> String {
        let mut text = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("a request line");
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("a length");
            }
            text.push_str(&line);
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("the body");
        text.push_str(&String::from_utf8(body).expect("text"));
        text
    }

    /// A server that takes one connection per entry of `script`, one after the other, and
    /// answers each request on it with the next canned answer; it closes the connection
    /// after the last one. It returns the requests it got, by connection.
    fn serve(
        script: Vec<Vec<&'static [u8]>>,
    ) -> (Endpoint, std::thread::JoinHandle<Vec<Vec<String>>>) {
        test_server(move |listener: TcpListener| {
            let mut seen = Vec::new();
            for answers in script {
                let (stream, _) = listener.accept().expect("accept");
                let mut reader = BufReader::new(stream);
                let mut requests = Vec::new();
                for answer in answers {
                    requests.push(read_request(&mut reader));
                    reader.get_mut().write_all(answer).expect("answer");
                }
                seen.push(requests);
            }
            seen
        })
    }

    /// The error a GET gets from a server that answers it with `answer`.
    fn error_for(answer: &'static [u8]) -> io::Error {
        let (endpoint, server) = serve(vec![vec![answer]]);
        let mut c = HttpConn::connect(&endpoint, T).expect("connect");
        let e = c.get("/").expect_err("an answer to refuse");
        server.join().expect("server");
        e
    }

    #[test]
    fn a_content_length_answer() {
        let (endpoint, server) = serve(vec![vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
        ]]);
        let mut c = HttpConn::connect(&endpoint, T).expect("connect");
        let a = c.get("/health?x=1").expect("get");
        assert_eq!(a.status, 200);
        assert!(a.is_success());
        assert_eq!(a.text(), "hello");
        assert_eq!(a.header("x-a"), Some("b"));
        let seen = server.join().expect("server");
        assert_eq!(
            seen[0][0],
            format!("GET /health?x=1 HTTP/1.1\r\nHost: {endpoint}\r\n\r\n")
        );
    }

    #[test]
    fn a_chunked_answer_with_extensions_and_trailers() {
        let (endpoint, server) = serve(vec![vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
        ]]);
        let mut c = HttpConn::connect(&endpoint, T).expect("connect");
        let a = c.get("/").expect("get");
        assert_eq!(a.text(), "hello, world");
        server.join().expect("server");
    }

    #[test]
    fn two_requests_share_one_kept_connection() {
        let (endpoint, server) = serve(vec![vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nno!\r\n0\r\n\r\n",
        ]]);
        let mut c = HttpConn::connect(&endpoint, T).expect("connect");
        let body = r#"{"key":"a"}"#;
        let a = c
            .send(&Request::post_json("/v3/kv/range", body).header("Authorization", "tok"))
            .expect("first");
        assert_eq!((a.status, a.text().as_ref()), (200, "{}"));
        let b = c.get("/missing").expect("second");
        assert_eq!((b.status, b.text().as_ref()), (404, "no!"));
        assert!(!b.is_success());
        let seen = server.join().expect("server");
        assert_eq!(seen.len(), 1, "one connection");
        assert_eq!(
            seen[0][0],
            format!(
                "POST /v3/kv/range HTTP/1.1\r\nHost: {endpoint}\r\nAuthorization: tok\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        );
        assert!(seen[0][1].starts_with("GET /missing HTTP/1.1\r\n"));
    }

    #[test]
    fn an_answer_over_the_cap_is_refused() {
        let (endpoint, server) = serve(vec![
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"],
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"],
        ]);
        let mut c = HttpConn::connect(&endpoint, T)
            .expect("connect")
            .with_max_body(10);
        let e = c.get("/").expect_err("11 bytes by length");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("over the cap of 10"), "{e}");
        // The refused answer was not read: the next request goes on a new connection.
        let e = c.get("/").expect_err("11 bytes chunked");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(c.get("/").expect("10 bytes").body.len(), 10);
        assert_eq!(server.join().expect("server").len(), 3);
    }

    #[test]
    fn a_malformed_chunk_size_is_refused() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nx\r\n",
        ] {
            let e = error_for(answer);
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(e.to_string().contains("bad chunk size"), "{e}");
        }
        // A chunk longer than its size line said.
        let e = error_for(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
        );
        assert!(e.to_string().contains("longer than its size"), "{e}");
    }

    #[test]
    fn a_stream_is_read_line_by_line_and_may_be_left_early() {
        let (endpoint, server) = serve(vec![
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  4\r\n{\"a\"\r\nb\r\n:1}\n{\"b\":2}\r\n7\r\n\n{\"c\":3\r\n1\r\n}\r\n0\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab\nc\r\n4\r\nd\nef\r\n0\r\n\r\n",
            ],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
        ]);
        let mut c = HttpConn::connect(&endpoint, T).expect("connect");
        let mut s = c
            .stream(&Request::post_json("/v3/maintenance/snapshot", "{}"))
            .expect("stream");
        assert!(s.body.is_chunked());
        let mut lines = Vec::new();
        while let Some(line) = s.body.next_line(64).expect("a line") {
            lines.push(String::from_utf8(line).expect("text"));
        }
        // Lines across chunks, chunks across lines, the last line without its newline.
        assert_eq!(lines, ["{\"a\":1}\n", "{\"b\":2}\n", "{\"c\":3}"]);
        // Read to its end: the same connection carries the next request.
        let mut s = c.stream(&Request::get("/")).expect("second stream");
        assert_eq!(
            s.body.next_line(64).expect("a line"),
            Some(b"ab\n".to_vec())
        );
        drop(s);
        // Left early: the next request goes on a new connection.
        assert_eq!(c.get("/").expect("after").text(), "ok");
        let seen = server.join().expect("server");
        assert_eq!((seen[0].len(), seen[1].len()), (2, 1));
    }

    #[test]
    fn a_line_over_the_cap_is_refused() {
        let (endpoint, server) = serve(vec![vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n0123456789\nx",
        ]]);
        let mut c = HttpConn::connect(&endpoint, T).expect("connect");
        let mut s = c.stream(&Request::get("/")).expect("stream");
        assert!(!s.body.is_chunked());
        let e = s.body.next_line(10).expect_err("11 bytes with its newline");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        server.join().expect("server");
    }

    #[test]
    fn a_body_without_length_ends_with_the_connection() {
        let (endpoint, server) = serve(vec![
            vec![b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"],
            vec![b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\none"],
            vec![b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"],
            vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"],
        ]);
        let mut c = HttpConn::connect(&endpoint, T).expect("connect");
        assert_eq!(c.get("/").expect("to the close").text(), "until the end");
        // HTTP/1.0 without keep-alive, then Connection: close: a new connection each time.
        assert_eq!(c.get("/").expect("HTTP/1.0").text(), "one");
        let a = c.get("/").expect("no content");
        assert_eq!((a.status, a.body.len()), (204, 0));
        // An interim 100 answer is skipped.
        assert_eq!(c.get("/").expect("after 100").text(), "two");
        assert_eq!(server.join().expect("server").len(), 4);
    }

    #[test]
    fn an_answer_cut_short_is_an_early_end() {
        let e = error_for(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(matches!(HookError::from(e), HookError::Retryable(_)));
    }

    #[test]
    fn garbage_heads_are_refused() {
        for answer in [
            &b"SSH-2.0-OpenSSH_9.2\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ] {
            let e = error_for(answer);
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        }
    }

    #[test]
    fn requests_that_could_split_are_refused_without_quoting_secrets() {
        let (endpoint, server) = test_server(|l: TcpListener| drop(l.accept()));
        let mut c = HttpConn::connect(&endpoint, T).expect("connect");
        let secret = "Basic c2VjcmV0\r\nX-Evil: 1";
        let e = c
            .send(&Request::get("/").header("Authorization", secret))
            .expect_err("a line break in a value");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        for bad in [
            Request::get("/a b"),
            Request::get("no-slash"),
            Request::new("GE T", "/"),
            Request::get("/").header("Bad Name", "x"),
            Request::get("/").header("Content-Length", "0"),
        ] {
            let e = c.send(&bad).expect_err("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
        server.join().expect("server");
    }

    #[test]
    fn status_errors_name_the_request_and_the_status() {
        let answer = |status: u16, body: &str| Response {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        };
        let e = answer(503, "busy\n").error("GET /health");
        assert!(
            matches!(e, HookError::Retryable(ref m) if m == "GET /health: HTTP 503: busy"),
            "{e:?}"
        );
        let e = answer(401, "").error("GET /health");
        assert!(
            matches!(e, HookError::Failed(ref m) if m == "GET /health: HTTP 401"),
            "{e:?}"
        );
        let long = "x".repeat(1000);
        let HookError::Failed(m) = answer(400, &long).error("q") else {
            panic!("400 is a failure");
        };
        assert!(m.len() < 250, "{m}");
    }
}
