//! A real etcd cluster (Debian's etcd-server) on loopback ports, for member clean-up tests.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::fleet::{free_port, wait_for_port};
use super::require_tool;

pub struct EtcdCluster {
    pub names: Vec<String>,
    pub client_ports: Vec<u16>,
    children: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts one member per name and waits until the cluster answers member list.
    pub fn start(names: &[String]) -> EtcdCluster {
        let bin = require_tool("etcd");
        let dir = tempfile::tempdir().unwrap();
        let peers: Vec<u16> = names.iter().map(|_| free_port()).collect();
        let clients: Vec<u16> = names.iter().map(|_| free_port()).collect();
        let initial: Vec<String> = names
            .iter()
            .zip(&peers)
            .map(|(n, p)| format!("{n}=http://127.0.0.1:{p}"))
            .collect();
        let children = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let log = std::fs::File::create(dir.path().join(format!("{n}.log"))).unwrap();
                Some(
                    Command::new(&bin)
                        .args(["--name", n])
                        .arg("--data-dir")
                        .arg(dir.path().join(n))
                        .args([
                            "--listen-client-urls",
                            &format!("http://127.0.0.1:{}", clients[i]),
                        ])
                        .args([
                            "--advertise-client-urls",
                            &format!("http://127.0.0.1:{}", clients[i]),
                        ])
                        .args([
                            "--listen-peer-urls",
                            &format!("http://127.0.0.1:{}", peers[i]),
                        ])
                        .args([
                            "--initial-advertise-peer-urls",
                            &format!("http://127.0.0.1:{}", peers[i]),
                        ])
                        .args(["--initial-cluster", &initial.join(",")])
                        .args([
                            "--initial-cluster-state",
                            "new",
                            "--initial-cluster-token",
                            "haimg-test",
                        ])
                        .stdout(Stdio::null())
                        .stderr(log)
                        .spawn()
                        .expect("etcd starts"),
                )
            })
            .collect();
        for p in &clients {
            wait_for_port(*p, "etcd");
        }
        let c = EtcdCluster {
            names: names.to_vec(),
            client_ports: clients,
            children,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.member_names(0).len() != names.len() {
            assert!(Instant::now() < deadline, "etcd cluster did not form");
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.client_ports[i])
    }

    /// Member names as member `i` reports them (through the JSON gateway, with curl-free std I/O).
    pub fn member_names(&self, i: usize) -> Vec<String> {
        let body = "{}";
        let req = format!(
            "POST /v3/cluster/member/list HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.client_ports[i])) else {
            return vec![];
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(req.as_bytes()).is_err() {
            return vec![];
        }
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let Some(json) = resp.split("\r\n\r\n").nth(1) else {
            return vec![];
        };
        let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_default();
        let mut names: Vec<String> = v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| m["name"].as_str().unwrap_or("").to_string())
            .collect();
        names.sort();
        names
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}
