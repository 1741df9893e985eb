//! A bootable disk from a root filesystem directory, with no mounts and no loop devices:
//! the local-image half of `bake` (issue #13) that turns a provisioned root into a disk
//! any hypervisor can boot by itself.
//!
//! # Layout
//! GPT, 1 MiB aligned: an EFI system partition (FAT32, 64 MiB) holding systemd-boot as the
//! removable-media loader `EFI/BOOT/BOOTX64.EFI`, one loader entry, the root's newest
//! kernel and its initramfs; then the root (ext4, made with `mkfs.ext4 -d` straight from
//! the directory). The root is found by filesystem UUID, which the disk's own `/etc/fstab`
//! names too. UEFI firmware boots it unchanged under qemu (OVMF), Proxmox, vSphere, libvirt
//! and `aws ec2 import-image`.
//!
//! # Tools
//! `mkfs.ext4` (e2fsprogs), `mkfs.vfat` (dosfstools), `mmd`/`mcopy` (mtools), `sfdisk`
//! (fdisk), `qemu-img` (qemu-utils) and systemd-boot's EFI binary (systemd-boot-efi), each
//! looked up first so that a missing one is named before any work starts.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

const MIB: u64 = 1024 * 1024;
/// Where systemd-boot-efi installs the loader.
pub const SYSTEMD_BOOT_EFI: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// Byte offsets and sizes of the two partitions, and of the whole disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub esp_start: u64,
    pub esp_size: u64,
    pub root_start: u64,
    pub root_size: u64,
    pub disk_size: u64,
}

/// Pure planning: a root of `root_bytes` gets a filesystem with a third more room (ext4's
/// metadata and the first boot's logs) plus 256 MiB, rounded up to whole MiB; the GPT
/// backup header needs the last MiB.
pub fn layout(root_bytes: u64) -> Layout {
    let esp_start = MIB;
    let esp_size = 64 * MIB;
    let root_start = esp_start + esp_size;
    let root_size = (root_bytes + root_bytes / 3 + 256 * MIB).div_ceil(MIB) * MIB;
    Layout {
        esp_start,
        esp_size,
        root_start,
        root_size,
        disk_size: root_start + root_size + MIB,
    }
}

/// The `sfdisk` script for a layout (sizes in 512-byte sectors).
pub fn sfdisk_script(l: &Layout) -> String {
    let s = |b: u64| b / 512;
    format!(
        "label: gpt\nstart={}, size={}, type=U, name=\"ESP\"\nstart={}, size={}, type=L, name=\"root\"\n",
        s(l.esp_start),
        s(l.esp_size),
        s(l.root_start),
        s(l.root_size)
    )
}

/// What was built.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub layout: Layout,
    pub root_uuid: String,
    pub kernel: String,
}

/// The tools a disk needs, each found on `PATH` (and in /usr/sbin, /sbin) or named.
pub fn check_tools() -> Result<()> {
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .collect();
    check_tools_in(&dirs, Path::new(SYSTEMD_BOOT_EFI))
}

/// [`check_tools`] with the directories searched and the loader's path given.
pub fn check_tools_in(dirs: &[PathBuf], loader: &Path) -> Result<()> {
    let missing: Vec<&str> = [
        "mkfs.ext4",
        "mkfs.vfat",
        "mmd",
        "mcopy",
        "sfdisk",
        "qemu-img",
    ]
    .into_iter()
    .filter(|t| !dirs.iter().any(|d| d.join(t).is_file()))
    .collect();
    let mut problems: Vec<String> = missing
        .iter()
        .map(|t| format!("`{t}` is not installed"))
        .collect();
    if !loader.is_file() {
        problems.push(format!(
            "{} is missing (Debian's systemd-boot-efi)",
            loader.display()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Runtime(format!(
            "a local disk image needs e2fsprogs, dosfstools, mtools, fdisk, qemu-utils and systemd-boot-efi: {}",
            problems.join("; ")
        )))
    }
}

/// The newest kernel in `<root>/boot` and its initramfs.
pub fn kernel_of(root: &Path) -> Result<(PathBuf, PathBuf, String)> {
    let boot = root.join("boot");
    let mut versions: Vec<String> = std::fs::read_dir(&boot)
        .map_err(Error::io(&boot))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_string)
        })
        .collect();
    versions.sort_by_key(|a| version_key(a));
    let v = versions.pop().ok_or_else(|| {
        Error::Runtime(format!(
            "{} holds no kernel (vmlinuz-*): the root needs a kernel package",
            boot.display()
        ))
    })?;
    let initrd = boot.join(format!("initrd.img-{v}"));
    if !initrd.is_file() {
        return Err(Error::Runtime(format!(
            "{} is missing: the kernel {v} has no initramfs",
            initrd.display()
        )));
    }
    Ok((boot.join(format!("vmlinuz-{v}")), initrd, v))
}

