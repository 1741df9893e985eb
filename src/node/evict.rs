//! Draining this node through the Eviction API, with the node's own credentials.
//!
//! `kubectl drain` cannot work with a kubelet's credentials: it reads each pod's DaemonSet,
//! which the Node authorizer forbids, so it evicts nothing and the instance dies with its
//! pods, ignoring PodDisruptionBudgets. What a kubelet may do (Node authorizer and
//! NodeRestriction) is exactly what draining needs: patch its own Node (cordon), list the
//! pods bound to it, and create evictions for them. Masters use the same code with their
//! admin kubeconfig.
//!
//! # Flow
//! 1. Cordon: `spec.unschedulable = true` on this Node.
//! 2. List the pods bound to this node; skip mirror pods (static pods: the kubelet owns
//!    them), DaemonSet pods (their controller ignores unschedulable and would recreate
//!    them) and pods that have already finished.
//! 3. Evict each; `429 Too Many Requests` means a PodDisruptionBudget blocks it for now:
//!    back off and try again. `404` means it is already gone.
//! 4. Wait until every evicted pod is gone (or replaced by one with another uid).
//!
//! Everything is bounded by one deadline; `on_wait` runs at most every `heartbeat` while
//! the drain waits, so the caller can record a lifecycle-action heartbeat.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::{Error, Result};

