//! The witness: an etcd cluster at a third site decides which of two sites goes on serving
//! a stretched volume when the sites lose each other. Each site holds a lease; the site
//! that wins the compare-and-swap on the volume's key (create it if absent, under its own
//! lease) may acknowledge writes without its peer; the other fences itself. A site that
//! reaches neither its peer nor the witness fences itself. While the sites see each other,
//! nothing waits on the witness.
//!
//! etcd is spoken to through its JSON gateway (HTTP/1.1, `/v3/...`), which every etcd
//! since 3.3 serves beside gRPC: no protobuf toolchain, and the requests are plain enough
//! to read in a packet capture. Every request has a deadline.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

/// Largest response accepted from etcd.
const MAX_RESPONSE: u64 = 1 << 20;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(s: &str) -> Option<String> {
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).ok()?).ok()
}

/// etcd's JSON numbers come as strings.
fn int(v: &Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_i64())
        .unwrap_or(0)
}

/// A client of one etcd endpoint's JSON gateway.
#[derive(Debug, Clone)]
pub struct Etcd {
    pub endpoint: SocketAddr,
    pub timeout: Duration,
}

/// What a claim on the volume's key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free: it is ours now, under our lease.
    Won,
    /// We held it already.
    Ours,
    /// Another site holds it.
    HeldBy(String),
}

impl Etcd {
    pub fn new(endpoint: SocketAddr) -> Etcd {
        Etcd {
            endpoint,
            timeout: Duration::from_secs(2),
        }
    }

    fn post(&self, path: &str, body: &Value) -> io::Result<Value> {
        let mut s = TcpStream::connect_timeout(&self.endpoint, self.timeout)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        let body = body.to_string();
        write!(s, "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", self.endpoint, body.len())?;
        let mut resp = String::new();
        s.take(MAX_RESPONSE).read_to_string(&mut resp)?;
        let (head, payload) = resp
            .split_once("\r\n\r\n")
            .ok_or_else(|| io::Error::other("etcd: malformed HTTP response"))?;
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            return Err(io::Error::other(format!(
                "etcd {path}: HTTP {status}: {}",
                payload.trim()
            )));
        }
        // Chunked or not, the JSON object spans from the first '{' to the last '}'.
        let json = payload
            .find('{')
            .zip(payload.rfind('}'))
            .map(|(a, b)| &payload[a..=b])
            .ok_or_else(|| io::Error::other("etcd: no JSON in response"))?;
        serde_json::from_str(json).map_err(|e| io::Error::other(format!("etcd {path}: {e}")))
    }

    /// A new lease of `ttl` seconds; its id.
    pub fn grant(&self, ttl: u64) -> io::Result<i64> {
        let r = self.post("/v3/lease/grant", &json!({"TTL": ttl}))?;
        Ok(int(&r["ID"]))
    }

    /// Renew a lease; its remaining TTL (0: it had expired).
    pub fn keepalive(&self, lease: i64) -> io::Result<i64> {
        let r = self.post("/v3/lease/keepalive", &json!({"ID": lease.to_string()}))?;
        Ok(int(&r["result"]["TTL"]))
    }

    pub fn revoke(&self, lease: i64) -> io::Result<()> {
        self.post("/v3/lease/revoke", &json!({"ID": lease.to_string()}))
            .map(|_| ())
    }

    /// The value of `key`, if it exists.
    pub fn get(&self, key: &str) -> io::Result<Option<String>> {
        let r = self.post("/v3/kv/range", &json!({"key": b64(key)}))?;
        Ok(r["kvs"]
            .get(0)
            .and_then(|kv| kv["value"].as_str())
            .and_then(unb64))
    }

    /// Compare-and-swap: create `key` = `value` under `lease` if the key is absent.
    pub fn claim(&self, key: &str, value: &str, lease: i64) -> io::Result<Claim> {
        let k = b64(key);
        let req = json!({
            "compare": [{"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": {"key": k, "value": b64(value), "lease": lease.to_string()}}],
            "failure": [{"request_range": {"key": k}}],
        });
        let r = self.post("/v3/kv/txn", &req)?;
        if r["succeeded"].as_bool() == Some(true) {
            return Ok(Claim::Won);
        }
        let holder = r["responses"][0]["response_range"]["kvs"][0]["value"]
            .as_str()
            .and_then(unb64)
            .unwrap_or_default();
        Ok(if holder == value {
            Claim::Ours
        } else {
            Claim::HeldBy(holder)
        })
    }

    /// Delete `key` if it still holds `value` (give the volume back).
    pub fn release(&self, key: &str, value: &str) -> io::Result<bool> {
        let k = b64(key);
        let req = json!({
            "compare": [{"key": k, "result": "EQUAL", "target": "VALUE", "value": b64(value)}],
            "success": [{"request_delete_range": {"key": k}}],
        });
        Ok(self.post("/v3/kv/txn", &req)?["succeeded"].as_bool() == Some(true))
    }
}