/// Orders `6.1.0-50-cloud-amd64` after `6.1.0-9-cloud-amd64`: numbers compare as numbers.
fn version_key(v: &str) -> Vec<(u64, String)> {
    v.split(['.', '-'])
        .map(|p| (p.parse().unwrap_or(0), p.to_string()))
        .collect()
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| Error::Runtime(format!("cannot run {cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Runtime(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn du_bytes(dir: &Path) -> Result<u64> {
    let out = Command::new("du")
        .args(["-sx", "--block-size=1"])
        .arg(dir)
        .output()
        .map_err(|e| Error::Runtime(format!("du: {e}")))?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::Runtime(format!("du {} printed no size", dir.display())))
}

/// Builds `out` (qcow2, or raw when `raw`) from `root`, using `work` for the two
/// filesystem images and the raw disk (removed when done). Writes `<root>/etc/fstab`
/// (the root by UUID). `cmdline` is appended to the kernel command line.
pub fn assemble(root: &Path, out: &Path, work: &Path, cmdline: &str, raw: bool) -> Result<Disk> {
    check_tools()?;
    let (kernel, initrd, kernel_version) = kernel_of(root)?;
    let uuid = random_uuid()?;
    let fstab = root.join("etc/fstab");
    std::fs::write(
        &fstab,
        format!("UUID={uuid} / ext4 defaults,errors=remount-ro 0 1\n"),
    )
    .map_err(Error::io(&fstab))?;
    let l = layout(du_bytes(root)?);
    let root_img = root_filesystem(root, work, &uuid, &l)?;
    let entry = format!(
        "title haimg ({kernel_version})\nlinux /vmlinuz\ninitrd /initrd.img\noptions root=UUID={uuid} ro {cmdline}\n"
    );
    let esp_img = esp(work, &l, &kernel, &initrd, &entry)?;
    let disk_raw = if raw {
        out.to_path_buf()
    } else {
        work.join("disk.raw")
    };
    partitioned(&disk_raw, &l, &esp_img, &root_img)?;
    if !raw {
        run(Command::new("qemu-img")
            .args(["convert", "-q", "-O", "qcow2"])
            .arg(&disk_raw)
            .arg(out))?;
        std::fs::remove_file(&disk_raw).map_err(Error::io(&disk_raw))?;
    }
    Ok(Disk {
        path: out.to_path_buf(),
        layout: l,
        root_uuid: uuid,
        kernel: kernel_version,
    })
}

/// The root filesystem image (ext4, labelled and with the given UUID), made from `root`
/// with no mount (`mkfs.ext4 -d`).
fn root_filesystem(root: &Path, work: &Path, uuid: &str, l: &Layout) -> Result<PathBuf> {
    let root_img = work.join("root.ext4");
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "root",
            "-U",
            uuid,
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(root)
        .arg(&root_img)
        .arg(format!("{}", l.root_size / 1024)))?;
    Ok(root_img)
}

/// The EFI system partition's image (FAT32, filled with mtools, no mount): systemd-boot,
/// the kernel and initrd, and one loader entry (`entry`) chosen at once.
fn esp(work: &Path, l: &Layout, kernel: &Path, initrd: &Path, entry: &str) -> Result<PathBuf> {
    let esp_img = work.join("esp.fat");
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", "ESP", "-C"])
        .arg(&esp_img)
        .arg(format!("{}", l.esp_size / 1024)))?;
    let mtools = |args: &[&std::ffi::OsStr]| {
        run(Command::new(args[0])
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&esp_img)
            .args(&args[1..]))
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    mtools(&[
        &os("mmd"),
        &os("::/EFI"),
        &os("::/EFI/BOOT"),
        &os("::/loader"),
        &os("::/loader/entries"),
    ])?;
    let loader_conf = work.join("loader.conf");
    let entry_file = work.join("haimg.conf");
    std::fs::write(&loader_conf, "default haimg.conf\ntimeout 0\n")
        .map_err(Error::io(&loader_conf))?;
    std::fs::write(&entry_file, entry).map_err(Error::io(&entry_file))?;
    for (src, dst) in [
        (Path::new(SYSTEMD_BOOT_EFI), "::/EFI/BOOT/BOOTX64.EFI"),
        (kernel, "::/vmlinuz"),
        (initrd, "::/initrd.img"),
        (loader_conf.as_path(), "::/loader/loader.conf"),
        (entry_file.as_path(), "::/loader/entries/haimg.conf"),
    ] {
        mtools(&[&os("mcopy"), src.as_os_str(), &os(dst)])?;
    }
    Ok(esp_img)
}

