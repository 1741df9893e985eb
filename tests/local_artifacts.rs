//! What scripts/kube-artifacts.sh makes from ../shared/kubernetes, checked with the real
//! tools: the image archives are exactly the images upstream kubeadm 1.30.0 asks for (with
//! etcd's real tag), each imports into a real containerd under its name, and the packages
//! carry what pkgs.k8s.io's do, at the version a recipe pins.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use common::containerd::Containerd;
use common::*;

fn artifacts() -> PathBuf {
    kube_artifacts()
}

/// images.tsv: (name, archive, sha256).
fn index(dir: &std::path::Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(dir.join("images/images.tsv"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

#[test]
fn the_archives_are_the_images_kubeadm_asks_for_and_import_under_their_names() {
    let dir = artifacts();
    let images = index(&dir);
    // What real kubeadm 1.30.0 pulls, told the etcd image's real tag.
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        cfg.path(),
        "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nkubernetesVersion: v1.30.0\netcd:\n  local:\n    imageTag: 3.5.21-0\n",
    )
    .unwrap();
    let o = run({
        let mut c = Command::new("unshare");
        c.arg("-n")
            .arg(shared_tool("kubeadm-1.30.0"))
            .args(["config", "images", "list", "--config"])
            .arg(cfg.path());
        c
    });
    assert!(o.status.success(), "{}", stderr(&o));
    let wanted: BTreeSet<String> = stdout(&o).lines().map(str::to_string).collect();
    let have: BTreeSet<String> = images
        .iter()
        .map(|(n, _, _)| n.clone())
        // The pod network's and the VIP static pods' images are not kubeadm's.
        .filter(|n| !n.contains("kindnetd") && !n.starts_with("localhost/haimg/"))
        .collect();
    assert_eq!(have, wanted, "archives vs `kubeadm config images list`");

    // Each archive's digest is what the index says, and it imports under its name.
    let containerd = Containerd::start();
    for (name, archive, sha) in &images {
        let path = dir.join("images").join(archive);
        let o = run({
            let mut c = Command::new("sha256sum");
            c.arg(&path);
            c
        });
        assert!(stdout(&o).starts_with(sha.as_str()), "{archive}: digest");
        let o = containerd.ctr(&[
            "images",
            "import",
            "--all-platforms",
            path.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{archive}: {}", stderr(&o));
        let ls = stdout(&containerd.ctr(&["images", "ls", "-q"]));
        assert!(
            ls.lines().any(|l| l == name),
            "{name} not in containerd: {ls}"
        );
    }
    // kube-proxy's image carries iptables and everything it loads.
    let proxy = dir.join("images/kube-proxy.tar");
    let listing = layer_listing(&proxy);
    for f in [
        "usr/local/bin/kube-proxy",
        "usr/sbin/xtables-nft-multi",
        "usr/sbin/iptables",
        "lib64/ld-linux-x86-64.so.2",
    ] {
        assert!(listing.iter().any(|l| l == f), "kube-proxy image lacks {f}");
    }
}

/// The VIP static pods' images are Debian's keepalived and haproxy, with what keepalived's
/// check script calls, and start the programs their tags name.
#[test]
fn the_vip_images_run_debians_keepalived_and_haproxy() {
    let dir = artifacts();
    let images = index(&dir);
    for (program, version_arg, prefix) in [
        ("keepalived", "--version", "Keepalived v"),
        ("haproxy", "-v", "HAProxy version "),
    ] {
        let (name, archive, _) = images
            .iter()
            .find(|(n, _, _)| n.starts_with(&format!("localhost/haimg/{program}:")))
            .unwrap_or_else(|| panic!("no {program} image in {images:?}"));
        let root = tempfile::tempdir().unwrap();
        unpack_layer(&dir.join("images").join(archive), root.path());
        for f in ["bin/sh", "usr/bin/curl", "bin/ip", "bin/grep", "etc/passwd"] {
            assert!(root.path().join(f).exists(), "{name} lacks /{f}");
        }
        let o = run({
            let mut c = Command::new("chroot");
            c.arg(root.path())
                .arg(format!("/usr/sbin/{program}"))
                .arg(version_arg);
            c
        });
        let out = format!("{}{}", stdout(&o), stderr(&o));
        // 2.2.7-1-b2 is Debian's 1:2.2.7-1+b2: the upstream version leads the tag.
        let tag = name.rsplit(':').next().unwrap();
        let upstream = tag.split('-').next().unwrap();
        assert!(
            out.contains(&format!("{prefix}{upstream}")),
            "{name}: `{program} {version_arg}` says {out}"
        );
    }
}

/// Unpacks every layer of an OCI archive written by scripts/oci-archive.py into `root`.
fn unpack_layer(archive: &std::path::Path, root: &std::path::Path) {
    let tmp = tempfile::tempdir().unwrap();
    let o = run({
        let mut c = Command::new("tar");
        c.arg("-xf").arg(archive).arg("-C").arg(tmp.path());
        c
    });
    assert!(o.status.success());
    for b in std::fs::read_dir(tmp.path().join("blobs/sha256"))
        .unwrap()
        .flatten()
    {
        // The layers are gzip; the index, manifest and config blobs are JSON.
        let head = std::fs::read(b.path()).unwrap();
        if !head.starts_with(&[0x1f, 0x8b]) {
            continue;
        }
        let o = run({
            let mut c = Command::new("tar");
            c.arg("-xzf").arg(b.path()).arg("-C").arg(root);
            c
        });
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

/// Every path in the single layer of an archive written by scripts/oci-archive.py.
fn layer_listing(archive: &std::path::Path) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let o = run({
        let mut c = Command::new("tar");
        c.arg("-xf").arg(archive).arg("-C").arg(tmp.path());
        c
    });
    assert!(o.status.success());
    let blobs = tmp.path().join("blobs/sha256");
    let mut out = Vec::new();
    for b in std::fs::read_dir(&blobs).unwrap().flatten() {
        let o = run({
            let mut c = Command::new("tar");
            c.arg("-tzf").arg(b.path());
            c
        });
        if o.status.success() {
            out.extend(
                stdout(&o)
                    .lines()
                    .map(|l| l.trim_end_matches('/').to_string()),
            );
        }
    }
    out
}

#[test]
fn the_packages_carry_the_programs_at_the_pinned_versions() {
    let dir = artifacts();
    let field = |deb: &str, f: &str| {
        let o = run({
            let mut c = Command::new("dpkg-deb");
            c.arg("-f").arg(dir.join("debs").join(deb)).arg(f);
            c
        });
        assert!(o.status.success(), "{deb}: {}", stderr(&o));
        stdout(&o).trim().to_string()
    };
    let contents = |deb: &str| {
        let o = run({
            let mut c = Command::new("dpkg-deb");
            c.arg("-c").arg(dir.join("debs").join(deb));
            c
        });
        stdout(&o)
    };
    for (deb, pkg, version, file) in [
        (
            "kubeadm_1.30.0-1.1_amd64.deb",
            "kubeadm",
            "1.30.0-1.1",
            "./usr/bin/kubeadm",
        ),
        (
            "kubelet_1.30.0-1.1_amd64.deb",
            "kubelet",
            "1.30.0-1.1",
            "./usr/bin/kubelet",
        ),
        (
            "kubectl_1.30.0-1.1_amd64.deb",
            "kubectl",
            "1.30.0-1.1",
            "./usr/bin/kubectl",
        ),
        (
            "cri-tools_1.30.1-1.1_amd64.deb",
            "cri-tools",
            "1.30.1-1.1",
            "./usr/bin/crictl",
        ),
    ] {
        assert_eq!(field(deb, "Package"), pkg);
        assert_eq!(field(deb, "Version"), version);
        assert!(contents(deb).contains(file), "{deb} lacks {file}");
    }
    let kubelet = contents("kubelet_1.30.0-1.1_amd64.deb");
    for f in [
        "./usr/lib/systemd/system/kubelet.service",
        "./usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf",
    ] {
        assert!(kubelet.contains(f), "kubelet lacks {f}");
    }
    assert!(kubelet.contains("root/root"), "owned by root: {kubelet}");
}
