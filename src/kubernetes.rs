//! What haimg knows about Kubernetes releases: which ones it supports, which kubeadm
//! config API each one speaks, and known-bad patch releases.

use crate::contract::types::KubernetesVersion;

/// Oldest and newest supported minor releases (of major 1).
///
/// 1.29 is the oldest minor still served by the community apt repository layout haimg
/// bakes from (pkgs.k8s.io/core:/stable:/v1.MINOR); 1.36 is the newest release this version
/// of haimg was checked against (kubeadm config API v1beta4).
pub const MIN_MINOR: u32 = 29;
pub const MAX_MINOR: u32 = 36;

/// The kubeadm configuration API for a version: v1beta3 up to 1.30, v1beta4 from 1.31
/// (v1beta4 turned `extraArgs` into a list of `{name, value}` and moved timeouts under
/// `timeouts:`).
pub fn kubeadm_api_version(v: &KubernetesVersion) -> &'static str {
    if v.minor >= 31 {
        "kubeadm.k8s.io/v1beta4"
    } else {
        "kubeadm.k8s.io/v1beta3"
    }
}

/// Why a version cannot be used, or `Ok`.
pub fn check_supported(v: &KubernetesVersion) -> Result<(), String> {
    if v.major != 1 || v.minor < MIN_MINOR || v.minor > MAX_MINOR {
        return Err(format!(
            "Kubernetes {v} is not supported by this haimg: use a 1.{MIN_MINOR}.x to 1.{MAX_MINOR}.x release"
        ));
    }
    Ok(())
}

/// Known problems with a supported version that do not stop haimg but deserve a warning.
pub fn known_issues(v: &KubernetesVersion) -> Option<String> {
    // kubeadm#3294: from 1.34.2, `kubeadm init` talks to the control-plane endpoint (the
    // load balancer) during upload-config, before the load balancer has a healthy target,
    // and fails intermittently. The fix was cherry-picked to release-1.34 in May 2026.
    if v.major == 1 && v.minor == 34 && v.patch >= 2 {
        return Some(format!(
            "Kubernetes {v}: kubeadm 1.34.2 and later 1.34 patches may fail `kubeadm init` at \
             upload-config behind a load balancer (kubeadm#3294); prefer 1.33.x or a 1.34 \
             patch that carries the fix"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> KubernetesVersion {
        KubernetesVersion::try_from(s).unwrap()
    }

    #[test]
    fn api_version_by_minor() {
        assert_eq!(kubeadm_api_version(&v("1.30.4")), "kubeadm.k8s.io/v1beta3");
        assert_eq!(kubeadm_api_version(&v("1.31.0")), "kubeadm.k8s.io/v1beta4");
    }

    #[test]
    fn support_window() {
        assert!(check_supported(&v("1.30.4")).is_ok());
        assert!(check_supported(&v("1.28.9")).is_err());
        assert!(check_supported(&v("1.37.0")).is_err());
        assert!(check_supported(&v("2.0.0")).is_err());
        assert!(known_issues(&v("1.34.2")).unwrap().contains("kubeadm#3294"));
        assert!(known_issues(&v("1.34.1")).is_none());
    }
}