/// The raw disk: a GPT (sfdisk) with the ESP and the root partition, each image copied in
/// at its offset and then removed.
fn partitioned(disk_raw: &Path, l: &Layout, esp_img: &Path, root_img: &Path) -> Result<()> {
    {
        let f = std::fs::File::create(disk_raw).map_err(Error::io(disk_raw))?;
        f.set_len(l.disk_size).map_err(Error::io(disk_raw))?;
    }
    let mut sf = Command::new("sfdisk")
        .arg("-q")
        .arg(disk_raw)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::Runtime(format!("sfdisk: {e}")))?;
    sf.stdin
        .take()
        .expect("piped")
        .write_all(sfdisk_script(l).as_bytes())
        .map_err(Error::io(disk_raw))?;
    let o = sf
        .wait_with_output()
        .map_err(|e| Error::Runtime(format!("sfdisk: {e}")))?;
    if !o.status.success() {
        return Err(Error::Runtime(format!(
            "sfdisk {}: {}",
            disk_raw.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    place(disk_raw, esp_img, l.esp_start)?;
    place(disk_raw, root_img, l.root_start)?;
    std::fs::remove_file(esp_img).map_err(Error::io(esp_img))?;
    std::fs::remove_file(root_img).map_err(Error::io(root_img))?;
    Ok(())
}

/// Copies a filesystem image into the disk at `offset`, leaving the rest as it is.
fn place(disk: &Path, image: &Path, offset: u64) -> Result<()> {
    let mut d = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .map_err(Error::io(disk))?;
    d.seek(SeekFrom::Start(offset)).map_err(Error::io(disk))?;
    let mut i = std::fs::File::open(image).map_err(Error::io(image))?;
    std::io::copy(&mut i, &mut d).map_err(Error::io(disk))?;
    Ok(())
}

fn random_uuid() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| Error::Runtime(format!("no randomness: {e}")))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_aligned_do_not_overlap_and_leave_room_for_the_backup_gpt() {
        for root in [0, 1, 700 * MIB + 12345, 5 * 1024 * MIB] {
            let l = layout(root);
            assert_eq!(l.esp_start % MIB, 0);
            assert_eq!(l.root_start % MIB, 0);
            assert_eq!(l.root_size % MIB, 0);
            assert_eq!(l.esp_start + l.esp_size, l.root_start);
            assert!(l.root_size >= root + root / 3, "{l:?}");
            assert_eq!(l.disk_size, l.root_start + l.root_size + MIB);
        }
        let s = sfdisk_script(&layout(0));
        assert!(
            s.starts_with("label: gpt\nstart=2048, size=131072, type=U"),
            "{s}"
        );
    }

    #[test]
    fn missing_tools_are_all_named_before_any_work() {
        let empty = tempfile::tempdir().unwrap();
        let loader = empty.path().join("loader.efi");
        let dirs = [empty.path().to_path_buf()];
        let e = check_tools_in(&dirs, &loader).unwrap_err().to_string();
        let needed = [
            "mkfs.ext4",
            "mkfs.vfat",
            "mmd",
            "mcopy",
            "sfdisk",
            "qemu-img",
            "loader.efi",
        ];
        for t in needed {
            assert!(e.contains(t), "{t}: {e}");
        }
        // With the tools there, nothing is missing.
        for t in needed {
            std::fs::write(empty.path().join(t), "").unwrap();
        }
        check_tools_in(&dirs, &loader).unwrap();
    }

    #[test]
    fn the_newest_kernel_wins_numerically() {
        let mut v = [
            "6.1.0-9-cloud-amd64",
            "6.1.0-50-cloud-amd64",
            "6.1.0-10-cloud-amd64",
        ];
        v.sort_by_key(|a| version_key(a));
        assert_eq!(v.last(), Some(&"6.1.0-50-cloud-amd64"));
    }
}
