//! The CA certificate hash kubeadm's discovery pins: `sha256:` + hex of the SHA-256 of the
//! CA certificate's DER-encoded SubjectPublicKeyInfo (what
//! `openssl x509 -pubkey | openssl pkey -pubin -outform der | sha256sum` prints).

use base64::Engine;
use sha2::{Digest, Sha256};

/// `sha256:<hex>` for the first certificate in a PEM file.
pub fn ca_cert_hash(pem: &str) -> Result<String, String> {
    let der = pem_to_der(pem)?;
    let spki = subject_public_key_info(&der)?;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(spki))))
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    let begin = "-----BEGIN CERTIFICATE-----";
    let start = pem.find(begin).ok_or("no PEM certificate found")? + begin.len();
    let end = pem[start..]
        .find("-----END CERTIFICATE-----")
        .ok_or("unterminated PEM certificate")?
        + start;
    let b64: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("bad PEM base64: {e}"))
}

/// One DER element: (tag, header length, total length).
fn element(d: &[u8]) -> Result<(u8, usize, usize), String> {
    let bad = || "malformed DER certificate".to_string();
    let tag = *d.first().ok_or_else(bad)?;
    let first = *d.get(1).ok_or_else(bad)?;
    let (len, hdr) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return Err(bad());
        }
        let bytes = d.get(2..2 + n).ok_or_else(bad)?;
        (
            bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize),
            2 + n,
        )
    };
    if d.len() < hdr + len {
        return Err(bad());
    }
    Ok((tag, hdr, hdr + len))
}

/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version?, serial, signature,
/// issuer, validity, subject, subjectPublicKeyInfo, … }, … }
fn subject_public_key_info(cert: &[u8]) -> Result<&[u8], String> {
    let (_, hdr, _) = element(cert)?;
    let tbs = &cert[hdr..];
    let (_, tbs_hdr, tbs_len) = element(tbs)?;
    let mut rest = &tbs[tbs_hdr..tbs_len];
    // Skip the optional explicit [0] version.
    if rest.first() == Some(&0xa0) {
        let (_, _, n) = element(rest)?;
        rest = &rest[n..];
    }
    // serial, signature, issuer, validity, subject
    for _ in 0..5 {
        let (_, _, n) = element(rest)?;
        rest = &rest[n..];
    }
    let (tag, _, n) = element(rest)?;
    if tag != 0x30 {
        return Err("malformed certificate: no SubjectPublicKeyInfo".into());
    }
    Ok(&rest[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compares with openssl's own computation on a fresh CA certificate.
    #[test]
    fn matches_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let (key, crt) = (dir.path().join("ca.key"), dir.path().join("ca.crt"));
        let ok = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=kubernetes",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .output()
            .expect("openssl is installed");
        assert!(ok.status.success());
        let script = format!(
            "openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform der | sha256sum",
            crt.display()
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        let want = String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        let got = ca_cert_hash(&std::fs::read_to_string(&crt).unwrap()).unwrap();
        assert_eq!(got, format!("sha256:{want}"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(ca_cert_hash("nothing").is_err());
        assert!(
            ca_cert_hash("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----").is_err()
        );
        assert!(
            ca_cert_hash("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----").is_err()
        );
    }
}
