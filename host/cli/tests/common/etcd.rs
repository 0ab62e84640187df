//! etcd's JSON gateway from tests and benches: requests, logins, a writer, a reader.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value as Json};

use super::{Commit, Writer};

/// POST `body` to etcd's JSON gateway on 127.0.0.1:`port`; the answer, or the gRPC error.
pub fn etcd(port: u16, path: &str, body: &Json, token: Option<&str>) -> Result<Json, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let body = body.to_string();
    let auth = token
        .map(|t| format!("Authorization: {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let (head, rest) = out.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    // Go answers small bodies with a length, larger ones chunked.
    let text = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut text = String::new();
        let mut r = rest;
        while let Some((size, tail)) = r.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            text.push_str(&tail[..n]);
            r = &tail[n + 2..];
        }
        text
    } else {
        rest.to_string()
    };
    let v: Json = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    match v.get("error") {
        Some(e) => Err(e.as_str().unwrap_or("error").to_string()),
        None => Ok(v),
    }
}

pub fn b64(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

pub fn login(port: u16, user: &str, password: &str) -> Result<String, String> {
    let v = etcd(
        port,
        "/v3/auth/authenticate",
        &json!({ "name": user, "password": password }),
        None,
    )?;
    Ok(v["token"].as_str().ok_or("no token")?.to_string())
}

/// A writer putting `w/<n>` through `port` as `root`, logging in again whenever a request
/// fails (tokens live in the members' memory).
pub fn etcd_writer(port: u16, password: &str) -> Writer {
    etcd_writer_over(vec![port], "root", password, 1)
}

/// [`etcd_writer`] over several client ports, as an etcd client given every member's
/// address: after a failure it logs in again on the next one.
pub fn etcd_writer_over(ports: Vec<u16>, user: &str, password: &str, first: u64) -> Writer {
    let (user, pw) = (user.to_string(), password.to_string());
    let mut next = 0usize;
    Writer::start_with(first, move || {
        let port = ports[next % ports.len()];
        next += 1;
        let token = login(port, &user, &pw)?;
        Ok(Box::new(move |n: u64| -> Result<u16, String> {
            etcd(
                port,
                "/v3/kv/put",
                &json!({ "key": b64(&format!("w/{n:08}")), "value": b64("1") }),
                Some(&token),
            )?;
            Ok(port)
        }) as Commit)
    })
}

/// Every `w/` key the cluster holds, read through `port` (a linearizable read: the leader's).
pub fn stored(port: u16, token: &str) -> Result<std::collections::BTreeSet<u64>, String> {
    let v = etcd(
        port,
        "/v3/kv/range",
        &json!({ "key": b64("w/"), "range_end": b64("w0"), "keys_only": true }),
        Some(token),
    )?;
    Ok(v["kvs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|kv| {
                    let key = decode64(kv["key"].as_str()?);
                    key.trim_start_matches("w/").parse::<u64>().ok()
                })
                .collect()
        })
        .unwrap_or_default())
}

/// [`login`] and [`stored`] through `port` as `user`, tried again for up to 10 s while the
/// connection itself fails (just after a leader change the endpoint may close a connection
/// it accepted while it re-routes; what matters is what the cluster holds, not that one
/// connection). An error from etcd itself is returned at once.
pub fn stored_eventually(
    port: u16,
    user: &str,
    password: &str,
) -> (String, std::collections::BTreeSet<u64>) {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = login(port, user, password).and_then(|t| stored(port, &t).map(|s| (t, s)));
        match got {
            Ok(done) => return done,
            Err(e)
                if std::time::Instant::now() < until
                    && (e.contains("no HTTP answer")
                        || e.contains("refused")
                        || e.contains("reset")
                        || e.contains("timed out")
                        || e.contains("Resource temporarily unavailable")
                        || e.contains("EOF")) =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("reading the keys through port {port}: {e}"),
        }
    }
}

pub fn decode64(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        bits = (bits << 6) | A.iter().position(|x| *x == c).unwrap() as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    String::from_utf8(out).unwrap()
}
