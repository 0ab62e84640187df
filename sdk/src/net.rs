//! TCP from inside the sandbox, with the habits every engine client needs: connect with a
//! timeout, read and write timeouts always set (the host's deadline would otherwise be the
//! only thing that stops a read from a server that never answers), and the line kit: a
//! line-oriented client for text protocols ([`LineConn`]: memcached, Redis inline, NATS'
//! `INFO`/`PING`/`PONG`) and [`ask_and_read_to_close`] for protocols where the server
//! answers one word and closes (ZooKeeper's four-letter words). Every read is capped, so a
//! server that sends without end cannot make the guest hold more than the caller allowed.
//!
//! The host allows connections only to the endpoints of the instances a hook is about (plus
//! operator grants); anything else fails with `PermissionDenied` before a packet is sent.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::Endpoint;

/// Default connect, read and write timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The socket address of `endpoint`. IP literals need no name lookup; other names are
/// resolved only if the operator granted `name-lookup`.
pub fn socket_addr(endpoint: &Endpoint) -> io::Result<SocketAddr> {
    if let Ok(ip) = endpoint.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, endpoint.port));
    }
    (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} resolves to no address", endpoint.host),
            )
        })
}

/// Connect to `endpoint` and set `timeout` on every later read and write.
///
/// The connect itself blocks until it succeeds or fails: on wasm32-wasip2, std's
/// `connect_timeout` returns before the connection is established (later reads and writes
/// then fail with `NotConnected`), so this uses the blocking connect, which reports refusal
/// correctly. A connect that hangs (a silent remote host) is stopped by the hook's deadline.
pub fn connect(endpoint: &Endpoint, timeout: Duration) -> io::Result<TcpStream> {
    let addr = socket_addr(endpoint)?;
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Longest line [`LineConn::read_line`] accepts unless [`LineConn::with_max_line`] says
/// otherwise (NATS' `INFO` line is a few KiB; memcached's lines are shorter).
pub const DEFAULT_MAX_LINE: usize = 1 << 20;

/// Read one `\n`-terminated line of at most `max` bytes from `reader`, without its `\r\n` or
/// `\n`. End of stream before any byte, or in the middle of a line, is `UnexpectedEof`; a
/// longer line is `InvalidData`. `peer` names the server in the errors.
pub(crate) fn read_capped_line(
    reader: &mut impl BufRead,
    max: usize,
    peer: &str,
) -> io::Result<String> {
    let mut line = Vec::new();
    // Room for the line and its "\r\n"; a read that fills it without a '\n' is too long.
    let limit = max as u64 + 2;
    let n = reader.by_ref().take(limit).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{peer} closed the connection"),
        ));
    }
    if line.last() != Some(&b'\n') {
        if n as u64 == limit {
            return Err(too_long(peer, max));
        }
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{peer} closed the connection in the middle of a line"),
        ));
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    if line.len() > max {
        return Err(too_long(peer, max));
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn too_long(peer: &str, max: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{peer} sent a line longer than {max} bytes"),
    )
}

/// A connection speaking a line-oriented text protocol (`\r\n` or `\n` terminated).
///
/// NATS, for instance: the server greets with `INFO {…}`, the client answers `CONNECT {…}`
/// and `PING` in one write, the server says `PONG` (or `-ERR '…'` and closes):
///
/// ```ignore
/// let mut c = LineConn::connect(&instance.endpoint, IO_TIMEOUT)?;
/// let info = c.read_line()?;                       // "INFO {...}"
/// c.send_lines(&[&connect_json_line, "PING"])?;
/// let pong = c.read_line()?;                       // "PONG", or "-ERR 'Authorization Violation'"
/// ```
pub struct LineConn {
    reader: BufReader<TcpStream>,
    peer: String,
    max_line: usize,
}

impl LineConn {
    /// Connect to `endpoint` (see [`connect`]).
    pub fn connect(endpoint: &Endpoint, timeout: Duration) -> io::Result<Self> {
        let stream = connect(endpoint, timeout)?;
        Ok(LineConn {
            reader: BufReader::new(stream),
            peer: endpoint.to_string(),
            max_line: DEFAULT_MAX_LINE,
        })
    }

    /// Accept lines of up to `max` bytes (default [`DEFAULT_MAX_LINE`]).
    pub fn with_max_line(mut self, max: usize) -> Self {
        self.max_line = max;
        self
    }

    /// The `host:port` this connection goes to.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Send `line` followed by `\r\n`, in one write: two small writes on a kept connection
    /// meet Nagle's algorithm and the peer's delayed ACK and cost 40 ms.
    pub fn send(&mut self, line: &str) -> io::Result<()> {
        self.send_lines(&[line])
    }

