//! The local etcd member, through etcd's JSON gateway (`/v3/cluster/member/*`), with the
//! masters' etcd client certificates. Only a live master can change membership.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
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

/// The gRPC status codes etcd's gateway puts in an error's `code` (and maps to HTTP statuses).
mod grpc {
    pub const DEADLINE_EXCEEDED: i64 = 4;
    pub const NOT_FOUND: i64 = 5;
    pub const UNAVAILABLE: i64 = 14;
}

/// A failed call to etcd's gateway.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The request was not answered: refused, reset or timed out.
    #[error("etcd {url}{}: {}", if source.is_timeout() { " (timed out)" } else { "" }, crate::error::chain(source))]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// etcd answered with an error: `code` is its gRPC status code.
    #[error("etcd {path}: {status}: {message}")]
    Refused {
        path: String,
        status: reqwest::StatusCode,
        code: i64,
        message: String,
    },
    /// The answer was not the JSON it should be.
    #[error("etcd {what}: {message}")]
    Malformed { what: String, message: String },
}

impl EtcdError {
    /// etcd's "member not found": the member is gone already.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            EtcdError::Refused {
                code: grpc::NOT_FOUND,
                ..
            }
        )
    }

    /// Worth asking again: the request was not answered, or etcd is settling after a start
    /// or a loss ("unhealthy cluster", "leader changed", "request timed out" are all gRPC
    /// `Unavailable`).
    pub fn is_transient(&self) -> bool {
        match self {
            EtcdError::Transport { source, .. } => !source.is_decode(),
            EtcdError::Refused { code, .. } => {
                matches!(*code, grpc::UNAVAILABLE | grpc::DEADLINE_EXCEEDED)
            }
            EtcdError::Malformed { .. } => false,
        }
    }
}

impl From<EtcdError> for Error {
    fn from(e: EtcdError) -> Self {
        Error::Runtime(e.to_string())
    }
}

/// The gRPC code of an error answer: its `code` field, else the one its HTTP status stands
/// for (the gateway maps NotFound to 404 and Unavailable to 503).
fn grpc_code(status: reqwest::StatusCode, body: &serde_json::Value) -> i64 {
    body.get("code")
        .and_then(|c| c.as_i64())
        .unwrap_or(match status.as_u16() {
            404 => grpc::NOT_FOUND,
            503 => grpc::UNAVAILABLE,
            504 => grpc::DEADLINE_EXCEEDED,
            _ => 2, // Unknown
        })
}

impl Etcd {
    /// A client for `settings.endpoint`; `root` prefixes the certificate paths.
    pub fn new(settings: &EtcdSettings, root: &std::path::Path) -> Result<Self> {
        Self::at(settings, root, &settings.endpoint)
    }

