//! The etcd backend: etcd v3 through its JSON gateway (`POST /v3/...`), so no gRPC stack is
//! needed. Keys under `/shoal/clusters/<name>/`:
//!
//! * `term`: the last elected [`Leader`] (no lease: terms are never forgotten),
//! * `leader`: the same record bound to a lease of the leader's TTL (live while renewed),
//! * `manager`: the acting host's name, bound to a lease.
//!
//! Every change is one transaction comparing the revision it read, so two hosts can never both
//! elect a leader for the same term.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Coordinator, DcsError, Leader, Result};

/// Per-request timeout.
const TIMEOUT: Duration = Duration::from_secs(2);

/// etcd-backed [`Coordinator`].
pub struct Etcd {
    endpoints: Vec<String>,
    prefix: String,
}

fn unavailable(m: impl Into<String>) -> DcsError {
    DcsError::Unavailable(m.into())
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

/// A key's value and revisions, from a range answer.
struct Kv {
    value: String,
    mod_revision: String,
}

impl Etcd {
    /// A client for the etcd cluster at `endpoints` ("http://127.0.0.1:2379" or
    /// "127.0.0.1:2379"), keeping its keys under `/shoal/`.
    pub fn new(endpoints: Vec<String>) -> Result<Etcd> {
        if endpoints.is_empty() {
            return Err(unavailable("no etcd endpoints configured"));
        }
        let mut clean = Vec::new();
        for e in endpoints {
            let hostport = e
                .strip_prefix("http://")
                .unwrap_or(&e)
                .trim_end_matches('/');
            if e.starts_with("https://") || hostport.is_empty() || hostport.contains('/') {
                return Err(unavailable(format!(
                    "etcd endpoint {e:?}: expected http://HOST:PORT (TLS is not supported yet)"
                )));
            }
            clean.push(hostport.to_string());
        }
        Ok(Etcd {
            endpoints: clean,
            prefix: "/shoal/clusters".into(),
        })
    }

    /// The endpoints, as configured.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn key(&self, cluster: &str, what: &str) -> String {
        format!("{}/{cluster}/{what}", self.prefix)
    }

    /// POST `body` to `path` on the first endpoint that answers.
    async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let mut last = String::new();
        for ep in &self.endpoints {
            match tokio::time::timeout(TIMEOUT, post_once(ep, path, body)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => last = format!("{ep}: {e}"),
                Err(_) => last = format!("{ep}: no answer within {TIMEOUT:?}"),
            }
        }
        Err(unavailable(last))
    }

    async fn get(&self, key: &str) -> Result<Option<Kv>> {
        let v = self
            .post("/v3/kv/range", &json!({ "key": b64(key) }))
            .await?;
        let Some(kv) = v.get("kvs").and_then(|k| k.get(0)) else {
            return Ok(None);
        };
        let value = kv
            .get("value")
            .and_then(Value::as_str)
            .map(|s| B64.decode(s).unwrap_or_default())
            .unwrap_or_default();
        Ok(Some(Kv {
            value: String::from_utf8_lossy(&value).into_owned(),
            mod_revision: kv
                .get("mod_revision")
                .and_then(Value::as_str)
                .unwrap_or("0")
                .to_string(),
        }))
    }

    async fn grant(&self, ttl: Duration) -> Result<String> {
        let secs = ttl.as_secs().max(1);
        let v = self
            .post("/v3/lease/grant", &json!({ "TTL": secs.to_string() }))
            .await?;
        v.get("ID")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| unavailable(format!("lease grant answered {v}")))
    }

    /// A transaction; true when its comparisons held.
    async fn txn(&self, compare: Vec<Value>, success: Vec<Value>) -> Result<bool> {
        let v = self
            .post(
                "/v3/kv/txn",
                &json!({ "compare": compare, "success": success }),
            )
            .await?;
        if let Some(e) = v.get("error").or_else(|| v.get("message")) {
            return Err(unavailable(format!("txn failed: {e}")));
        }
        Ok(v.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }

    fn put(key: &str, value: &str, lease: Option<&str>) -> Value {
        let mut p = json!({ "key": b64(key), "value": b64(value) });
        if let Some(l) = lease {
            p["lease"] = json!(l);
        }
        json!({ "request_put": p })
    }

    fn same_revision(key: &str, kv: Option<&Kv>) -> Value {
        match kv {
            Some(kv) => json!({
                "key": b64(key), "target": "MOD", "result": "EQUAL",
                "mod_revision": kv.mod_revision
            }),
            None => json!({
                "key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"
            }),
        }
    }

    fn parse_leader(kv: &Kv) -> Result<Leader> {
        serde_json::from_str(&kv.value)
            .map_err(|e| unavailable(format!("unreadable leader record {:?}: {e}", kv.value)))
    }
}

