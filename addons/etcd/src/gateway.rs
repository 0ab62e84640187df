//! etcd's JSON gateway (grpc-gateway, `/v3/...`) on the SDK's HTTP kit
//! ([`shoal_sdk::http`]): POST a JSON body with the auth token, read the JSON answer. What
//! is etcd's here: gRPC errors, which arrive as `{"error": …, "code": N}` (or mid-stream as
//! `{"error": {"grpc_code": N, "message": …}}`) and become [`Answer::Error`], the
//! server-streaming snapshot (one JSON message a line), 64-bit ids sent as strings, and
//! base64 keys.

use std::time::Duration;

use serde_json::Value as Json;
use shoal_sdk::http::{HttpConn, Request};
use shoal_sdk::prelude::*;

/// Largest answer read (a member list is ~1 KiB; a backup's page of 100 keys holds their
/// values).
const MAX_BODY: usize = 64 << 20;

/// A connection to one member's client port.
pub struct Gateway {
    http: HttpConn,
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
        Ok(Gateway {
            http: HttpConn::connect(endpoint, timeout)?.with_max_body(MAX_BODY),
        })
    }

    /// `host:port` this connection goes to.
    pub fn peer(&self) -> &str {
        self.http.peer()
    }

    /// POST `body` to `path` (with `token` as the `Authorization` header when given).
    pub fn post(
        &mut self,
        path: &str,
        body: &Json,
        token: Option<&str>,
    ) -> std::io::Result<Answer> {
        let body = body.to_string();
        let answer = self.http.send(&request(path, &body, token))?;
        let (status, text) = (answer.status, answer.text());
        let json: Json = serde_json::from_str(&text).map_err(|e| {
            invalid(format!(
                "{}{path}: HTTP {status}, not JSON ({e}): {}",
                self.peer(),
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
        if !answer.is_success() {
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
        let peer = self.peer().to_string();
        let body = body.to_string();
        let mut answer = self.http.stream(&request(path, &body, token))?;
        if !answer.body.is_chunked() {
            // An error before the stream began: one JSON answer.
            let text = answer.body.read_all(MAX_BODY)?;
            let text = String::from_utf8_lossy(&text);
            return Ok(Some(error_answer(answer.status, &text)));
        }
        while let Some(line) = answer.body.next_line(MAX_BODY)? {
            if let Some(a) = message(&peer, &line, &mut each)? {
                return Ok(Some(a));
            }
        }
        Ok(None)
    }
}

/// A JSON POST of `body` to `path`, with `token` as the `Authorization` header when given.
fn request<'a>(path: &'a str, body: &'a str, token: Option<&'a str>) -> Request<'a> {
    let request = Request::post_json(path, body);
    match token {
        Some(t) => request.header("Authorization", t),
        None => request,
    }
}

/// One streamed message: its `result` to `each`, or the error it carries.
fn message(
    peer: &str,
    line: &[u8],
    each: &mut impl FnMut(&Json) -> std::io::Result<()>,
) -> std::io::Result<Option<Answer>> {
    let text = String::from_utf8_lossy(line);
    if text.trim().is_empty() {
        return Ok(None);
    }
    let json: Json = serde_json::from_str(text.trim())
        .map_err(|e| invalid(format!("{peer}: a streamed message is not JSON ({e})")))?;
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
    let result = json
        .get("result")
        .ok_or_else(|| invalid(format!("{peer}: a streamed message without a result")))?;
    each(result)?;
    Ok(None)
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
