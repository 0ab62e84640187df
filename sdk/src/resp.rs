//! A small RESP2 client (Redis and the engines that speak its protocol: Valkey, KeyDB,
//! Dragonfly) over the SDK's TCP helpers: commands go out as RESP arrays (binary
//! safe, so passwords and values need no quoting), a pipeline of several commands in one
//! write, replies parsed into [`Reply`], `INFO` text into name/value pairs. Timeouts are the
//! SDK's: connect, read and write always bounded.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::{Endpoint, HookError, HookResult};

/// Nesting deeper than this is refused (no reply the addon asks for nests more than twice).
const MAX_DEPTH: usize = 8;
/// Largest bulk string accepted (INFO is a few KiB).
const MAX_BULK: usize = 16 << 20;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR …`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$…`; `None` is the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*…`; `None` is the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (simple and bulk strings, integers), else `None`.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Reply::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }
}

/// A connection to one Redis server.
pub struct Conn {
    reader: BufReader<TcpStream>,
    peer: String,
}

impl Conn {
    /// Connect to `endpoint` and, with `auth` (user, password), authenticate.
    pub fn connect(
        endpoint: &Endpoint,
        auth: Option<(&str, &str)>,
        timeout: Duration,
    ) -> HookResult<Conn> {
        let peer = endpoint.to_string();
        let stream = crate::net::connect(endpoint, timeout)
            .map_err(|e| HookError::from(e).context(format!("connect {peer}")))?;
        let mut c = Conn {
            reader: BufReader::new(stream),
            peer,
        };
        if let Some((user, password)) = auth {
            c.ok(&["AUTH", user, password])?;
        }
        Ok(c)
    }

    /// The `host:port` this connection goes to.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Send every command of `commands` in one write and read one reply per command. Error
    /// replies are returned as [`Reply::Error`], not as `Err`.
    pub fn pipeline(&mut self, commands: &[&[&str]]) -> HookResult<Vec<Reply>> {
        let mut buf = Vec::new();
        for cmd in commands {
            encode(&mut buf, cmd);
        }
        let peer = self.peer.clone();
        let io = |e: io::Error| HookError::from(e).context(&peer);
        let stream = self.reader.get_mut();
        stream.write_all(&buf).map_err(io)?;
        stream.flush().map_err(io)?;
        let mut out = Vec::with_capacity(commands.len());
        for _ in commands {
            out.push(self.read_reply(0).map_err(io)?);
        }
        Ok(out)
    }

    /// Run one command; an error reply becomes a hook error naming the command.
    pub fn call(&mut self, args: &[&str]) -> HookResult<Reply> {
        let reply = self
            .pipeline(&[args])?
            .pop()
            .ok_or_else(|| HookError::failed("no reply"))?;
        match reply {
            Reply::Error(e) => Err(server_error(&self.peer, args, &e)),
            r => Ok(r),
        }
    }

    /// Run one command that answers `+OK` (or anything but an error).
    pub fn ok(&mut self, args: &[&str]) -> HookResult<()> {
        self.call(args).map(|_| ())
    }

    /// `INFO sections…` as name/value pairs.
    pub fn info(&mut self, sections: &[&str]) -> HookResult<Info> {
        let mut args = vec!["INFO"];
        args.extend_from_slice(sections);
        let reply = self.call(&args)?;
        let text = reply
            .text()
            .ok_or_else(|| HookError::failed(format!("{}: INFO returned {reply:?}", self.peer)))?;
        Ok(Info::parse(&text))
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        let n = self.reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} closed the connection", self.peer),
            ));
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    fn read_reply(&mut self, depth: usize) -> io::Result<Reply> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        if depth > MAX_DEPTH {
            return Err(bad(format!("{}: reply nested too deeply", self.peer)));
        }
        let line = self.read_line()?;
        let (kind, rest) = line.split_at(line.len().min(1));
        let int = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| bad(format!("not a RESP integer: {s:?}")))
        };
        match kind {
            "+" => Ok(Reply::Simple(rest.to_string())),
            "-" => Ok(Reply::Error(rest.to_string())),
            ":" => Ok(Reply::Int(int(rest)?)),
            "$" => {
                let n = int(rest)?;
                if n < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if n > MAX_BULK {
                    return Err(bad(format!("{}: bulk reply of {n} bytes", self.peer)));
                }
                let mut data = vec![0; n + 2];
                self.reader.read_exact(&mut data)?;
                data.truncate(n);
                Ok(Reply::Bulk(Some(data)))
            }
            "*" => {
                let n = int(rest)?;
                if n < 0 {
                    return Ok(Reply::Array(None));
                }
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(self.read_reply(depth + 1)?);
                }
                Ok(Reply::Array(Some(items)))
            }
            _ => Err(bad(format!("{}: not a RESP reply: {line:?}", self.peer))),
        }
    }
}

/// A command as a RESP array of bulk strings.
pub fn encode(buf: &mut Vec<u8>, args: &[&str]) {
    buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        buf.extend_from_slice(a.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
}

/// An error reply as a hook error: a server still loading its data is `retryable`, anything
/// else `failed`. The command is named without its arguments (AUTH carries a password).
pub fn server_error(peer: &str, args: &[&str], message: &str) -> HookError {
    let what = match args {
        [] => String::new(),
        [first, second, ..] if is_subcommand(first) => format!("{first} {second}"),
        [first, ..] => first.to_string(),
    };
    let msg = format!("{peer}: {what}: {message}");
    if message.starts_with("LOADING") || message.starts_with("BUSY") {
        HookError::Retryable(msg)
    } else {
        HookError::Failed(msg)
    }
}

fn is_subcommand(cmd: &str) -> bool {
    ["CONFIG", "CLIENT", "ACL"]
        .iter()
        .any(|c| c.eq_ignore_ascii_case(cmd))
}

/// The `name:value` lines of an `INFO` reply.
#[derive(Debug, Default, Clone)]
pub struct Info {
    pairs: Vec<(String, String)>,
}

impl Info {
    /// Parse `INFO` text (`# Section` headers and blank lines are skipped).
    pub fn parse(text: &str) -> Info {
        Info {
            pairs: text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
        }
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name` as an integer.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(|v| v.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut b = Vec::new();
        encode(&mut b, &["AUTH", "default", "p w"]);
        assert_eq!(b, b"*3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n$3\r\np w\r\n");
    }

    #[test]
    fn parses_info() {
        let i = Info::parse("# Replication\r\nrole:slave\r\nmaster_repl_offset:42\r\n\r\n");
        assert_eq!(i.get("role"), Some("slave"));
        assert_eq!(i.int("master_repl_offset"), Some(42));
        assert_eq!(i.get("nope"), None);
    }

    #[test]
    fn errors_hide_arguments() {
        let e = server_error("h:1", &["AUTH", "default", "secret"], "WRONGPASS invalid");
        assert!(matches!(e, HookError::Failed(ref m) if !m.contains("secret")));
        let e = server_error("h:1", &["INFO"], "LOADING Redis is loading");
        assert!(matches!(e, HookError::Retryable(_)));
    }
}
