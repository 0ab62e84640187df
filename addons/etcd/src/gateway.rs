//! etcd's JSON gateway (grpc-gateway, `/v3/...`) over one kept HTTP/1.1 connection: POST a
//! JSON body, read the JSON answer. Bodies come back with a `Content-Length` or chunked; both
//! are read. gRPC errors arrive as `{"error": …, "code": N}` and become hook errors.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value as Json;
use shoal_sdk::prelude::*;

/// Largest answer read (a member list is ~1 KiB; a backup's page of 100 keys holds their
/// values).
const MAX_BODY: usize = 64 << 20;

/// A connection to one member's client port.
pub struct Gateway {
    reader: BufReader<TcpStream>,
    peer: String,
}

/// What a request ended with: the JSON answer, or the server's gRPC error.
pub enum Answer {
    /// A successful answer.
    Ok(Json),
    /// A gRPC error: its code and message ("etcdserver: user name already exists").
    Error { code: i64, message: String },
}

impl Gateway {
    /// Connect to `endpoint` with `timeout` on every read and write.
    pub fn connect(endpoint: &Endpoint, timeout: Duration) -> std::io::Result<Self> {
        let stream = shoal_sdk::net::connect(endpoint, timeout)?;
        Ok(Gateway {
            reader: BufReader::new(stream),
            peer: endpoint.to_string(),
        })
    }

    /// `host:port` this connection goes to.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// POST `body` to `path` (with `token` as the `Authorization` header when given).
    pub fn post(
        &mut self,
        path: &str,
        body: &Json,
        token: Option<&str>,
    ) -> std::io::Result<Answer> {
        self.send(path, body, token)?;
        let (status, text) = self.read_response()?;
        let json: Json = serde_json::from_str(&text).map_err(|e| {
            invalid(format!(
                "{}{path}: HTTP {status}, not JSON ({e}): {}",
                self.peer,
                text.chars().take(200).collect::<String>()
            ))
        })?;
        if let Some(message) = json.get("error").and_then(Json::as_str) {
            let code = json.get("code").and_then(Json::as_i64).unwrap_or(2);
            return Ok(Answer::Error {
                code,
                message: message.to_string(),
            });
        }
        if !(200..300).contains(&status) {
            return Ok(Answer::Error {
                code: 2,
                message: format!("HTTP {status}: {text}"),
            });
        }
        Ok(Answer::Ok(json))
    }

    /// POST `body` to a server-streaming `path` (`/v3/maintenance/snapshot`) and hand each
    /// message's `result` to `each` as it arrives: the gateway sends one JSON object a line,
    /// chunked, so nothing larger than one message is held. A message carrying an `error`
    /// ends the stream with the server's gRPC error.
    pub fn post_stream(
        &mut self,
        path: &str,
        body: &Json,
        token: Option<&str>,
        mut each: impl FnMut(&Json) -> std::io::Result<()>,
    ) -> std::io::Result<Option<Answer>> {
        self.send(path, body, token)?;
        let (status, chunked, length) = self.read_head()?;
        if !chunked {
            // An error before the stream began: one JSON answer.
            let n = length.ok_or_else(|| invalid("answer without a length".into()))?;
            if n > MAX_BODY {
                return Err(invalid("answer too large".into()));
            }
            let mut body = vec![0; n];
            self.reader.read_exact(&mut body)?;
            let text = String::from_utf8_lossy(&body);
            return Ok(Some(error_answer(status, &text)));
        }
        let mut line = Vec::new();
        loop {
            let size = self.chunk_size()?;
            if size == 0 {
                while !self.line()?.is_empty() {}
                break;
            }
            let mut chunk = vec![0; size];
            self.reader.read_exact(&mut chunk)?;
            self.line()?;
            for piece in chunk.split_inclusive(|b| *b == b'\n') {
                line.extend_from_slice(piece);
                if line.len() > MAX_BODY {
                    return Err(invalid("a streamed message is too large".into()));
                }
                if line.ends_with(b"\n") {
                    if let Some(a) = self.message(&line, &mut each)? {
                        return Ok(Some(a));
                    }
                    line.clear();
                }
            }
        }
        if !line.is_empty() {
            if let Some(a) = self.message(&line, &mut each)? {
                return Ok(Some(a));
            }
        }
        Ok(None)
    }