/// The API server and the credentials of one kubeconfig (its current context's).
pub struct Kubeconfig {
    pub server: String,
    pub ca_pem: Vec<u8>,
    /// Client certificate and key, PEM, concatenated.
    pub identity_pem: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawKubeconfig {
    #[serde(default)]
    current_context: Option<String>,
    #[serde(default)]
    clusters: Vec<Named<RawCluster>>,
    #[serde(default)]
    users: Vec<Named<RawUser>>,
    #[serde(default)]
    contexts: Vec<Named<RawContext>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: T,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawCluster {
    server: String,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawUser {
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
}

#[derive(Deserialize)]
struct RawContext {
    cluster: String,
    user: String,
}

impl Kubeconfig {
    /// Reads a kubeconfig; file references are resolved under `root` (the agent's root).
    pub fn load(path: &Path, root: &Path) -> Result<Kubeconfig> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let doc = crate::yaml::parse(&text)
            .map_err(|e| Error::Runtime(format!("{}: not YAML: {}", path.display(), e.message)))?;
        let raw: RawKubeconfig = crate::yaml::from_document(&doc).map_err(|(at, e)| {
            Error::Runtime(format!("{}: not a kubeconfig at {at}: {e}", path.display()))
        })?;
        let bad = |what: &str| Error::Runtime(format!("{}: {what}", path.display()));
        let ctx = match &raw.current_context {
            Some(name) => raw.contexts.iter().find(|c| &c.name == name),
            None => raw.contexts.first(),
        }
        .ok_or_else(|| bad("no current context"))?;
        let cluster = raw
            .clusters
            .iter()
            .find(|c| c.name == ctx.value.cluster)
            .ok_or_else(|| bad("the context's cluster is missing"))?;
        let user = raw
            .users
            .iter()
            .find(|u| u.name == ctx.value.user)
            .ok_or_else(|| bad("the context's user is missing"))?;
        let file_or_data = |file: &Option<String>, data: &Option<String>, what: &str| {
            if let Some(d) = data {
                return base64::engine::general_purpose::STANDARD
                    .decode(d.trim())
                    .map_err(|e| bad(&format!("{what}: bad base64: {e}")));
            }
            let f = file.as_ref().ok_or_else(|| bad(&format!("no {what}")))?;
            let p = root.join(f.trim_start_matches('/'));
            std::fs::read(&p).map_err(Error::io(&p))
        };
        let c = &cluster.value;
        let u = &user.value;
        let ca_pem = file_or_data(
            &c.certificate_authority,
            &c.certificate_authority_data,
            "certificate-authority",
        )?;
        let mut identity_pem = file_or_data(
            &u.client_certificate,
            &u.client_certificate_data,
            "client-certificate",
        )?;
        // The kubelet's rotated credentials hold certificate and key in one file.
        let key = file_or_data(&u.client_key, &u.client_key_data, "client-key")?;
        if key != identity_pem {
            identity_pem.push(b'\n');
            identity_pem.extend_from_slice(&key);
        }
        Ok(Kubeconfig {
            server: c.server.trim_end_matches('/').to_string(),
            ca_pem,
            identity_pem,
        })
    }
}

/// The parts of a Pod that draining looks at.
#[derive(Debug, Clone, Deserialize)]
pub struct Pod {
    pub metadata: PodMeta,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodMeta {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub owner_references: Vec<OwnerRef>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OwnerRef {
    pub kind: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodStatus {
    #[serde(default)]
    pub phase: String,
}

#[derive(Deserialize)]
struct PodList {
    items: Vec<Pod>,
}

/// Why a pod is left alone, if it is (pure: unit-tested).
pub fn skip_reason(p: &Pod) -> Option<&'static str> {
    if p.metadata
        .annotations
        .contains_key("kubernetes.io/config.mirror")
    {
        return Some("a mirror (static) pod");
    }
    if p.metadata
        .owner_references
        .iter()
        .any(|o| o.kind == "DaemonSet")
    {
        return Some("a DaemonSet pod");
    }
    if matches!(p.status.phase.as_str(), "Succeeded" | "Failed") {
        return Some("finished");
    }
    None
}

/// An API client with one kubeconfig's credentials.
pub struct Api {
    http: reqwest::Client,
    server: String,
}

impl Api {
    pub fn new(kc: &Kubeconfig) -> Result<Api> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let ca = reqwest::Certificate::from_pem(&kc.ca_pem)
            .map_err(|e| Error::Runtime(format!("kubeconfig CA: {e}")))?;
        let identity = reqwest::Identity::from_pem(&kc.identity_pem)
            .map_err(|e| Error::Runtime(format!("kubeconfig client certificate: {e}")))?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .identity(identity)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Runtime(format!("API client: {e}")))?;
        Ok(Api {
            http,
            server: kc.server.clone(),
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<(u16, String)> {
        let resp = req
            .send()
            .await
            .map_err(|e| Error::Runtime(format!("{what}: {}", crate::error::chain(&e))))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Ok((status, body))
    }

    pub async fn cordon(&self, node: &str) -> Result<()> {
        let url = format!("{}/api/v1/nodes/{node}", self.server);
        let req = self
            .http
            .patch(url)
            .header("Content-Type", "application/strategic-merge-patch+json")
            .body(r#"{"spec":{"unschedulable":true}}"#);
        match self.send(req, "cordon").await? {
            (200, _) => Ok(()),
            (s, body) => Err(Error::Runtime(format!(
                "cordoning {node}: HTTP {s}: {}",
                short(&body)
            ))),
        }
    }

    pub async fn pods_on(&self, node: &str) -> Result<Vec<Pod>> {
        let url = format!("{}/api/v1/pods", self.server);
        let req = self
            .http
            .get(url)
            .query(&[("fieldSelector", format!("spec.nodeName={node}"))]);
        match self.send(req, "listing pods").await? {
            (200, body) => serde_json::from_str::<PodList>(&body)
                .map(|l| l.items)
                .map_err(|e| Error::Runtime(format!("listing pods: {e}"))),
            (s, body) => Err(Error::Runtime(format!(
                "listing the pods on {node}: HTTP {s}: {}",
                short(&body)
            ))),
        }
    }

    /// What an eviction request got.
    pub async fn evict(&self, ns: &str, name: &str) -> Result<Eviction> {
        let url = format!(
            "{}/api/v1/namespaces/{ns}/pods/{name}/eviction",
            self.server
        );
        let body = serde_json::json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": ns},
        });
        let req = self.http.post(url).json(&body);
        match self.send(req, "eviction").await? {
            (200 | 201, _) => Ok(Eviction::Evicted),
            (429, _) => Ok(Eviction::Blocked),
            // To a node, a pod that is no longer bound to it is forbidden, not missing.
            (403 | 404, body) => Ok(Eviction::Refused(short(&body))),
            (s, body) => Err(Error::Runtime(format!(
                "evicting {ns}/{name}: HTTP {s}: {}",
                short(&body)
            ))),
        }
    }
}

/// The answer to one eviction request.
#[derive(Debug, PartialEq, Eq)]
pub enum Eviction {
    Evicted,
    /// 429: a PodDisruptionBudget allows no disruption now.
    Blocked,
    /// 403/404: gone already, or not ours to evict (the caller checks which).
    Refused(String),
}

fn short(body: &str) -> String {
    body.chars().take(300).collect()
}

/// What a drain did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    pub evicted: Vec<String>,
    pub skipped: Vec<String>,
}

/// Cordons `node` and evicts its pods, honouring disruption budgets, until `bound` runs
/// out; `on_wait` is called at most every `heartbeat` while it waits.
pub async fn drain<F, Fut>(
    api: &Api,
    node: &str,
    bound: Duration,
    heartbeat: Duration,
    mut on_wait: F,
) -> Result<Drained>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let deadline = Instant::now() + bound;
    let mut last_beat = Instant::now();
    api.cordon(node).await?;
    let mut out = Drained::default();
    let mut pending: Vec<Pod> = vec![];
    for p in api.pods_on(node).await? {
        let id = format!("{}/{}", p.metadata.namespace, p.metadata.name);
        match skip_reason(&p) {
            Some(why) => {
                tracing::info!(pod = %id, "not evicted: {why}");
                out.skipped.push(id);
            }
            None => pending.push(p),
        }
    }
    // Evict; a pod a budget protects is tried again, every other one is not held up by it.
    // From half a second (a budget frees up as soon as a replacement is Ready elsewhere)
    // to 5 s between rounds, jittered, within the drain's one deadline.
    let mut backoff = Backoff::new(
        Duration::from_millis(500),
        Duration::from_secs(5),
        deadline.saturating_duration_since(Instant::now()),
    );
    let mut evicted: Vec<Pod> = vec![];
    while !pending.is_empty() {
        let mut blocked = vec![];
        for p in pending {
            let id = format!("{}/{}", p.metadata.namespace, p.metadata.name);
            match api.evict(&p.metadata.namespace, &p.metadata.name).await? {
                Eviction::Evicted => {
                    tracing::info!(pod = %id, "evicted");
                    evicted.push(p);
                }
                Eviction::Blocked => blocked.push(p),
                Eviction::Refused(why) => {
                    // Gone between the listing and now is fine; anything else is not.
                    if uids_on(api, node).await?.contains(&p.metadata.uid) {
                        return Err(Error::Runtime(format!("evicting {id}: refused: {why}")));
                    }
                    tracing::info!(pod = %id, "already gone");
                }
            }
        }
        pending = blocked;
        if pending.is_empty() {
            break;
        }
        let names: BTreeSet<String> = pending
            .iter()
            .map(|p| format!("{}/{}", p.metadata.namespace, p.metadata.name))
            .collect();
        let Some(delay) = backoff.next_delay() else {
            return Err(Error::Timeout(format!(
                "drain: a PodDisruptionBudget still blocks evicting {names:?} after {}s",
                bound.as_secs()
            )));
        };
        tracing::info!(pods = ?names, "a PodDisruptionBudget blocks eviction; retrying");
        beat(&mut last_beat, heartbeat, &mut on_wait).await;
        tokio::time::sleep(delay).await;
    }
    // Wait until the evicted pods are gone from this node (their grace periods run). A node
    // may list its own pods; it may not read one that is no longer bound to it.
    loop {
        let left = uids_on(api, node).await?;
        let waiting: Vec<&Pod> = evicted
            .iter()
            .filter(|p| left.contains(&p.metadata.uid))
            .collect();
        if waiting.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let names: Vec<String> = waiting
                .iter()
                .map(|p| format!("{}/{}", p.metadata.namespace, p.metadata.name))
                .collect();
            return Err(Error::Timeout(format!(
                "drain: {names:?} evicted but still terminating after {}s",
                bound.as_secs()
            )));
        }
        beat(&mut last_beat, heartbeat, &mut on_wait).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    out.evicted = evicted
        .iter()
        .map(|p| format!("{}/{}", p.metadata.namespace, p.metadata.name))
        .collect();
    Ok(out)
}

async fn uids_on(api: &Api, node: &str) -> Result<BTreeSet<String>> {
    Ok(api
        .pods_on(node)
        .await?
        .into_iter()
        .map(|p| p.metadata.uid)
        .collect())
}

async fn beat<F, Fut>(last: &mut Instant, every: Duration, on_wait: &mut F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if last.elapsed() >= every {
        on_wait().await;
        *last = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn mirror_daemonset_and_finished_pods_are_skipped() {
        let base = |extra: serde_json::Value| {
            let mut v =
                serde_json::json!({"metadata": {"name": "p", "namespace": "n", "uid": "u"}});
            for (k, x) in extra.as_object().unwrap() {
                v["metadata"][k] = x.clone();
            }
            v
        };
        assert_eq!(skip_reason(&pod(base(serde_json::json!({})))), None);
        assert_eq!(
            skip_reason(&pod(base(
                serde_json::json!({"annotations": {"kubernetes.io/config.mirror": "x"}})
            ))),
            Some("a mirror (static) pod")
        );
        assert_eq!(
            skip_reason(&pod(base(
                serde_json::json!({"ownerReferences": [{"kind": "DaemonSet"}]})
            ))),
            Some("a DaemonSet pod")
        );
        assert_eq!(
            skip_reason(&pod(base(
                serde_json::json!({"ownerReferences": [{"kind": "ReplicaSet"}]})
            ))),
            None
        );
        let mut done = base(serde_json::json!({}));
        done["status"] = serde_json::json!({"phase": "Succeeded"});
        assert_eq!(skip_reason(&pod(done)), Some("finished"));
    }

    #[test]
    fn kubeconfigs_with_files_or_data_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("var/lib/kubelet/pki")).unwrap();
        std::fs::write(
            dir.path()
                .join("var/lib/kubelet/pki/kubelet-client-current.pem"),
            "CERT+KEY",
        )
        .unwrap();
        let kc = dir.path().join("kubelet.conf");
        std::fs::write(
            &kc,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: default-cluster\n  cluster:\n    server: https://lb:6443/\n    certificate-authority-data: Q0E=\n\
             contexts:\n- name: default-context\n  context:\n    cluster: default-cluster\n    user: default-auth\ncurrent-context: default-context\n\
             users:\n- name: default-auth\n  user:\n    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem\n",
        )
        .unwrap();
        let k = Kubeconfig::load(&kc, dir.path()).unwrap();
        assert_eq!(k.server, "https://lb:6443");
        assert_eq!(k.ca_pem, b"CA");
        assert_eq!(
            k.identity_pem, b"CERT+KEY",
            "one file holds both: not repeated"
        );
    }
}
