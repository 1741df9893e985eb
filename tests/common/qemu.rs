//! Booting a disk image under qemu (TCG: no usable KVM here) from its own UEFI bootloader,
//! with no network, and reading what it printed on its serial console.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{require_tool, run, stderr};

pub struct Boot {
    pub console: String,
    pub elapsed: Duration,
}

/// Boots `disk` (qcow2) with `seed` (a NoCloud volume) if given, and waits, bounded, for
/// the machine to power itself off: the event a boot test waits for.
pub fn boot(disk: &Path, seed: Option<&Path>, work: &Path, bound: Duration) -> Boot {
    let vars = work.join("vars.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).expect("ovmf is installed");
    let serial = work.join("serial.log");
    let t = Instant::now();
    let mut cmd = Command::new(require_tool("qemu-system-x86_64"));
    cmd.args([
        "-machine", "q35", "-m", "2048", "-smp", "2", "-accel", "tcg",
    ])
    .args([
        "-nodefaults",
        "-display",
        "none",
        "-nic",
        "none",
        "-no-reboot",
    ])
    .arg("-serial")
    .arg(format!("file:{}", serial.display()))
    .args([
        "-drive",
        "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
    ])
    .arg("-drive")
    .arg(format!("if=pflash,format=raw,file={}", vars.display()))
    .arg("-drive")
    .arg(format!("file={},if=virtio,format=qcow2", disk.display()));
    if let Some(s) = seed {
        cmd.arg("-drive").arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            s.display()
        ));
    }
    let mut qemu = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Some(s) = qemu.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = qemu.kill();
            let _ = qemu.wait();
            panic!(
                "no power-off within {bound:?}; the console:\n{}",
                std::fs::read_to_string(&serial).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let elapsed = t.elapsed();
    let console = String::from_utf8_lossy(&std::fs::read(&serial).unwrap()).into_owned();
    assert!(status.success(), "qemu: {status}\n{console}");
    Boot { console, elapsed }
}

/// A NoCloud seed: a FAT volume labelled CIDATA with `user-data`, `meta-data` and
/// `vendor-data` (a cloud-init part of the test's own, beside the user-data under test).
pub fn nocloud_seed(work: &Path, user_data: &str, meta_data: &str, vendor_data: &str) -> PathBuf {
    let seed = work.join("seed.img");
    let f = std::fs::File::create(&seed).unwrap();
    f.set_len(4 << 20).unwrap();
    drop(f);
    let o = run({
        let mut c = Command::new(require_tool("mkfs.vfat"));
        c.args(["-n", "CIDATA"]).arg(&seed);
        c
    });
    assert!(o.status.success(), "mkfs.vfat: {}", stderr(&o));
    for (name, text) in [
        ("user-data", user_data),
        ("meta-data", meta_data),
        ("vendor-data", vendor_data),
    ] {
        let p = work.join(name);
        std::fs::write(&p, text).unwrap();
        let o = run({
            let mut c = Command::new(require_tool("mcopy"));
            c.arg("-i").arg(&seed).arg(&p).arg(format!("::{name}"));
            c
        });
        assert!(o.status.success(), "mcopy: {}", stderr(&o));
    }
    seed
}
