//! Join material and cluster state, as stored in SSM Parameter Store (DESIGN §6).
//!
//! One JSON document per parameter, so a reader always sees a token, CA hashes and
//! certificate key from the same rotation.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::secret::Secret;

/// `P/join/control-plane` and `P/join/worker` (the latter without `certificateKey`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinMaterial {
    /// `host:port` of the control-plane endpoint.
    pub endpoint: String,
    pub token: Secret,
    pub ca_cert_hashes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_key: Option<Secret>,
    pub kubernetes_version: String,
    #[serde(with = "rfc3339")]
    pub issued_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub expires_at: SystemTime,
    /// Rotation counter: 1 at init, +1 per rotation.
    #[serde(default)]
    pub generation: u64,
}

impl JoinMaterial {
    /// Usable for a join that needs `margin` before it expires.
    pub fn usable(&self, now: SystemTime, margin: Duration) -> bool {
        self.expires_at
            .duration_since(now)
            .is_ok_and(|left| left >= margin)
    }
    /// Past half of its lifetime: time to rotate.
    pub fn past_half_life(&self, now: SystemTime) -> bool {
        let life = self
            .expires_at
            .duration_since(self.issued_at)
            .unwrap_or_default();
        now.duration_since(self.issued_at)
            .is_ok_and(|age| age >= life / 2)
    }
    /// The worker's copy: everything but the certificate key.
    pub fn for_workers(&self, token_expires_at: SystemTime) -> JoinMaterial {
        JoinMaterial {
            certificate_key: None,
            expires_at: token_expires_at,
            ..self.clone()
        }
    }
}

/// `P/join/times` (a String, no secret in it): when the published material was issued and
/// when each copy expires, written with every publication. `haimg status` reads it, so an
/// operator needs no decrypt right on the certificate key to see how old the material is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedTimes {
    pub generation: u64,
    #[serde(with = "rfc3339")]
    pub issued_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub control_plane_expires_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub worker_expires_at: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Initializing,
    Ready,
}

/// `P/state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub phase: Phase,
    pub initialized_by: String,
    #[serde(with = "rfc3339")]
    pub initialized_at: SystemTime,
    /// The last membership check by `haimg node reconcile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdHealth>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdHealth {
    pub members: usize,
    /// Names of members whose instances are gone and that are still in etcd.
    pub dead: Vec<String>,
    #[serde(with = "rfc3339")]
    pub checked_at: SystemTime,
    pub checked_by: String,
}

/// `P/init/lock-<epoch>` and rotation locks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lock {
    pub instance_id: String,
    #[serde(with = "rfc3339")]
    pub acquired_at: SystemTime,
    /// The holder's last renewal: it renews while it works, so a slow but live holder is
    /// never taken over. Absent on a lock that was never renewed.
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub renewed_at: Option<SystemTime>,
    /// Set by a holder that gave up: the next node takes over at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
}

impl Lock {
    /// Whether the lease is still held at `now` (by the reader's clock).
    pub fn live(&self, now: SystemTime, lease: Duration) -> bool {
        if self.released {
            return false;
        }
        let last = self.renewed_at.unwrap_or(self.acquired_at);
        // A renewal "in the future" (the holder's clock is ahead) counts as live.
        now.duration_since(last).map_or(true, |age| age < lease)
    }
}

/// `P/members/<instance-id>`: written by a master just before its `kubeadm init` or
/// `kubeadm join --control-plane`. Reconcile tells a live member from a dead predecessor
/// at the same address (EC2 recycles private addresses and their DNS names) by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRecord {
    pub instance_id: String,
    pub private_ip: String,
    #[serde(with = "rfc3339")]
    pub started_at: SystemTime,
}

pub mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material(issued: u64, expires: u64) -> JoinMaterial {
        JoinMaterial {
            endpoint: "lb:6443".into(),
            token: Secret::new("abcdef.0123456789abcdef"),
            ca_cert_hashes: vec!["sha256:00".into()],
            certificate_key: Some(Secret::new("k")),
            kubernetes_version: "1.30.4".into(),
            issued_at: SystemTime::UNIX_EPOCH + Duration::from_secs(issued),
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(expires),
            generation: 1,
        }
    }

    #[test]
    fn usability_and_half_life() {
        let m = material(1000, 1000 + 7200);
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert!(m.usable(at(1000), Duration::from_secs(600)));
        assert!(!m.usable(at(1000 + 7200 - 599), Duration::from_secs(600)));
        assert!(!m.usable(at(9_999_999), Duration::ZERO));
        assert!(!m.past_half_life(at(1000 + 3599)));
        assert!(m.past_half_life(at(1000 + 3600)));
    }

    #[test]
    fn worker_copy_has_no_certificate_key_on_the_wire() {
        let m = material(0, 7200);
        let w = m.for_workers(SystemTime::UNIX_EPOCH + Duration::from_secs(14400));
        let json = serde_json::to_string(&w).unwrap();
        assert!(!json.contains("certificateKey"), "{json}");
        let back: JoinMaterial = serde_json::from_str(&json).unwrap();
        assert_eq!(back, w);
        assert!(serde_json::to_string(&m)
            .unwrap()
            .contains("\"issuedAt\":\"1970-01-01T00:00:00.000Z\""));
    }
}
