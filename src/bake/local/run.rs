//! The processes of a local bake: the mirror's state, the base (mmdebstrap), the chroot
//! the provisioning script runs in, and the work directory's removal.
//!
//! Every mount a bake makes lives in a mount namespace of its own (`unshare --mount`),
//! with a PID namespace whose processes the kernel kills when its first one dies
//! (`--kill-child`): a bake that is stopped, however, leaves no mount and no process.
//! Every process is started in a process group of its own and recorded in [`Children`],
//! so a stop can kill each group before the work directory goes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use super::{MirrorState, STAGE_IN_ROOT};
use crate::error::{Error, Result};

/// The process groups a bake started (their leaders' pids), to kill on a stop.
#[derive(Clone, Default)]
pub struct Children(Arc<Mutex<Vec<i32>>>);

impl Children {
    fn add(&self, pid: Option<u32>) {
        if let Some(p) = pid {
            self.0.lock().unwrap().push(p as i32);
        }
    }
    fn remove(&self, pid: Option<u32>) {
        if let Some(p) = pid {
            self.0.lock().unwrap().retain(|q| *q != p as i32);
        }
    }
    /// SIGKILL to every recorded group.
    pub fn kill_all(&self) {
        for pgid in self.0.lock().unwrap().drain(..) {
            // SAFETY: kill(2) with a negative pid signals a process group; no memory is
            // shared with the callee.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// Runs `cmd` to its end in a process group of its own, recorded while it runs, and
/// returns what it printed and its status.
async fn captured(
    children: &Children,
    what: &str,
    mut cmd: Command,
) -> Result<std::process::Output> {
    cmd.process_group(0)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(|e| Error::Runtime(format!("{what}: cannot start: {e}")))?;
    let pid = child.id();
    children.add(pid);
    let out = child.wait_with_output().await;
    children.remove(pid);
    out.map_err(|e| Error::Runtime(format!("{what}: {e}")))
}

/// Runs `cmd` as [`captured`] does; its output, or an error naming `what` with the end of
/// its stderr.
pub async fn output(children: &Children, what: &str, cmd: Command) -> Result<Vec<u8>> {
    let out = captured(children, what, cmd).await?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Runtime(format!(
            "{what} failed ({}):\n{}",
            out.status,
            super::tail(err.trim_end(), 20)
        )));
    }
    Ok(out.stdout)
}

/// The mirror's state: each suite's `InRelease`, fetched and checked against the
/// recipe's key (gpgv), by its sha256. `key` is the key file on this machine.
pub async fn mirror_state(
    children: &Children,
    sources: &[(String, String)],
    key: &Path,
    work: &Path,
) -> Result<MirrorState> {
    // All suites at once: this is most of a cache hit's time.
    let fetches = sources.iter().enumerate().map(|(i, (url, suite))| {
        in_release(
            children,
            url,
            suite,
            key,
            work.join(format!("InRelease.{i}")),
        )
    });
    let mut out = Vec::new();
    for r in futures_join(fetches).await {
        out.push(r?);
    }
    Ok(MirrorState {
        url: sources.first().map(|s| s.0.clone()).unwrap_or_default(),
        suites: out,
    })
}

/// Awaits every future, concurrently, in order.
async fn futures_join<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = fs.map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, d) in pinned.iter_mut().zip(done.iter_mut()) {
            if d.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *d = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    done.into_iter()
        .map(|d| d.expect("every future is done"))
        .collect()
}

/// One suite's InRelease, signature-checked: (`url suite`, its sha256).
async fn in_release(
    children: &Children,
    url: &str,
    suite: &str,
    key: &Path,
    file: PathBuf,
) -> Result<(String, String)> {
    let src = format!("{}/dists/{suite}/InRelease", url.trim_end_matches('/'));
    let what = format!("the apt mirror's {src}");
    match src.strip_prefix("file://") {
        Some(p) => {
            tokio::fs::copy(p, &file)
                .await
                .map_err(|e| Error::Runtime(format!("{what}: {e}")))?;
        }
        None => {
            let mut c = Command::new("curl");
            c.args(["-fsS", "--retry", "3", "--max-time", "60", "-o"])
                .arg(&file)
                .arg(&src);
            output(children, &what, c).await?;
        }
    }
    check_signature(children, &what, key, &file).await?;
    let data = tokio::fs::read(&file).await.map_err(Error::io(&file))?;
    use sha2::Digest;
    Ok((
        format!("{url} {suite}"),
        hex::encode(sha2::Sha256::digest(&data)),
    ))
}