    /// Send every line of `lines`, each followed by `\r\n`, in one write (a pipeline:
    /// NATS' `CONNECT` and `PING`).
    pub fn send_lines(&mut self, lines: &[&str]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 2).sum());
        for line in lines {
            buf.extend_from_slice(line.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        self.send_raw(&buf)
    }

    /// Send `bytes` as they are, in one write (no terminator added: a ZooKeeper four-letter
    /// word is exactly four bytes).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// Read one line without its terminator. End of stream is `UnexpectedEof`; a line longer
    /// than the cap ([`LineConn::with_max_line`]) is `InvalidData`.
    pub fn read_line(&mut self) -> io::Result<String> {
        read_capped_line(&mut self.reader, self.max_line, &self.peer)
    }

    /// Read lines until one equals `end` (not included), at most `max_lines`.
    pub fn read_until(&mut self, end: &str, max_lines: usize) -> io::Result<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line()?;
            if line == end {
                return Ok(lines);
            }
            if lines.len() >= max_lines {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} sent more than {max_lines} lines", self.peer),
                ));
            }
            lines.push(line);
        }
    }

    /// Send `line` and read one line back.
    pub fn request(&mut self, line: &str) -> io::Result<String> {
        self.send(line)?;
        self.read_line()
    }

    /// Read everything the server sends until it closes the connection, at most `max_bytes`
    /// (more is `InvalidData`, not a silent cut), as text (invalid UTF-8 replaced).
    pub fn read_to_close(&mut self, max_bytes: usize) -> io::Result<String> {
        let mut out = Vec::new();
        // One byte past the cap tells an answer of exactly `max_bytes` from a longer one.
        self.reader
            .by_ref()
            .take(max_bytes as u64 + 1)
            .read_to_end(&mut out)?;
        if out.len() > max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} sent more than {max_bytes} bytes", self.peer),
            ));
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Connect to `endpoint`, send `word` exactly as given (no terminator: add `\r\n` or `\n`
/// to `word` when the protocol wants one), and read the answer until the server closes the
/// connection, at most `max_bytes` of it. ZooKeeper's four-letter words (`srvr`, `mntr`,
/// `conf`, `ruok`) work this way.
///
/// Errors are the socket's own (so a timeout or a refused connection keeps its kind and
/// becomes a `retryable` hook error); add the word and the endpoint as context.
pub fn ask_and_read_to_close(
    endpoint: &Endpoint,
    word: &str,
    timeout: Duration,
    max_bytes: usize,
) -> io::Result<String> {
    let mut c = LineConn::connect(endpoint, timeout)?;
    c.send_raw(word.as_bytes())?;
    c.read_to_close(max_bytes)
}

/// A server for the kits' tests: `serve` runs in a thread on a listener bound to a free
/// loopback port, whose endpoint is returned with the thread.
#[cfg(test)]
pub(crate) fn test_server<T: Send + 'static>(
    serve: impl FnOnce(std::net::TcpListener) -> T + Send + 'static,
) -> (Endpoint, std::thread::JoinHandle<T>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("the bound address").port();
    let endpoint = Endpoint {
        host: "127.0.0.1".into(),
        port,
    };
    (endpoint, std::thread::spawn(move || serve(listener)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    /// Accept one connection, read `expect` bytes, answer `answer`, close.
    fn one_shot(expect: usize, answer: Vec<u8>) -> (Endpoint, std::thread::JoinHandle<Vec<u8>>) {
        test_server(move |l| {
            let (mut s, _) = l.accept().expect("accept");
            let mut got = vec![0; expect];
            s.read_exact(&mut got).expect("the word");
            s.write_all(&answer).expect("answer");
            got
        })
    }

    #[test]
    fn a_word_is_answered_until_the_server_closes() {
        let answer = b"Zookeeper version: 3.8.4\nMode: leader\nZxid: 0x100000002\n".to_vec();
        let (endpoint, server) = one_shot(4, answer.clone());
        let text = ask_and_read_to_close(&endpoint, "srvr", T, 1 << 20).expect("srvr");
        assert_eq!(text.as_bytes(), &answer[..]);
        // Exactly the word, no terminator.
        assert_eq!(server.join().expect("server"), b"srvr");
    }

    #[test]
    fn an_answer_of_exactly_the_cap_is_read_a_longer_one_refused() {
        let (endpoint, server) = one_shot(4, vec![b'x'; 64]);
        assert_eq!(
            ask_and_read_to_close(&endpoint, "mntr", T, 64)
                .expect("64 bytes")
                .len(),
            64
        );
        server.join().expect("server");
        let (endpoint, server) = one_shot(4, vec![b'x'; 65]);
        let e = ask_and_read_to_close(&endpoint, "mntr", T, 64).expect_err("65 bytes");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("more than 64 bytes"), "{e}");
        server.join().expect("server");
    }

    #[test]
    fn nats_style_greeting_ping_and_pong() {
        let hello = "CONNECT {\"verbose\":false}\r\nPING\r\n";
        let (endpoint, server) = test_server(move |l| {
            let (mut s, _) = l.accept().expect("accept");
            s.write_all(b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n")
                .expect("info");
            let mut got = vec![0; hello.len()];
            s.read_exact(&mut got).expect("connect and ping");
            s.write_all(b"PONG\r\n").expect("pong");
            String::from_utf8(got).expect("text")
        });
        let mut c = LineConn::connect(&endpoint, T).expect("connect");
        let info = c.read_line().expect("info");
        assert!(info.starts_with("INFO {"), "{info}");
        c.send_lines(&["CONNECT {\"verbose\":false}", "PING"])
            .expect("send");
        assert_eq!(c.read_until("PONG", 4).expect("pong"), Vec::<String>::new());
        assert_eq!(server.join().expect("server"), hello);
    }

    #[test]
    fn lines_are_capped_and_a_cut_line_is_an_early_end() {
        let (endpoint, server) = test_server(|l| {
            let (mut s, _) = l.accept().expect("accept");
            s.write_all(b"0123456789\r\n01234567890\r\npartial")
                .expect("lines");
        });
        let mut c = LineConn::connect(&endpoint, T)
            .expect("connect")
            .with_max_line(10);
        assert_eq!(c.read_line().expect("ten bytes"), "0123456789");
        let e = c.read_line().expect_err("eleven bytes");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        server.join().expect("server");

        let (endpoint, server) = test_server(|l| {
            let (mut s, _) = l.accept().expect("accept");
            s.write_all(b"partial").expect("a cut line");
        });
        let mut c = LineConn::connect(&endpoint, T).expect("connect");
        server.join().expect("server");
        let e = c.read_line().expect_err("no end of line");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("middle of a line"), "{e}");
    }
}
