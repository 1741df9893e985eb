//! Every lab-only change inside a node, in one place (pure). They go into the node's
//! copy-on-write layer, never into the image or the user-data, and each says why the lab
//! needs it: these nodes are system containers on a kernel they share with this machine.

use crate::error::{Error, Result};

/// A file the lab writes into a node's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropIn {
    pub path: &'static str,
    pub contents: String,
}

pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// The marker the agent's preflight accepts a cgroup v1 hierarchy by (bound read-only at
/// `/run/haimg-lab`, outside the root).
pub const MARKER_NAME: &str = "system-container";
pub const MARKER_TEXT: &str = "haimg lab: a system container on a shared kernel that mounts cgroup v1; the lab's boot tier proves cgroup v2\n";

const CGROUPS_UNIT: &str = "/etc/systemd/system/haimg-lab-cgroups.service";
const CGROUPS_WANT: &str = "/etc/systemd/system/sysinit.target.wants/haimg-lab-cgroups.service";

/// The drop-ins for a node whose image has `containerd_config` at [`CONTAINERD_CONFIG`].
pub fn drop_ins(containerd_config: &str) -> Result<Vec<DropIn>> {
    // This machine's root lacks CAP_SYS_RESOURCE: runc cannot raise a pod sandbox's
    // oom_score_adj, and every sandbox fails ("can't get final child's PID from pipe")
    // unless containerd keeps the scores at or above its own.
    let from = "restrict_oom_score_adj = false";
    if containerd_config.matches(from).count() != 1 {
        return Err(Error::Runtime(format!(
            "lab: the image's {CONTAINERD_CONFIG} has no single `{from}` line to turn on"
        )));
    }
    let containerd = containerd_config.replace(from, "restrict_oom_score_adj = true");
    // systemd-nspawn mounts the cgroup v1 controllers read-only; the kubelet and runc
    // create cgroups in them. Remounted writable before anything else starts.
    let unit = "\
[Unit]
Description=haimg lab: cgroup v1 controllers writable (systemd-nspawn mounts them read-only)
DefaultDependencies=no
Before=sysinit.target containerd.service kubelet.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for c in /sys/fs/cgroup/*/; do case \"$c\" in */unified/|*/systemd/) continue ;; esac; mount -o remount,bind,rw \"$c\"; done'
"
    .to_string();
    Ok(vec![
        DropIn {
            path: CONTAINERD_CONFIG,
            contents: containerd,
        },
        DropIn {
            path: CGROUPS_UNIT,
            contents: unit,
        },
        DropIn {
            path: CGROUPS_WANT,
            contents: String::new(),
        },
    ])
}

/// Whether a drop-in is the symlink that enables a unit (written as a link, not a file).
pub fn is_link(d: &DropIn) -> bool {
    d.path == CGROUPS_WANT
}

pub fn link_target() -> &'static str {
    "../haimg-lab-cgroups.service"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_keeps_its_config_but_for_the_oom_score_restriction() {
        let conf = "version = 2\n[plugins]\n  restrict_oom_score_adj = false\n  x = 1\n";
        let d = drop_ins(conf).unwrap();
        assert_eq!(d[0].contents, conf.replace("= false", "= true"));
        assert!(d[1].contents.contains("mount -o remount,bind,rw"));
        assert!(is_link(&d[2]));
        let e = drop_ins("version = 2\n").unwrap_err().to_string();
        assert!(e.contains("restrict_oom_score_adj"), "{e}");
    }
}
