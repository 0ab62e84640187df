//! TCP from inside the sandbox, with the habits every engine client needs: connect with a
//! timeout, read and write timeouts always set (the host's deadline would otherwise be the
//! only thing that stops a read from a server that never answers), and a line-oriented client
//! for text protocols (memcached, Redis inline, ZooKeeper four-letter words).
//!
//! The host allows connections only to the endpoints of the instances a hook is about (plus
//! operator grants); anything else fails with `PermissionDenied` before a packet is sent.

use std::io::{self, BufRead, BufReader, Write};
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

/// A connection speaking a line-oriented text protocol (`\r\n` or `\n` terminated).
pub struct LineConn {
    reader: BufReader<TcpStream>,
    peer: String,
}

impl LineConn {
    /// Connect to `endpoint` (see [`connect`]).
    pub fn connect(endpoint: &Endpoint, timeout: Duration) -> io::Result<Self> {
        let stream = connect(endpoint, timeout)?;
        Ok(LineConn {
            reader: BufReader::new(stream),
            peer: endpoint.to_string(),
        })
    }

    /// The `host:port` this connection goes to.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Send `line` followed by `\r\n`, in one write: two small writes on a kept connection
    /// meet Nagle's algorithm and the peer's delayed ACK and cost 40 ms.
    pub fn send(&mut self, line: &str) -> io::Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 2);
        buf.extend_from_slice(line.as_bytes());
        buf.extend_from_slice(b"\r\n");
        let stream = self.reader.get_mut();
        stream.write_all(&buf)?;
        stream.flush()
    }

    /// Read one line without its terminator. End of stream is `UnexpectedEof`.
    pub fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} closed the connection", self.peer),
            ));
        }
        while line.ends_with('\n') || line.ends_with('\r') {
            line.pop();
        }
        Ok(line)
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
}