/// Whether `file` (an InRelease) carries a good signature by a key in `key`, as apt
/// decides: at least one valid signature and no bad one; signatures by keys the recipe does
/// not give (the next release's, say) are not counted.
async fn check_signature(children: &Children, what: &str, key: &Path, file: &Path) -> Result<()> {
    let mut v = Command::new("gpgv");
    v.args(["--status-fd", "1", "--keyring"]).arg(key).arg(file);
    // gpgv exits non-zero for a signature by a key the recipe does not give: the status
    // lines decide, not the exit code.
    let out = captured(children, "gpgv", v).await?;
    let status = String::from_utf8_lossy(&out.stdout);
    if signature_ok(&status) {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "{what} is not signed by the recipe's aptMirror key:\n{}",
        String::from_utf8_lossy(&out.stderr).trim_end()
    )))
}

/// gpgv's status lines: a VALIDSIG and no BADSIG (or ERRSIG other than a missing key).
pub fn signature_ok(status: &str) -> bool {
    let mut valid = false;
    for l in status.lines() {
        let mut w = l.split_whitespace();
        if w.next() != Some("[GNUPG:]") {
            continue;
        }
        match w.next() {
            Some("VALIDSIG") => valid = true,
            Some("BADSIG") | Some("EXPKEYSIG") | Some("REVKEYSIG") => return false,
            _ => {}
        }
    }
    valid
}

/// mmdebstrap's hooks that make a `file://` mirror visible inside the root it makes.
pub const FILE_MIRROR_HOOKS: &str = "/usr/share/mmdebstrap/hooks/file-mirror-automount";

/// Makes the base as a tarball at `out` with mmdebstrap, in mount and PID namespaces of
/// its own.
pub async fn make_base(
    children: &Children,
    os: crate::recipe::Os,
    sources: &[(String, String)],
    key: &Path,
    out: &Path,
    tmp: &Path,
) -> Result<()> {
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "--",
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--format=tar",
        "--quiet",
        "--aptopt=Acquire::Retries \"3\"",
    ])
    .arg(format!("--include={}", super::BASE_PACKAGES.join(",")))
    .arg(format!("--keyring={}", key.display()));
    // apt reads a file:// mirror from inside the new root: mmdebstrap's own hook bind-mounts
    // it there for the bake and unmounts it before the tarball is made.
    if sources.iter().any(|(u, _)| u.starts_with("file://")) {
        c.arg(format!("--hook-dir={FILE_MIRROR_HOOKS}"));
    }
    c.arg(os.codename())
        .arg(out)
        .args(super::mirror_lines(sources))
        .env("TMPDIR", tmp);
    output(children, "mmdebstrap (the base)", c).await.map(drop)
}

/// Unpacks a base tarball into `root`.
pub async fn unpack(children: &Children, tar: &Path, root: &Path) -> Result<()> {
    tokio::fs::create_dir_all(root)
        .await
        .map_err(Error::io(root))?;
    let mut c = Command::new("tar");
    c.args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(tar)
        .arg("-C")
        .arg(root);
    output(children, "unpacking the base", c).await.map(drop)
}

/// What the chroot's namespace mounts before the script runs: /proc, a read-only /sys, the
/// machine's /dev, tmpfs on /run and /tmp, the stage directory, a local mirror at its own
/// path, and this machine's resolver (the mirror's name must resolve). All of it goes with
/// the namespace.
const CHROOT_SETUP: &str = r#"set -eu
root=$1 stage=$2 mirror=$3
shift 3
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mkdir -p "$root/run/haimg-stage"
mount --bind -o ro "$stage" "$root/run/haimg-stage"
if [ -n "$mirror" ]; then
    mkdir -p "$root$mirror"
    mount --bind -o ro "$mirror" "$root$mirror"
