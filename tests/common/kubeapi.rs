//! The Kubernetes API double (`tests/doubles/kubeapi.py`) over TLS with client
//! certificates made here, and the kubeconfigs a node has for it.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

pub struct KubeApi {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl KubeApi {
    /// Starts the double with `state` (see the double's docs) and waits until it serves.
    pub fn start(state: &serde_json::Value) -> KubeApi {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "kubernetes");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let srv_key = KeyPair::generate().unwrap();
        let srv = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&srv_key, &ca, &ca_key)
            .unwrap();
        let d = dir.path();
        std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(d.join("server.pem"), srv.pem()).unwrap();
        std::fs::write(d.join("server.key"), srv_key.serialize_pem()).unwrap();
        std::fs::write(d.join("state.json"), state.to_string()).unwrap();
        let port = super::fleet::free_port();
        let mut child = Command::new(super::venv().join("bin/python"))
            .arg(super::repo().join("tests/doubles/kubeapi.py"))
            .args(["--port", &port.to_string()])
            .arg("--cert")
            .arg(d.join("server.pem"))
            .arg("--key")
            .arg(d.join("server.key"))
            .arg("--ca")
            .arg(d.join("ca.pem"))
            .arg("--state")
            .arg(d.join("state.json"))
            .arg("--events")
            .arg(d.join("events.jsonl"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Ready when it says so (an event, not a sleep).
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the API double did not start");
        KubeApi {
            dir,
            port,
            child,
            ca,
            ca_key,
        }
    }

    /// Writes a kubeconfig at `root/<path>` for user `cn` in `groups`, its certificate
    /// and key in one file under the root, as the kubelet keeps its rotated credentials.
    pub fn kubeconfig(&self, root: &Path, path: &str, cn: &str, groups: &[&str]) -> PathBuf {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        for g in groups {
            p.distinguished_name
                .push(DnType::OrganizationName, g.to_string());
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let creds = format!("/var/lib/kubelet/pki/{}.pem", cn.replace(':', "-"));
        let creds_path = root.join(creds.trim_start_matches('/'));
        std::fs::create_dir_all(creds_path.parent().unwrap()).unwrap();
        std::fs::write(
            &creds_path,
            format!("{}{}", cert.pem(), key.serialize_pem()),
        )
        .unwrap();
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca.pem());
        let conf = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
        std::fs::write(
            &conf,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: default-cluster\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca}\n\
                 contexts:\n- name: default-context\n  context:\n    cluster: default-cluster\n    namespace: default\n    user: default-auth\n\
                 current-context: default-context\nusers:\n- name: default-auth\n  user:\n    client-certificate: {creds}\n    client-key: {creds}\n",
                port = self.port
            ),
        )
        .unwrap();
        conf
    }

    /// Everything the double recorded, in order.
    pub fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