    /// One streamed message: its `result` to `each`, or the error it carries.
    fn message(
        &self,
        line: &[u8],
        each: &mut impl FnMut(&Json) -> std::io::Result<()>,
    ) -> std::io::Result<Option<Answer>> {
        let text = String::from_utf8_lossy(line);
        if text.trim().is_empty() {
            return Ok(None);
        }
        let json: Json = serde_json::from_str(text.trim()).map_err(|e| {
            invalid(format!(
                "{}: a streamed message is not JSON ({e})",
                self.peer
            ))
        })?;
        if let Some(error) = json.get("error") {
            // grpc-gateway: {"error": {"grpc_code": 7, "message": "..."}} mid-stream.
            let message = error
                .get("message")
                .and_then(Json::as_str)
                .or_else(|| error.as_str())
                .unwrap_or("error")
                .to_string();
            let code = error
                .get("grpc_code")
                .or_else(|| json.get("code"))
                .and_then(Json::as_i64)
                .unwrap_or(2);
            return Ok(Some(Answer::Error { code, message }));
        }
        let result = json.get("result").ok_or_else(|| {
            invalid(format!(
                "{}: a streamed message without a result",
                self.peer
            ))
        })?;
        each(result)?;
        Ok(None)
    }

    fn send(&mut self, path: &str, body: &Json, token: Option<&str>) -> std::io::Result<()> {
        let body = body.to_string();
        let auth = token
            .map(|t| format!("Authorization: {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{auth}\
             Content-Length: {}\r\n\r\n{body}",
            self.peer,
            body.len()
        );
        let stream = self.reader.get_mut();
        stream.write_all(request.as_bytes())?;
        stream.flush()
    }

    /// The status line and headers: (status, chunked, content length).
    fn read_head(&mut self) -> std::io::Result<(u16, bool, Option<usize>)> {
        let status_line = self.line()?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("not an HTTP status line: {status_line:?}")))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            let line = self.line()?;
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
        Ok((status, chunked, length))
    }

    /// The size line of the next chunk of a chunked body (extensions ignored).
    fn chunk_size(&mut self) -> std::io::Result<usize> {
        let line = self.line()?;
        usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| invalid(format!("bad chunk size {line:?}")))
    }

    fn read_response(&mut self) -> std::io::Result<(u16, String)> {
        let (status, chunked, length) = self.read_head()?;
        let mut body = Vec::new();
        if chunked {
            loop {
                let size = self.chunk_size()?;
                if size == 0 {
                    // Trailers, then the blank line.
                    while !self.line()?.is_empty() {}
                    break;
                }
                if body.len() + size > MAX_BODY {
                    return Err(invalid("answer too large".into()));
                }
                let start = body.len();
                body.resize(start + size, 0);
                self.reader.read_exact(&mut body[start..])?;
                self.line()?;
            }
        } else {
            let n = length.ok_or_else(|| invalid("answer without a length".into()))?;
            if n > MAX_BODY {
                return Err(invalid("answer too large".into()));
            }
            body.resize(n, 0);
            self.reader.read_exact(&mut body)?;
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} closed the connection", self.peer),
            ));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}

/// A whole answer that is not a stream: the gRPC error it carries, or the HTTP status.
fn error_answer(status: u16, text: &str) -> Answer {
    let json: Option<Json> = serde_json::from_str(text).ok();
    match json.as_ref().and_then(|j| j.get("error")) {
        Some(e) => Answer::Error {
            code: json
                .as_ref()
                .and_then(|j| j.get("code"))
                .and_then(Json::as_i64)
                .unwrap_or(2),
            message: e
                .as_str()
                .or_else(|| e.get("message").and_then(Json::as_str))
                .unwrap_or("error")
                .to_string(),
        },
        None => Answer::Error {
            code: 2,
            message: format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            ),
        },
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// A 64-bit id or number the gateway sends as a JSON string ("9315966272483199000"), or
/// as a number; absent (proto3 leaves zero values out) is 0.
pub fn u64_field(json: &Json, pointer: &str) -> u64 {
    match json.pointer(pointer) {
        Some(Json::String(s)) => s.parse().unwrap_or(0),
        Some(Json::Number(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

pub use shoal_sdk::encoding::{base64, unbase64};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads_like_the_gateway_expects() {
        assert_eq!(base64(b"\0"), "AA==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b""), "");
    }

    #[test]
    fn base64_round_trips() {
        for b in [&b""[..], b"\0", b"ab", b"abc", b"\xff\x00\x10key/1"] {
            assert_eq!(unbase64(&base64(b)).as_deref(), Some(b));
        }
        assert_eq!(unbase64("not base64!"), None);
    }

    #[test]
    fn ids_arrive_as_strings_or_numbers_or_not_at_all() {
        let j: Json = serde_json::json!({"a": {"id": "9315966272483199000"}, "n": 7});
        assert_eq!(u64_field(&j, "/a/id"), 9315966272483199000);
        assert_eq!(u64_field(&j, "/n"), 7);
        assert_eq!(u64_field(&j, "/missing"), 0);
    }
}
