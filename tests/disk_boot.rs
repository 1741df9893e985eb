//! The local-image disk (src/bake/disk.rs) boots by itself: a Debian 12 root made by
//! mmdebstrap from Debian's packages, assembled into a qcow2 with no mounts, booted by qemu
//! from its own UEFI bootloader with no network. The root is cached outside the clone
//! (~/.cache/haimg/rootfs), so a warm run spends its time in the boot alone.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// What the boot test's root holds: a kernel, systemd and what the initramfs needs.
const PACKAGES: &str = "systemd,systemd-sysv,udev,kmod,linux-image-cloud-amd64";

/// A tarball of the root, made once per package list.
fn root_tarball() -> PathBuf {
    let cache = PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/haimg/rootfs");
    std::fs::create_dir_all(&cache).unwrap();
    let tar = cache.join(format!(
        "debian-12-{}.tar",
        &hex::encode(sha2_of(PACKAGES.as_bytes()))[..12]
    ));
    if !tar.is_file() {
        let part = tar.with_extension("part.tar");
        let o = run({
            let mut c = Command::new(require_tool("mmdebstrap"));
            c.args([
                "--variant=minbase",
                "--quiet",
                &format!("--include={PACKAGES}"),
            ])
            .args(["bookworm"])
            .arg(&part)
            .arg("http://deb.debian.org/debian");
            c
        });
        assert!(o.status.success(), "mmdebstrap: {}", stderr(&o));
        std::fs::rename(&part, &tar).unwrap();
    }
    tar
}

fn sha2_of(b: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(b).to_vec()
}

/// A test-only unit that prints what the boot must show to the serial console, then
/// powers the machine off (qemu exits: the event the test waits for).
fn add_report_unit(root: &Path) {
    let unit = root.join("etc/systemd/system/haimg-boot-report.service");
    std::fs::write(
        &unit,
        "[Unit]\nDescription=boot report for tests/disk_boot.rs\nAfter=multi-user.target\n\n\
         [Service]\nType=oneshot\nStandardOutput=tty\nTTYPath=/dev/ttyS0\n\
         ExecStart=/bin/sh -c 'echo \"HAIMG-BOOT-REPORT cgroup=$(stat -fc %%T /sys/fs/cgroup) machine-id=$(cat /etc/machine-id) root=$(findmnt -no SOURCE /) state=$(systemctl is-system-running)\"'\n\
         ExecStartPost=/bin/systemctl --no-block poweroff\n\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/etc/systemd/system/haimg-boot-report.service",
        wants.join("haimg-boot-report.service"),
    )
    .unwrap();
    // Sealed as an image is: the first boot makes its own machine id.
    std::fs::write(root.join("etc/machine-id"), "").unwrap();
}

#[test]
fn a_disk_assembled_from_a_debian_root_boots_by_itself_under_qemu() {
    let tar = root_tarball();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let o = run({
        let mut c = Command::new("tar");
        c.arg("-xf").arg(&tar).arg("-C").arg(&root);
        c
    });
    assert!(o.status.success(), "{}", stderr(&o));
    add_report_unit(&root);

    let t0 = Instant::now();
    let out = dir.path().join("disk.qcow2");
    let disk =
        haimg::bake::disk::assemble(&root, &out, dir.path(), "console=ttyS0", false).unwrap();
    let assembled = t0.elapsed();
    assert!(out.is_file());
    let info = run({
        let mut c = Command::new(require_tool("qemu-img"));
        c.args(["info", "--output=json"]).arg(&out);
        c
    });
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], disk.layout.disk_size);

    // Boot it: UEFI firmware, the disk's own systemd-boot, no network at all.
    let b = common::qemu::boot(&out, None, dir.path(), Duration::from_secs(300));
    let (booted, console) = (b.elapsed, b.console);
    let report = console
        .lines()
        .find_map(|l| l.split("HAIMG-BOOT-REPORT ").nth(1))
        .unwrap_or_else(|| panic!("no boot report on the console:\n{console}"));
    let field = |k: &str| {
        report
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(field("cgroup"), "cgroup2fs", "{report}");
    assert_eq!(field("root"), "/dev/vda2", "{report}");
    let id = field("machine-id");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "a machine id of its own: {report}"
    );
    assert!(
        console.contains(&format!("Linux version {}", disk.kernel)),
        "the root's own kernel booted"
    );
    eprintln!(
        "disk: {} MiB virtual, assembled in {:.1} s; booted to its report and powered off in {:.1} s under TCG",
        disk.layout.disk_size >> 20,
        assembled.as_secs_f64(),
        booted.as_secs_f64()
    );
}
