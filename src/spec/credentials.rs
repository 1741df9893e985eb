//! Static join credentials (`spec.credentials.source: static`): a one-shot, offline
//! alternative to Parameter Store for VIP and external-endpoint clusters.
//!
//! The bootstrap token, the certificate key and the cluster CA are generated once into a
//! 0600 file beside the spec, so that every later `render` (of any role or node) writes the
//! same material. The first master's user-data carries the CA certificate and key (kubeadm
//! uses a CA it finds in /etc/kubernetes/pki); every node's carries the token and the CA's
//! public-key hash; masters' also the certificate key.
//!
//! # Caveats (why SSM is the default)
//! - Anyone who can read a node's user-data can join the cluster while the token lives, and
//!   the first master's user-data holds the CA key for as long as the instance exists.
//! - kubeadm deletes the uploaded certificates 2 h after `init`: a master that has not
//!   joined by then never can with this material. Workers have the token's 24 h.
//! - Nothing rotates: nodes added later need new material (`kubeadm token create`, or a
//!   switch to `source: ssm`).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::contract::secret::Secret;
use crate::contract::{pki, secret};
use crate::error::{Diagnostic, Diagnostics, Error, Result};

pub const KIND: &str = "StaticCredentials";

/// The material, as kept in the credentials file.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticMaterial {
    pub api_version: String,
    pub kind: String,
    /// RFC 3339; for the operator's information (the windows start at init, not here).
    pub created_at: String,
    pub token: Secret,
    pub certificate_key: Secret,
    /// The cluster CA certificate (PEM).
    pub ca_cert: String,
    /// The cluster CA private key (PKCS#8 PEM).
    pub ca_key: Secret,
}

impl std::fmt::Debug for StaticMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticMaterial")
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl StaticMaterial {
    /// `sha256:<hex>` of the CA's public key, as kubeadm's `caCertHashes` takes it.
    pub fn ca_cert_hash(&self) -> String {
        pki::ca_cert_hash(&self.ca_cert).expect("checked when loaded or generated")
    }
}

/// Fresh material: a bootstrap token, a certificate key and a self-signed ECDSA P-256
/// cluster CA (`CN=kubernetes`, 10 years, as kubeadm makes its own).
pub fn generate(now: SystemTime) -> Result<StaticMaterial> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let fail = |e: rcgen::Error| Error::Runtime(format!("generating the cluster CA: {e}"));
    let key = KeyPair::generate().map_err(fail)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kubernetes");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let created_at = humantime::format_rfc3339_seconds(now).to_string();
    let (y, m, d) = ymd(&created_at);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    params.not_after = rcgen::date_time_ymd(y + 10, m, d.min(28));
    let cert = params.self_signed(&key).map_err(fail)?;
    Ok(StaticMaterial {
        api_version: crate::contract::API_VERSION.into(),
        kind: KIND.into(),
        created_at,
        token: secret::bootstrap_token(),
        certificate_key: secret::certificate_key(),
        ca_cert: cert.pem(),
        ca_key: Secret::new(key.serialize_pem()),
    })
}

fn ymd(rfc3339: &str) -> (i32, u8, u8) {
    let num = |r: std::ops::Range<usize>| rfc3339[r].parse::<i64>().expect("RFC 3339 date");
    (num(0..4) as i32, num(5..7) as u8, num(8..10) as u8)
}

/// Parses and checks a credentials file; errors name the file and field, never a value.
pub fn parse(text: &str, file: &str) -> Result<StaticMaterial> {
    let invalid = |pos, path: &str, message: String| {
        Error::Invalid(Diagnostics(vec![Diagnostic {
            file: file.into(),
            pos,
            path: path.into(),
            message,
        }]))
    };
    let doc = crate::yaml::parse(text)
        .map_err(|e| invalid(e.pos, "", format!("invalid YAML: {}", e.message)))?;
    let m: StaticMaterial = crate::yaml::from_document(&doc).map_err(|(pointer, msg)| {
        invalid(doc.value_pos(&pointer), &crate::yaml::dotted(&pointer), msg)
    })?;
    if m.api_version != crate::contract::API_VERSION || m.kind != KIND {
        return Err(invalid(
            doc.value_pos("/kind"),
            "kind",
            format!(
                "expected apiVersion {} and kind {KIND}",
                crate::contract::API_VERSION
            ),
        ));
    }
    if !secret::is_bootstrap_token(m.token.expose()) {
        return Err(invalid(
            doc.value_pos("/token"),
            "token",
            "is not a bootstrap token ([a-z0-9]{6}.[a-z0-9]{16})".into(),
        ));
    }
    let key = m.certificate_key.expose();
    if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            doc.value_pos("/certificateKey"),
            "certificateKey",
            "is not a certificate key (64 hex digits)".into(),
        ));
    }
    if let Err(e) = pki::ca_cert_hash(&m.ca_cert) {
        return Err(invalid(
            doc.value_pos("/caCert"),
            "caCert",
            format!("is not a PEM certificate: {e}"),
        ));
    }
    if !m.ca_key.expose().contains("PRIVATE KEY-----") {
        return Err(invalid(
            doc.value_pos("/caKey"),
            "caKey",
            "is not a PEM private key".into(),
        ));
    }
    Ok(m)
}

/// The credentials file `file` (relative to the spec's directory): loaded when it exists,
/// else generated and written 0600 (create-only, so two concurrent renders cannot end up
/// with different material). `created` tells the caller to warn.
pub fn load_or_create(file: &str, spec_dir: &Path) -> Result<(StaticMaterial, PathBuf, bool)> {
    let path = spec_dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((parse(&text, &path.display().to_string())?, path, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let m = generate(SystemTime::now())?;
            let mut text = String::from(
                "# haimg static join credentials: SECRET. Anyone holding this file can join\n\
                 # and administer the cluster (it holds the cluster CA key). Keep it 0600 and\n\
                 # out of version control; `haimg render` writes it into node user-data.\n",
            );
            text.push_str(&crate::yaml::to_string(&m));
            crate::files::create_secret(&path, text.as_bytes())?;
            Ok((m, path, true))
        }
        Err(e) => Err(Error::io(&path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_material_round_trips_and_pins_its_ca() {
        let m = generate(SystemTime::now()).unwrap();
        let again = parse(&crate::yaml::to_string(&m), "c.yaml").unwrap();
        assert!(again == m);
        assert!(m.ca_cert_hash().starts_with("sha256:"));
        assert_eq!(m.ca_cert_hash().len(), 7 + 64);
        assert!(!format!("{m:?}").contains(m.token.expose()));
    }

    #[test]
    fn errors_name_the_field_not_the_value() {
        let m = generate(SystemTime::now()).unwrap();
        let text = crate::yaml::to_string(&m).replace(m.token.expose(), "abc.def");
        let e = parse(&text, "c.yaml").unwrap_err().to_string();
        assert!(e.contains("c.yaml") && e.contains("token"), "{e}");
        assert!(!e.contains("abc.def"), "{e}");
    }
}