    /// A client for another member's `endpoint`, with the same client certificates.
    pub fn at(settings: &EtcdSettings, root: &std::path::Path, endpoint: &str) -> Result<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .use_rustls_tls();
        if endpoint.starts_with("https://") {
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
            endpoint: endpoint.trim_end_matches('/').to_string(),
        })
    }

    async fn call<B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<serde_json::Value, EtcdError> {
        let url = format!("{}{path}", self.endpoint);
        let transport = |source| EtcdError::Transport {
            url: url.clone(),
            source,
        };
        let resp = self
            .http
            .post(&url)
            .json(body)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        let v: serde_json::Value = resp.json().await.map_err(transport)?;
        if !status.is_success() {
            let message = v
                .get("message")
                .or_else(|| v.get("error"))
                .and_then(|m| m.as_str())
                .unwrap_or("")
                .to_string();
            return Err(EtcdError::Refused {
                path: path.to_string(),
                status,
                code: grpc_code(status, &v),
                message,
            });
        }
        Ok(v)
    }

    pub async fn members(&self) -> Result<Vec<Member>, EtcdError> {
        let v = self
            .call("/v3/cluster/member/list", &serde_json::json!({}))
            .await?;
        let list: MemberList = serde_json::from_value(v).map_err(|e| EtcdError::Malformed {
            what: "member list".into(),
            message: e.to_string(),
        })?;
        Ok(list.members)
    }

    /// Removes a member; one that is gone already counts as removed. etcd refuses changes
    /// for a few seconds after a member starts or while the cluster looks unhealthy
    /// ("unhealthy cluster"): retry, bounded by `timeout`.
    ///
    /// A member asked to remove itself stops as it applies the change and may answer
    /// "server stopped" instead of success: remove a member through another one
    /// ([`remove_through_peers`]).
    pub async fn remove(&self, id: u64, timeout: Duration) -> Result<(), EtcdError> {
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
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) if e.is_transient() => {
                    tracing::info!(endpoint = %self.endpoint, member = format!("{id:x}"), error = %e, "etcd: retrying member remove");
                    if !backoff.wait().await {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// [`Self::members`], retried (bounded) while etcd is settling or busy.
    pub async fn members_retrying(&self, timeout: Duration) -> Result<Vec<Member>, EtcdError> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5), timeout);
        loop {
            match self.members().await {
                Err(e) if e.is_transient() => {
                    tracing::info!(endpoint = %self.endpoint, error = %e, "etcd: retrying member list");
                    if !backoff.wait().await {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }
}

/// Removes `me` from `members` through the other voting members' client endpoints, one
/// after the other, each bounded by `each`: etcd answers a member's removal of itself
/// with "server stopped" as often as with success, so only a peer's answer says whether
/// the change was applied. The local endpoint is the last resort, for a member with no
/// reachable peer (its answer is then the best there is).
pub async fn remove_through_peers(
    settings: &EtcdSettings,
    root: &std::path::Path,
    members: &[Member],
    me: &Member,
    each: Duration,
) -> Result<()> {
    let peers = members
        .iter()
        .filter(|m| m.id != me.id && !m.is_learner)
        .filter_map(|m| m.client_urls.first());
    let mut last = None;
    for endpoint in peers {
        match Etcd::at(settings, root, endpoint)?
            .remove(me.id, each)
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(endpoint = %endpoint, error = %e, "etcd: this peer did not remove the member; trying the next");
                last = Some(e);
            }
        }
    }
    match Etcd::new(settings, root)?.remove(me.id, each).await {
        Ok(()) => Ok(()),
        Err(e) => Err(last.unwrap_or(e).into()),
    }
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

    fn refused(status: u16, body: serde_json::Value) -> EtcdError {
        let status = reqwest::StatusCode::from_u16(status).unwrap();
        EtcdError::Refused {
            path: "/v3/cluster/member/remove".into(),
            status,
            code: grpc_code(status, &body),
            message: body["message"].as_str().unwrap_or("").into(),
        }
    }

    #[test]
    fn gateway_errors_are_classified_by_their_grpc_code() {
        // As etcd 3.5's gateway answers (grpc-gateway v1: error, code, message).
        let gone = refused(
            404,
            serde_json::json!({"error": "etcdserver: member not found", "code": 5, "message": "etcdserver: member not found"}),
        );
        assert!(gone.is_not_found() && !gone.is_transient());
        for msg in [
            "etcdserver: unhealthy cluster",
            "etcdserver: server stopped",
            "etcdserver: leader changed",
        ] {
            let e = refused(503, serde_json::json!({"code": 14, "message": msg}));
            assert!(e.is_transient() && !e.is_not_found(), "{msg}");
        }
        // No code in the body: the HTTP status stands for it.
        assert!(refused(404, serde_json::json!({})).is_not_found());
        assert!(refused(503, serde_json::json!({})).is_transient());
        // A refusal that asking again cannot change.
        let denied = refused(
            403,
            serde_json::json!({"code": 7, "message": "etcdserver: permission denied"}),
        );
        assert!(!denied.is_transient() && !denied.is_not_found());
        assert_eq!(
            denied.to_string(),
            "etcd /v3/cluster/member/remove: 403 Forbidden: etcdserver: permission denied"
        );
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
