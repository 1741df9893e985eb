//! Join secrets: bootstrap tokens and certificate keys.
//!
//! A [`Secret`] never prints itself: `Debug` and `Display` show `<redacted>`, so a secret
//! cannot reach a log line or an error message by accident. The only way to its text is
//! [`Secret::expose`], used where it is written into SSM or a 0600 config file.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Kernel randomness (getrandom(2)); failing to get it is fatal for a node.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the kernel's random source is available");
    buf
}

/// A kubeadm bootstrap token: `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn bootstrap_token() -> Secret {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    // Rejection sampling keeps the distribution uniform over the 36 characters.
    let mut out = String::with_capacity(23);
    while out.len() < 23 {
        for b in random_bytes::<32>() {
            if out.len() == 6 {
                out.push('.');
            }
            if out.len() == 23 {
                break;
            }
            if (b as usize) < 252 {
                out.push(ALPHABET[b as usize % 36] as char);
            }
        }
    }
    Secret(out)
}

/// A kubeadm certificate key: 32 random bytes, hex (AES-256 key for the kubeadm-certs Secret).
pub fn certificate_key() -> Secret {
    Secret(hex::encode(random_bytes::<32>()))
}

/// Whether `s` has the shape of a bootstrap token.
pub fn is_bootstrap_token(s: &str) -> bool {
    let ok = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    s.split_once('.')
        .is_some_and(|(a, b)| ok(a, 6) && ok(b, 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_keys_have_kubeadm_shapes() {
        for _ in 0..200 {
            let t = bootstrap_token();
            assert!(is_bootstrap_token(t.expose()), "{}", t.expose());
            let k = certificate_key();
            assert_eq!(k.expose().len(), 64);
            assert!(k.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        }
        assert_ne!(bootstrap_token(), bootstrap_token());
    }

    #[test]
    fn secrets_never_print() {
        let t = Secret::new("abcdef.0123456789abcdef");
        assert_eq!(format!("{t} {t:?}"), "<redacted> <redacted>");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            token: Secret,
        }
        assert!(!format!("{:?}", Holder { token: t }).contains("abcdef"));
    }
}
