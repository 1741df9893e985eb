//! `haimg node preflight`: what the node must be before kubeadm runs, checked on the node
//! itself (the bake sets it all up; this proves the booted node kept it).
//!
//! Every check reads files under the agent's root (`HAIMG_ROOT`), `/proc` and `/sys`
//! included, so it runs on a laptop against a prepared tree. `bootstrap` runs it first
//! and stops with every problem named, instead of letting kubeadm fail later with a
//! less precise message (or, for cgroups, not at all).
//!
//! The CRI socket is waited for (bounded): cloud-init's final stage is not ordered after
//! containerd, so on a first boot the agent can start before containerd listens.

use std::path::Path;
use std::time::Duration;

use super::agent::Seams;
use crate::error::{Error, Result};

/// containerd's CRI socket, as the kubeadm configs name it.
pub const CRI_SOCKET_PATH: &str = "/run/containerd/containerd.sock";

/// Present only in `haimg lab` system containers (bound read-only by the lab, never in an
/// image or user-data): they share a kernel that mounts cgroup v1, so the cgroup v2 check
/// becomes a warning there. The lab's boot tier proves cgroup v2 on the image's own kernel.
pub const LAB_SYSTEM_CONTAINER_MARKER: &str = "/run/haimg-lab/system-container";

/// One failed expectation, said so that an operator knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub check: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.check, self.detail)
    }
}

/// The filesystem type mounted at `mount_point`, from `/proc/self/mountinfo` (the last
/// mount wins, as the kernel resolves a path to the top of its mount stack).
pub fn fs_type<'a>(mountinfo: &'a str, mount_point: &str) -> Option<&'a str> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            (point == mount_point).then_some(fstype)
        })
        .next_back()
}