fi
if [ -f /etc/resolv.conf ]; then
    # A mount point for it; seal() puts back what the base had.
    if [ -L "$root/etc/resolv.conf" ]; then
        mv "$root/etc/resolv.conf" "$root/etc/resolv.conf.haimg-link"
    fi
    if [ ! -e "$root/etc/resolv.conf" ]; then
        : >"$root/etc/resolv.conf"
        : >"$root/etc/resolv.conf.haimg-created"
    fi
    mount --bind -o ro /etc/resolv.conf "$root/etc/resolv.conf"
fi
# Not exec: this shell stays PID 1 outside the root, so systemctl sees a chroot and skips
# what needs a running manager (daemon-reload, start) instead of failing.
chroot "$root" "$@"
"#;

/// Runs the provisioning script in `root` as a chroot, with `env` as its whole
/// environment. Every line it prints goes to `log`; the `==> [i/N]` lines also go to
/// `progress`. Returns the log's text on success, or an error naming the failing step
/// with the log's tail.
pub async fn provision(
    children: &Children,
    root: &Path,
    stage: &Path,
    local_mirror: Option<&Path>,
    env: &[(&str, String)],
    log: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<String> {
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "--",
        "/bin/sh",
        "-c",
        CHROOT_SETUP,
        "haimg-chroot",
    ])
    .arg(root)
    .arg(stage)
    .arg(local_mirror.map(|p| p.as_os_str()).unwrap_or_default())
    .args(["/usr/bin/env", "-i"]);
    for (k, v) in [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", "/root"),
        ("LANG", "C.UTF-8"),
    ] {
        c.arg(format!("{k}={v}"));
    }
    for (k, v) in env {
        c.arg(format!("{k}={v}"));
    }
    c.args(["/bin/bash", &format!("{STAGE_IN_ROOT}/provision.sh")]);
    c.process_group(0)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .map_err(|e| Error::Runtime(format!("the provisioning chroot: cannot start: {e}")))?;
    let pid = child.id();
    children.add(pid);
    let mut file = tokio::fs::File::create(log).await.map_err(Error::io(log))?;
    let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut err = BufReader::new(child.stderr.take().expect("piped")).lines();
    let mut text = String::new();
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        let line = tokio::select! {
            l = out.next_line(), if out_open => l,
            l = err.next_line(), if err_open => {
                match l {
                    Ok(None) => { err_open = false; continue; }
                    other => other,
                }
            }
        };
        match line {
            Ok(Some(l)) => {
                if l.starts_with("==> [") {
                    progress(&l);
                }
                text.push_str(&l);
                text.push('\n');
                file.write_all(l.as_bytes()).await.map_err(Error::io(log))?;
                file.write_all(b"\n").await.map_err(Error::io(log))?;
            }
            Ok(None) => out_open = false,
            Err(e) => return Err(Error::Runtime(format!("reading the script's output: {e}"))),
        }
    }
    let status = child.wait().await;
    children.remove(pid);
    let status = status.map_err(|e| Error::Runtime(format!("the provisioning chroot: {e}")))?;
    file.flush().await.map_err(Error::io(log))?;
    if !status.success() {
        return Err(Error::Runtime(format!(
            "the provisioning script failed ({status}) in step {}\n--- the last lines of its log ---\n{}",
            super::last_step(&text)
                .map(|s| s.trim_start_matches("==> ").to_string())
                .unwrap_or_else(|| "(before the first step)".into()),
            super::tail(text.trim_end(), 30)
        )));
    }
    Ok(text)
}

/// What a plain base's cloud-init is told at its first boot (the provisioning script tells
/// a baked image the same): the minimal base has no `en_US.UTF-8`, the locale cloud-init
/// sets by default, so its locale module would fail, and with it cloud-config.service, on
/// every boot.
pub const PLAIN_CLOUD_CFG: (&str, &str) = (
    "etc/cloud/cloud.cfg.d/91-haimg-base-locale.cfg",
    "# haimg: this base carries no en_US.UTF-8 (no locales package); keep its C.UTF-8.\nlocale: false\n",
);

/// What the script's last step does to an image, for a plain base no script ran in: an
/// empty machine id (each node makes its own at first boot), dbus's pointing at it; and
/// cloud-init's locale left alone ([`PLAIN_CLOUD_CFG`]).
pub fn clean_plain(root: &Path) -> Result<()> {
    let (cfg, text) = PLAIN_CLOUD_CFG;
    let cfg = root.join(cfg);
    std::fs::write(&cfg, text).map_err(Error::io(&cfg))?;
    let mid = root.join("etc/machine-id");
    std::fs::write(&mid, b"").map_err(Error::io(&mid))?;
    let dbus = root.join("var/lib/dbus/machine-id");
    if let Some(dir) = dbus.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    let _ = std::fs::remove_file(&dbus);
    std::os::unix::fs::symlink("/etc/machine-id", &dbus).map_err(Error::io(&dbus))
}

