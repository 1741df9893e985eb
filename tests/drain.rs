//! Scale-in of a worker: `haimg node watch` drains the node with the kubelet's own
//! credentials, against an API double that enforces the Node authorizer's rules, and
//! honours a PodDisruptionBudget, heartbeating the lifecycle action while it waits.

mod common;

use std::time::Duration;

use common::fleet::*;
use common::kubeapi::KubeApi;

const BOUND: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_evicts_its_own_pods_with_a_budget_honoured_then_completes() {
    let c = cluster(1, 2).await;
    let f = &c.fleet;
    let (w0, w1) = (&c.workers[0], &c.workers[1]);
    let pod = |name: &str, node: &str, extra: serde_json::Value| {
        let mut p = serde_json::json!({"namespace": "default", "name": name, "uid": format!("uid-{name}"), "node": node});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    let api = KubeApi::start(&serde_json::json!({
        "nodes": [w0.hostname, w1.hostname],
        "pods": [
            pod("kube-proxy-w0", &w0.hostname, serde_json::json!({"owner": "DaemonSet", "namespace": "kube-system"})),
            pod("haproxy-w0", &w0.hostname, serde_json::json!({"mirror": true, "namespace": "kube-system"})),
            pod("batch-done", &w0.hostname, serde_json::json!({"phase": "Succeeded"})),
            pod("web-1", &w0.hostname, serde_json::json!({"owner": "ReplicaSet", "labels": {"app": "web"}, "graceSeconds": 1.0})),
            // The other replica is not ready yet: the budget (minAvailable 1) blocks web-1's
            // eviction until it is, after two refusals.
            pod("web-2", &w1.hostname, serde_json::json!({"owner": "ReplicaSet", "labels": {"app": "web"}, "ready": false, "readyAfterBlocked": 2})),
            pod("cache-1", &w0.hostname, serde_json::json!({"owner": "ReplicaSet", "labels": {"app": "cache"}})),
        ],
        "pdbs": [{"name": "web", "selector": {"app": "web"}, "minAvailable": 1}],
    }));
    let recorder = Recorder::start_awsquery();
    let mut node = f.node(
        "w0",
        w0.clone(),
        &node_yaml(false, |cfg| {
            cfg.agent.lifecycle_heartbeat_seconds = 0;
        }),
    );
    node.extra_env = vec![("AWS_ENDPOINT_URL_AUTO_SCALING".into(), recorder.url())];
    // A joined worker: the kubelet's kubeconfig with its node identity.
    api.kubeconfig(
        &node.root,
        "/etc/kubernetes/kubelet.conf",
        &format!("system:node:{}", w0.hostname),
        &["system:nodes"],
    );
    let mut watch = f.spawn(&node, "watch");
    node.imds.set_lifecycle("Terminated");
    let status = wait_child(&mut watch, BOUND);
    let log = f.log(&node, "watch");
    assert!(status.is_some_and(|s| s.success()), "watch failed:\n{log}");

    let events = api.events();
    let requests: Vec<(String, String, i64)> = events
        .iter()
        .filter(|e| e["kind"] == "request")
        .map(|e| {
            (
                e["verb"].as_str().unwrap().to_string(),
                e["path"].as_str().unwrap().to_string(),
                e["code"].as_i64().unwrap(),
            )
        })
        .collect();
    // Nothing the Node authorizer forbids was even tried.
    assert!(requests.iter().all(|r| r.2 != 403), "{requests:#?}");
    assert_eq!(
        requests[0],
        (
            "PATCH".into(),
            format!("/api/v1/nodes/{}", w0.hostname),
            200
        ),
        "cordon first"
    );
    let evictions: Vec<(&str, i64)> = requests
        .iter()
        .filter(|r| r.1.ends_with("/eviction"))
        .map(|r| {
            (
                r.1.trim_start_matches("/api/v1/namespaces/default/pods/")
                    .trim_end_matches("/eviction"),
                r.2,
            )
        })
        .collect();
    // The budget refused web-1 twice (429) and was honoured; cache-1 was not held up by it;
    // mirror, DaemonSet and finished pods were never evicted.
    assert_eq!(
        evictions,
        [
            ("web-1", 429),
            ("cache-1", 201),
            ("web-1", 429),
            ("web-1", 201)
        ],
        "{requests:#?}"
    );
    // The lifecycle action was heartbeated while the drain waited, and completed only
    // after every evicted pod was gone.
    let reqs = recorder.requests.lock().unwrap().clone();
    let actions: Vec<&str> = reqs
        .iter()
        .map(|(_, b)| {
            b.split('&')
                .find_map(|kv| kv.strip_prefix("Action="))
                .unwrap()
        })
        .collect();
    assert_eq!(
        actions.last(),
        Some(&"CompleteLifecycleAction"),
        "{actions:?}"
    );
    assert!(
        actions[..actions.len() - 1]
            .iter()
            .all(|a| *a == "RecordLifecycleActionHeartbeat")
            && actions.len() >= 2,
        "heartbeats while waiting, then completion: {actions:?}"
    );
    let completed = reqs.last().unwrap().0;
    let deleted: Vec<f64> = events
        .iter()
        .filter(|e| e["kind"] == "pod-deleted")
        .map(|e| e["t"].as_f64().unwrap())
        .collect();
    assert_eq!(deleted.len(), 2, "web-1 and cache-1 are gone: {events:#?}");
    assert!(
        deleted.iter().all(|t| *t < completed),
        "completed after the pods were gone"
    );
    assert!(log.contains("drained"), "{log}");
}

#[test]
fn the_api_double_forbids_what_kubectl_drain_needs() {
    // `kubectl drain` reads each pod's DaemonSet and deletes through other verbs: with a
    // kubelet's identity the real API refuses that, and so must the double.
    let api = KubeApi::start(&serde_json::json!({
        "nodes": ["n1", "n2"],
        "pods": [{"namespace": "default", "name": "p2", "uid": "u2", "node": "n2"}],
    }));
    let root = tempfile::tempdir().unwrap();
    let conf = api.kubeconfig(
        root.path(),
        "/kubelet.conf",
        "system:node:n1",
        &["system:nodes"],
    );
    let kc = haimg::node::evict::Kubeconfig::load(&conf, root.path()).unwrap();
    let client = haimg::node::evict::Api::new(&kc).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        assert!(
            client.cordon("n2").await.is_err(),
            "another node's Node is forbidden"
        );
        client.cordon("n1").await.unwrap();
        assert!(
            client.pods_on("n2").await.is_err(),
            "another node's pods are forbidden"
        );
        assert!(client.pods_on("n1").await.unwrap().is_empty());
        assert!(
            matches!(
                client.evict("default", "p2").await.unwrap(),
                haimg::node::evict::Eviction::Refused(_)
            ),
            "a pod bound to another node cannot be evicted"
        );
    });
    let codes: Vec<i64> = api
        .events()
        .iter()
        .filter(|e| e["kind"] == "request")
        .map(|e| e["code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [403, 200, 403, 200, 403]);
}
