//! Per-group `#cloud-config` user-data, and its encoding for EC2.

use std::io::Write;

use base64::Engine;
use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use serde::Serialize;

use super::templates::Templates;
use super::{node_config, Group};
use crate::contract::node_config::StaticJoin;
use crate::error::{Error, Result};
use crate::spec::{ClusterSpec, Credentials};

/// EC2 accepts at most 16 KB of user-data, measured before base64.
pub const USER_DATA_LIMIT: usize = 16 * 1024;

/// Rendered user-data: the readable text, and what EC2 gets.
#[derive(Debug, Clone)]
pub struct UserData {
    /// The `#cloud-config` document.
    pub text: String,
    /// What goes into the launch template: the text, or its gzip when the text is over
    /// the limit (cloud-init detects gzip by its magic bytes).
    pub payload: Vec<u8>,
}

impl UserData {
    pub fn is_compressed(&self) -> bool {
        self.payload.starts_with(&[0x1f, 0x8b])
    }
    /// The launch template's `UserData` field.
    pub fn base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.payload)
    }
}

#[derive(Serialize)]
struct Ctx {
    description: String,
    files: Vec<super::vip::NodeFile>,
    /// Join material comes from SSM (the default) rather than the user-data: the masters
    /// then run the SSM-backed refresh and reconcile timers.
    ssm_credentials: bool,
    role_master: bool,
    ca_key: bool,
}

pub fn render(spec: &ClusterSpec, group: Group, t: &Templates) -> Result<UserData> {
    let node = node_config(spec, group);
    let mut files = vec![super::vip::NodeFile {
        path: crate::contract::node_config::NODE_CONFIG_PATH.into(),
        // With static credentials the node config holds the token: root only.
        permissions: if node.credentials.is_some() {
            "0600"
        } else {
            "0644"
        },
        content: crate::yaml::to_string(&node),
        vip_name: None,
    }];
    if let (
        Some(StaticJoin { init: true, .. }),
        Credentials::Static {
            material: Some(m), ..
        },
    ) = (&node.credentials, &spec.credentials)
    {
        // kubeadm init uses a CA it finds in place: the one whose hash every node pins.
        files.push(super::vip::NodeFile {
            path: "/etc/kubernetes/pki/ca.crt".into(),
            permissions: "0644",
            content: m.ca_cert.clone(),
            vip_name: None,
        });
        files.push(super::vip::NodeFile {
            path: "/etc/kubernetes/pki/ca.key".into(),
            permissions: "0600",
            content: m.ca_key.expose().to_string(),
            vip_name: None,
        });
    }
    files.extend(super::vip::files(spec, group, t)?);
    let ca_key = files.iter().any(|f| f.path.ends_with("/ca.key"));
    let ctx = Ctx {
        ssm_credentials: node.credentials.is_none(),
        role_master: group.role() == crate::contract::node_config::Role::Master,
        ca_key,
        description: format!(
            "haimg {} user-data: cluster {}, {}",
            env!("CARGO_PKG_VERSION"),
            spec.name,
            match group {
                Group::Master => "control plane".to_string(),
                Group::FixedMaster { node, .. } => format!("control-plane node {}", node.name),
                Group::Worker(p) => format!("worker pool {}", p.name),
            }
        ),
        files,
    };
    let template = match group {
        Group::Master | Group::FixedMaster { .. } => "cloud-init/master.yaml.tera",
        Group::Worker(_) => "cloud-init/worker.yaml.tera",
    };
    let text = t.render(template, &ctx)?;
    let payload = encode(&text, &group.stem())?;
    Ok(UserData { text, payload })
}

/// The text as is when it fits, else gzipped; an error naming the sizes when even that
/// does not fit.
pub fn encode(text: &str, what: &str) -> Result<Vec<u8>> {
    if text.len() <= USER_DATA_LIMIT {
        return Ok(text.as_bytes().to_vec());
    }
    let gz = gzip(text.as_bytes());
    if gz.len() > USER_DATA_LIMIT {
        return Err(Error::Limit(format!(
            "user-data for {what} is {} bytes, {} gzipped: EC2 accepts at most {USER_DATA_LIMIT} bytes",
            text.len(),
            gz.len()
        )));
    }
    Ok(gz)
}

/// Deterministic gzip: no file name, mtime 0, so identical input renders identical files.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc: GzEncoder<Vec<u8>> = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::best());
    enc.write_all(data).expect("writing to memory");
    enc.finish().expect("writing to memory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    #[test]
    fn small_text_is_sent_as_is() {
        assert_eq!(encode("#cloud-config\n", "x").unwrap(), b"#cloud-config\n");
    }

    #[test]
    fn large_text_is_gzipped_and_round_trips() {
        let text = format!("#cloud-config\n# {}\n", "padding ".repeat(4000));
        assert!(text.len() > USER_DATA_LIMIT);
        let out = encode(&text, "x").unwrap();
        assert!(out.len() <= USER_DATA_LIMIT && out.starts_with(&[0x1f, 0x8b]));
        let mut back = String::new();
        GzDecoder::new(&out[..]).read_to_string(&mut back).unwrap();
        assert_eq!(back, text);
        assert_eq!(out, encode(&text, "x").unwrap(), "gzip is deterministic");
    }

    #[test]
    fn incompressible_text_over_the_limit_fails_clearly() {
        // Pseudo-random printable bytes do not compress below the limit.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let text: String = (0..40_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (b'!' + (x % 90) as u8) as char
            })
            .collect();
        let err = encode(&text, "worker-big").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string().contains("worker-big") && err.to_string().contains("16384"),
            "{err}"
        );
    }
}