/// Active swap areas in `/proc/swaps` (its first line is a header).
pub fn active_swaps(swaps: &str) -> Vec<&str> {
    swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

/// The checks that read state (no waiting): cgroup v2, swap, the kernel settings kubeadm
/// and the CNI need.
pub fn check_host(seams: &Seams) -> Vec<Problem> {
    let read = |p: &str| std::fs::read_to_string(seams.path(p));
    let mut problems = vec![];
    match read("/proc/self/mountinfo") {
        Ok(m) => match fs_type(&m, "/sys/fs/cgroup") {
            Some("cgroup2") => {}
            Some(other) if seams.path(LAB_SYSTEM_CONTAINER_MARKER).is_file() => {
                tracing::warn!(
                    "/sys/fs/cgroup is {other}, not cgroup2: accepted in a haimg lab system container only ({LAB_SYSTEM_CONTAINER_MARKER})"
                );
            }
            Some(other) => problems.push(Problem {
                check: "cgroup v2",
                detail: format!(
                    "/sys/fs/cgroup is {other}, not cgroup2: the kernel booted the legacy hierarchy; \
                     the image must boot with systemd.unified_cgroup_hierarchy=1 (Ubuntu 20.04 needs it on the kernel command line)"
                ),
            }),
            None => problems.push(Problem {
                check: "cgroup v2",
                detail: "nothing is mounted at /sys/fs/cgroup".into(),
            }),
        },
        Err(e) => problems.push(Problem {
            check: "cgroup v2",
            detail: format!("cannot read /proc/self/mountinfo: {e}"),
        }),
    }
    match read("/proc/swaps") {
        Ok(s) => {
            let on = active_swaps(&s);
            if !on.is_empty() {
                problems.push(Problem {
                    check: "swap",
                    detail: format!(
                        "swap is on ({}): the kubelet refuses to start with swap",
                        on.join(", ")
                    ),
                });
            }
        }
        Err(e) => problems.push(Problem {
            check: "swap",
            detail: format!("cannot read /proc/swaps: {e}"),
        }),
    }
    for (path, why) in [
        (
            "/proc/sys/net/ipv4/ip_forward",
            "pods cannot reach other nodes",
        ),
        (
            "/proc/sys/net/bridge/bridge-nf-call-iptables",
            "service traffic on the bridge bypasses kube-proxy (is br_netfilter loaded?)",
        ),
    ] {
        let check = "kernel settings";
        match read(path) {
            Ok(v) if v.trim() == "1" => {}
            Ok(v) => problems.push(Problem {
                check,
                detail: format!("{path} is {}, not 1: {why}", v.trim()),
            }),
            Err(e) => problems.push(Problem {
                check,
                detail: format!("cannot read {path}: {e}: {why}"),
            }),
        }
    }
    problems
}

/// Whether something accepts connections on the unix socket at `path`.
fn listening(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Waits (bounded) until containerd accepts connections on its CRI socket.
pub async fn wait_for_cri(seams: &Seams, bound: Duration) -> Result<()> {
    let path = seams.path(CRI_SOCKET_PATH);
    let start = tokio::time::Instant::now();
    let mut logged = false;
    loop {
        if listening(&path) {
            return Ok(());
        }
        if start.elapsed() >= bound {
            return Err(Error::Timeout(format!(
                "preflight: containerd does not accept connections on {} after {}s (is containerd.service running?)",
                path.display(),
                bound.as_secs()
            )));
        }
        if !logged {
            tracing::info!(socket = %path.display(), "waiting for containerd's CRI socket");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every check; an error that names each problem when any fails.
pub async fn run(seams: &Seams, cri_bound: Duration) -> Result<()> {
    let problems = check_host(seams);
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        return Err(Error::Runtime(format!(
            "preflight: this node cannot run Kubernetes: {}",
            list.join("; ")
        )));
    }
    wait_for_cri(seams, cri_bound).await?;
    tracing::info!("preflight passed: cgroup v2, no swap, kernel settings, containerd listening");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = "22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw\n\
        26 22 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n\
        30 26 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw\n";
    // Ubuntu 20.04's default: a tmpfs with one cgroup v1 mount per controller below it.
    const V1: &str = "22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw\n\
        30 26 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n\
        31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n\
        32 30 0:28 / /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory\n";

    #[test]
    fn cgroup_hierarchy_is_read_from_mountinfo() {
        assert_eq!(fs_type(V2, "/sys/fs/cgroup"), Some("cgroup2"));
        assert_eq!(fs_type(V1, "/sys/fs/cgroup"), Some("tmpfs"));
        assert_eq!(fs_type(V1, "/sys/fs/cgroup/unified"), Some("cgroup2"));
        assert_eq!(fs_type("", "/sys/fs/cgroup"), None);
        // A later mount over the same point hides the earlier one.
        let over = format!("{V1}40 22 0:40 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        assert_eq!(fs_type(&over, "/sys/fs/cgroup"), Some("cgroup2"));
    }

    #[test]
    fn swaps_skip_the_header() {
        let none = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert!(active_swaps(none).is_empty());
        let one =
            format!("{none}/swap.img                               file\t\t2097148\t\t0\t\t-2\n");
        assert_eq!(active_swaps(&one), vec!["/swap.img"]);
    }

    fn tree(mountinfo: &str, swaps: &str, forward: &str) -> (tempfile::TempDir, Seams) {
        let dir = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let f = dir.path().join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, s).unwrap();
        };
        w("proc/self/mountinfo", mountinfo);
        w("proc/swaps", swaps);
        w("proc/sys/net/ipv4/ip_forward", forward);
        w("proc/sys/net/bridge/bridge-nf-call-iptables", "1\n");
        let seams = Seams {
            root: dir.path().to_path_buf(),
            node_config: dir.path().join("etc/haimg/node.yaml"),
            kubeadm: "kubeadm".into(),
            kubectl: "kubectl".into(),
        };
        (dir, seams)
    }

    #[test]
    fn a_cgroup_v1_node_fails_with_the_reason() {
        let header = "Filename Type Size Used Priority\n";
        let (_d, ok) = tree(V2, header, "1\n");
        assert_eq!(check_host(&ok), vec![]);
        let (_d, v1) = tree(V1, header, "1\n");
        let p = check_host(&v1);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].check, "cgroup v2");
        assert!(p[0].detail.contains("tmpfs, not cgroup2"), "{}", p[0]);
        let (_d, bad) = tree(V2, &format!("{header}/swap.img file 1 0 -2\n"), "0\n");
        let checks: Vec<_> = check_host(&bad).into_iter().map(|p| p.check).collect();
        assert_eq!(checks, vec!["swap", "kernel settings"]);
    }

    #[test]
    fn only_a_lab_system_container_may_run_on_cgroup_v1() {
        let (dir, v1) = tree(V1, "h\n", "1\n");
        let marker = dir
            .path()
            .join(LAB_SYSTEM_CONTAINER_MARKER.trim_start_matches('/'));
        std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
        // A directory of that name is not the marker.
        std::fs::create_dir(&marker).unwrap();
        assert_eq!(check_host(&v1).len(), 1);
        std::fs::remove_dir(&marker).unwrap();
        std::fs::write(&marker, "").unwrap();
        assert_eq!(check_host(&v1), vec![]);
        // Nothing mounted at /sys/fs/cgroup stays a problem, lab or not.
        let (dir, none) = tree("", "h\n", "1\n");
        let marker = dir
            .path()
            .join(LAB_SYSTEM_CONTAINER_MARKER.trim_start_matches('/'));
        std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
        std::fs::write(&marker, "").unwrap();
        assert_eq!(check_host(&none).len(), 1);
    }

    #[tokio::test]
    async fn the_cri_wait_ends_when_containerd_listens_and_is_bounded() {
        let (dir, seams) = tree(V2, "h\n", "1\n");
        let err = wait_for_cri(&seams, Duration::ZERO).await.unwrap_err();
        assert!(err.to_string().contains("containerd.sock"), "{err}");
        let sock = dir.path().join("run/containerd/containerd.sock");
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        // A socket file nobody listens on is not containerd.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        assert!(wait_for_cri(&seams, Duration::ZERO).await.is_err());
        std::fs::remove_file(&sock).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        wait_for_cri(&seams, Duration::ZERO).await.unwrap();
    }
}