/// One HTTP/1.1 POST with a JSON body; the JSON answer.
async fn post_once(hostport: &str, path: &str, body: &Value) -> std::result::Result<Value, String> {
    let mut s = tokio::net::TcpStream::connect(hostport)
        .await
        .map_err(|e| e.to_string())?;
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP answer: {text:.200}"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    let payload = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    if status != "200" {
        return Err(format!("HTTP {status}: {}", payload.trim()));
    }
    serde_json::from_str(payload.trim()).map_err(|e| format!("{e}: {payload:.200}"))
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

impl Coordinator for Etcd {
    async fn leader(&self, cluster: &str) -> Result<Option<(Leader, bool)>> {
        let Some(term) = self.get(&self.key(cluster, "term")).await? else {
            return Ok(None);
        };
        let l = Self::parse_leader(&term)?;
        let live = match self.get(&self.key(cluster, "leader")).await? {
            Some(kv) => Self::parse_leader(&kv)? == l,
            None => false,
        };
        Ok(Some((l, live)))
    }

    async fn keep_leader(&self, cluster: &str, holder: &str, ttl: Duration) -> Result<Leader> {
        let term_key = self.key(cluster, "term");
        let seen = self.get(&term_key).await?;
        let leader = match &seen {
            None => Leader {
                holder: holder.into(),
                term: 1,
            },
            Some(kv) => Self::parse_leader(kv)?,
        };
        if leader.holder != holder {
            return Err(DcsError::Conflict(format!(
                "{holder} is not the leader of {cluster}: {} is, in term {}",
                leader.holder, leader.term
            )));
        }
        let record = serde_json::to_string(&leader).map_err(|e| unavailable(e.to_string()))?;
        let lease = self.grant(ttl).await?;
        let mut puts = vec![Self::put(
            &self.key(cluster, "leader"),
            &record,
            Some(&lease),
        )];
        if seen.is_none() {
            puts.push(Self::put(&term_key, &record, None));
        }
        if self
            .txn(vec![Self::same_revision(&term_key, seen.as_ref())], puts)
            .await?
        {
            Ok(leader)
        } else {
            Err(DcsError::Conflict(format!(
                "the leader of {cluster} changed while renewing"
            )))
        }
    }

    async fn elect(
        &self,
        cluster: &str,
        expected: Option<&Leader>,
        to: &str,
        ttl: Duration,
    ) -> Result<Leader> {
        let term_key = self.key(cluster, "term");
        let seen = self.get(&term_key).await?;
        let current = seen.as_ref().map(Self::parse_leader).transpose()?;
        if current.as_ref() != expected {
            return Err(DcsError::Conflict(format!(
                "the leader of {cluster} changed meanwhile (now {})",
                current
                    .map(|l| format!("{} in term {}", l.holder, l.term))
                    .unwrap_or_else(|| "none".into())
            )));
        }
        let next = Leader {
            holder: to.into(),
            term: current.map(|l| l.term).unwrap_or(0) + 1,
        };
        let record = serde_json::to_string(&next).map_err(|e| unavailable(e.to_string()))?;
        let lease = self.grant(ttl).await?;
        let ok = self
            .txn(
                vec![Self::same_revision(&term_key, seen.as_ref())],
                vec![
                    Self::put(&term_key, &record, None),
                    Self::put(&self.key(cluster, "leader"), &record, Some(&lease)),
                ],
            )
            .await?;
        if ok {
            Ok(next)
        } else {
            Err(DcsError::Conflict(format!(
                "another host elected a leader of {cluster} first"
            )))
        }
    }

    async fn manage(&self, cluster: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let key = self.key(cluster, "manager");
        let seen = self.get(&key).await?;
        if let Some(kv) = &seen {
            if kv.value != owner {
                return Ok(false);
            }
        }
        let lease = self.grant(ttl).await?;
        self.txn(
            vec![Self::same_revision(&key, seen.as_ref())],
            vec![Self::put(&key, owner, Some(&lease))],
        )
        .await
    }

    async fn manager(&self, cluster: &str) -> Result<Option<String>> {
        // The key is bound to the manager's lease: it is gone once the lease lapses.
        Ok(self
            .get(&self.key(cluster, "manager"))
            .await?
            .map(|kv| kv.value))
    }

    async fn forget(&self, cluster: &str) -> Result<()> {
        let start = format!("{}/{cluster}/", self.prefix);
        let end = format!("{}/{cluster}0", self.prefix);
        self.post(
            "/v3/kv/deleterange",
            &json!({ "key": b64(&start), "range_end": b64(&end) }),
        )
        .await?;
        Ok(())
    }
}