/// Seals the root after the script (which cleaned cloud-init, the machine id, apt's lists
/// and the logs): puts back the resolver file the chroot's setup moved, and checks the
/// image has no machine id, no SSH daemon and nothing of the bake left inside.
pub fn seal(root: &Path) -> Result<()> {
    let etc = root.join("etc");
    let created = etc.join("resolv.conf.haimg-created");
    let link = etc.join("resolv.conf.haimg-link");
    if created.exists() {
        let _ = std::fs::remove_file(etc.join("resolv.conf"));
        std::fs::remove_file(&created).map_err(Error::io(&created))?;
    }
    if link.symlink_metadata().is_ok() {
        let _ = std::fs::remove_file(etc.join("resolv.conf"));
        std::fs::rename(&link, etc.join("resolv.conf")).map_err(Error::io(&link))?;
    }
    let mid = etc.join("machine-id");
    let id = std::fs::read(&mid).map_err(Error::io(&mid))?;
    let mut problems = vec![];
    if !id.is_empty() {
        problems.push("/etc/machine-id is not empty".to_string());
    }
    for p in [
        "usr/sbin/sshd",
        "var/lib/cloud/instance",
        "usr/sbin/policy-rc.d",
    ] {
        if root.join(p).symlink_metadata().is_ok() {
            problems.push(format!("/{p} exists"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Runtime(format!(
            "the sealed root is not as an image must be: {}",
            problems.join("; ")
        )))
    }
}

/// An exclusive lock on `path` (created), held until the file is dropped; waited for on
/// a blocking thread.
pub async fn lock(path: &Path) -> Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(Error::io(path))?;
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: flock(2) on a descriptor this closure owns for the call's duration.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io(&p)(std::io::Error::last_os_error()));
        }
        Ok(f)
    })
    .await
    .map_err(|e| Error::Runtime(format!("locking {}: {e}", path.display())))?
}

/// Mount points at or below `dir`, from `/proc/self/mountinfo` (unreadable: `/` itself,
/// so that nothing is removed on a guess).
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return vec![PathBuf::from("/")];
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Removes the work directory, refusing if anything is mounted below it (a bind mount of
/// /dev must never be removed through).
pub fn remove_work(dir: &Path) -> Result<()> {
    let m = mounts_below(dir);
    if !m.is_empty() {
        return Err(Error::Runtime(format!(
            "not removing {}: mounted below it: {}",
            dir.display(),
            m.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_is_trusted_as_apt_trusts_it() {
        let good = "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 6ED0E7B82643E131 Debian\n[GNUPG:] VALIDSIG 4CB5 2023-01-21\n";
        let unknown = "[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 78DBA3BC47EF2265 1 10 01 1 9\n[GNUPG:] NO_PUBKEY 78DBA3BC47EF2265\n";
        assert!(signature_ok(good));
        assert!(
            signature_ok(&format!("{good}{unknown}")),
            "another release's key is not counted"
        );
        assert!(!signature_ok(unknown), "no key of the recipe's signed it");
        assert!(!signature_ok(&format!(
            "{good}[GNUPG:] BADSIG 6ED0 Debian\n"
        )));
        assert!(!signature_ok(&format!(
            "{good}[GNUPG:] EXPKEYSIG 6ED0 Debian\n"
        )));
        assert!(!signature_ok(""));
    }

    #[test]
    fn the_work_directory_is_never_removed_through_a_mount() {
        // /proc is a mount: a "work directory" there is refused, not emptied.
        assert!(mounts_below(Path::new("/proc")).contains(&PathBuf::from("/proc")));
        let e = remove_work(Path::new("/proc")).unwrap_err().to_string();
        assert!(e.contains("mounted below it"), "{e}");
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), "x").unwrap();
        let p = d.path().to_path_buf();
        remove_work(&p).unwrap();
        assert!(!p.exists());
        remove_work(&p).unwrap();
    }
}