/// What a site may do with a stretched volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The peer is reachable: writes go to both sites; the witness is not asked.
    Mirrored,
    /// The peer is lost and this site won the witness: it serves alone and records what
    /// the peer misses.
    Sole,
    /// The peer is lost and this site lost the witness, or reached neither: no I/O.
    Fenced { why: String },
}

/// One site's view of one stretched volume.
#[derive(Debug)]
pub struct Witness {
    pub etcd: Etcd,
    pub site: String,
    pub key: String,
    pub ttl: u64,
    lease: Option<i64>,
    pub role: Role,
}

impl Witness {
    pub fn new(etcd: Etcd, site: &str, volume: &str, ttl: u64) -> Witness {
        Witness {
            etcd,
            site: site.into(),
            key: format!("/nvmf-raid/volumes/{volume}/sole"),
            ttl,
            lease: None,
            role: Role::Mirrored,
        }
    }

    /// Keep this site's lease alive (call every ttl/3); a lease that expired is replaced,
    /// and a claim that lived under it is gone with it.
    pub fn heartbeat(&mut self) -> io::Result<()> {
        let alive = match self.lease {
            Some(id) => self.etcd.keepalive(id)? > 0,
            None => false,
        };
        if !alive {
            self.lease = Some(self.etcd.grant(self.ttl)?);
            if self.role == Role::Sole {
                // The claim expired with the lease: it must be won again.
                self.role = Role::Fenced {
                    why: "the lease that held the claim expired".into(),
                };
            }
        }
        Ok(())
    }

    /// The peer is unreachable: claim the volume. Exactly one site can win; a site that
    /// cannot reach the witness fences itself.
    pub fn peer_lost(&mut self) -> &Role {
        let outcome = self.heartbeat().and_then(|()| {
            self.etcd.claim(
                &self.key,
                &self.site,
                self.lease.expect("heartbeat made a lease"),
            )
        });
        self.role = match outcome {
            Ok(Claim::Won | Claim::Ours) => Role::Sole,
            Ok(Claim::HeldBy(other)) => Role::Fenced {
                why: format!("site '{other}' holds the volume"),
            },
            Err(e) => Role::Fenced {
                why: format!("neither the peer nor the witness is reachable: {e}"),
            },
        };
        &self.role
    }

    /// The peer is back and in sync: give the claim back; writes go to both sites again.
    pub fn peer_back(&mut self) -> io::Result<&Role> {
        if self.role == Role::Sole {
            self.etcd.release(&self.key, &self.site)?;
        }
        self.role = Role::Mirrored;
        Ok(&self.role)
    }

    /// Give the lease back (an orderly stop): a claim under it goes with it.
    pub fn shutdown(&mut self) -> io::Result<()> {
        match self.lease.take() {
            Some(id) => self.etcd.revoke(id),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in [
            "",
            "a",
            "ab",
            "abc",
            "/nvmf-raid/volumes/vol0/sole",
            "site-b",
        ] {
            assert_eq!(unb64(&b64(s)).as_deref(), Some(s));
        }
        assert_eq!(b64("vol"), "dm9s");
    }

    #[test]
    fn an_unreachable_witness_fences_the_site() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut w = Witness::new(
            Etcd {
                endpoint: dead,
                timeout: Duration::from_millis(200),
            },
            "a",
            "v",
            5,
        );
        assert!(matches!(w.peer_lost(), Role::Fenced { .. }));
    }
}
