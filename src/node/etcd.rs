//! The local etcd member, through etcd's JSON gateway (`/v3/cluster/member/*`), with the
//! masters' etcd client certificates. Only a live master can change membership.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::backoff::Backoff;
use crate::contract::node_config::EtcdSettings;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Member {
    /// uint64, which the gateway encodes as a string.
    #[serde(rename = "ID", deserialize_with = "u64_from_string_or_number")]
    pub id: u64,
    /// Empty for a member that was added but never started.
    #[serde(default)]
    pub name: String,
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    #[serde(rename = "clientURLs", default)]
    pub client_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    pub is_learner: bool,
}

impl Member {
    /// The host of the first peer URL (`https://10.0.1.5:2380` → `10.0.1.5`).
    pub fn peer_host(&self) -> Option<&str> {
        let url = self.peer_urls.first()?;
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
        Some(
            rest.rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(rest)
                .trim_matches(['[', ']']),
        )
    }
}

fn u64_from_string_or_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        N(u64),
    }
    match N::deserialize(d)? {
        N::S(s) => s.parse().map_err(serde::de::Error::custom),
        N::N(n) => Ok(n),
    }
}

pub struct Etcd {
    http: reqwest::Client,
    endpoint: String,
}

#[derive(Deserialize)]
struct MemberList {
    #[serde(default)]
    members: Vec<Member>,
}

#[derive(Serialize)]
struct RemoveRequest {
    #[serde(rename = "ID")]
    id: String,
}

impl Etcd {
    /// A client for `settings.endpoint`; `root` prefixes the certificate paths.
    pub fn new(settings: &EtcdSettings, root: &std::path::Path) -> Result<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .use_rustls_tls();
        if settings.endpoint.starts_with("https://") {
            let read = |p: &str| {
                let path = root.join(p.trim_start_matches('/'));
                std::fs::read(&path).map_err(Error::io(path))
            };
            let ca = reqwest::Certificate::from_pem(&read(&settings.ca_file)?)
                .map_err(|e| Error::Runtime(format!("etcd CA {}: {e}", settings.ca_file)))?;
            let mut pem = read(&settings.cert_file)?;
            pem.extend(read(&settings.key_file)?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                Error::Runtime(format!(
                    "etcd client certificate {}: {e}",
                    settings.cert_file
                ))
            })?;
            builder = builder
                .add_root_certificate(ca)
                .tls_built_in_root_certs(false)
                .identity(identity);
        }
        let http = builder
            .build()
            .map_err(|e| Error::Runtime(format!("etcd client: {e}")))?;
        Ok(Self {
            http,
            endpoint: settings.endpoint.trim_end_matches('/').to_string(),
        })
    }

    async fn call<B: Serialize>(&self, path: &str, body: &B) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.endpoint);
        let resp = self.http.post(&url).json(body).send().await.map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            let kind = if e.is_timeout() { " (timed out)" } else { "" };
            Error::Runtime(format!("etcd {url}{kind}: {e}{cause}"))
        })?;
        let status = resp.status();
        let v: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| Error::Runtime(format!("etcd {url}: {e}")))?;
        if !status.is_success() {
            let msg = v
                .get("message")
                .or_else(|| v.get("error"))
                .and_then(|m| m.as_str())
                .unwrap_or("")
                .to_string();
            return Err(Error::Runtime(format!("etcd {path}: {status}: {msg}")));
        }
        Ok(v)
    }

    pub async fn members(&self) -> Result<Vec<Member>> {
        let v = self
            .call("/v3/cluster/member/list", &serde_json::json!({}))
            .await?;
        let list: MemberList = serde_json::from_value(v)
            .map_err(|e| Error::Runtime(format!("etcd member list: {e}")))?;
        Ok(list.members)
    }

    /// Removes a member. etcd refuses changes for a few seconds after a member starts or
    /// while the cluster looks unhealthy ("unhealthy cluster"): retry, bounded.
    pub async fn remove(&self, id: u64, timeout: Duration) -> Result<()> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5), timeout);
        loop {
            match self
                .call(
                    "/v3/cluster/member/remove",
                    &RemoveRequest { id: id.to_string() },
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.to_string().contains("member not found") => return Ok(()),
                Err(e) if is_transient(&e) => {
                    tracing::info!(member = format!("{id:x}"), error = %e, "etcd: retrying member remove");
                    if !backoff.wait().await {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// [`Self::members`], retried (bounded) while etcd is settling or busy.
    pub async fn members_retrying(&self, timeout: Duration) -> Result<Vec<Member>> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5), timeout);
        loop {
            match self.members().await {
                Err(e) if is_transient(&e) => {
                    tracing::info!(error = %e, "etcd: retrying member list");
                    if !backoff.wait().await {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }
}

/// The cluster is settling after a start or a loss, or the request timed out or could not
/// be sent while it did (a loaded machine, a restarting gateway).
fn is_transient(e: &Error) -> bool {
    let s = e.to_string();
    [
        "unhealthy cluster",
        "timed out",
        "error sending request",
        "connection refused",
        "leader changed",
    ]
    .iter()
    .any(|t| s.contains(t))
}

/// Whether removing one more member keeps a majority of the remaining members alive:
/// after removal there are `members - 1` members, of which `alive` must be a quorum.
pub fn removal_keeps_quorum(members: usize, alive: usize) -> bool {
    members >= 2 && alive > (members - 1) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_arithmetic() {
        // 3 members, 1 dead: removing it leaves 2 of which 2 are alive.
        assert!(removal_keeps_quorum(3, 2));
        // 3 members, 2 dead: after removal 2 members with 1 alive: no majority.
        assert!(!removal_keeps_quorum(3, 1));
        // 5 members, 2 dead: remove one → 4 members, 3 alive ≥ 3.
        assert!(removal_keeps_quorum(5, 3));
        assert!(removal_keeps_quorum(4, 3));
        assert!(!removal_keeps_quorum(1, 1));
    }

    #[test]
    fn members_parse_gateway_json() {
        let v = serde_json::json!({"members":[{"ID":"9372538179322589801","name":"ip-10-0-1-5","peerURLs":["https://10.0.1.5:2380"],"clientURLs":["https://10.0.1.5:2379"]},{"ID":"1","peerURLs":["https://[fd00::1]:2380"]}]});
        let l: MemberList = serde_json::from_value(v).unwrap();
        assert_eq!(l.members[0].id, 9372538179322589801);
        assert_eq!(l.members[0].peer_host(), Some("10.0.1.5"));
        assert_eq!(l.members[1].name, "");
        assert_eq!(l.members[1].peer_host(), Some("fd00::1"));
    }
}
