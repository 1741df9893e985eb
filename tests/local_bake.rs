//! `haimg bake debian-12 --target qemu`, for real: mmdebstrap from Debian's mirror, the
//! provisioning script in a chroot, the disk with its own bootloader. Then the disk boots
//! under qemu with no network and a NoCloud seed, and reports from cloud-init's final
//! stage what the recipe says must be true. And the fault paths: each leaves nothing.
//!
//! The base is cached outside the clone (~/.cache/haimg/bases), so a warm run spends its
//! time in the script and the boot.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn agent() -> PathBuf {
    std::env::var_os("HAIMG_TEST_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_haimg")))
}

fn bake(store: &Path, recipe: &str, extra: &[&str]) -> Command {
    let mut c = haimg();
    c.args(["bake", recipe, "--target", "qemu", "--store"])
        .arg(store)
        .arg("--sources")
        .arg(kube_artifacts())
        .arg("--haimg-binary")
        .arg(agent())
        .args(extra);
    c
}

/// Nothing of a bake is left: no entry or work directory in the store, no mount below it,
/// no process whose root is below it.
fn assert_nothing_left(store: &Path) {
    let left: Vec<_> = std::fs::read_dir(store)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the store: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(store.to_str().unwrap()),
        "a mount below the store:\n{mounts}"
    );
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(root) = std::fs::read_link(p.path().join("root")) {
            assert!(
                !root.starts_with(store),
                "process {:?} still runs in {}",
                p.file_name(),
                root.display()
            );
        }
    }
}

/// The debian-12 recipe as a file, with `edit` applied (its embedded files named by path).
fn recipe_file(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("image-recipes/debian-12.yaml"))
        .unwrap()
        .replace(
            "key: keys/",
            &format!("key: {}/image-recipes/keys/", repo().display()),
        )
        .replace(
            "manifest: cni/",
            &format!("manifest: {}/image-recipes/cni/", repo().display()),
        );
    let p = dir.join("debian-12.yaml");
    std::fs::write(&p, edit(text)).unwrap();
    p
}

/// What the image reports at boot, from cloud-init's final stage, one `HAIMG-R key value`
/// line per fact; then it powers off.
const REPORT: &str = r#"#!/bin/sh
r() { echo "HAIMG-R $*"; }
r cgroup "$(stat -fc %T /sys/fs/cgroup)"
r machine-id "$(cat /etc/machine-id)"
for p in kubeadm kubelet kubectl cri-tools containerd runc keepalived haproxy containernetworking-plugins; do
    r pkg "$p" "$(dpkg-query -W -f '${Version}' "$p")"
done
r held "$(apt-mark showhold | sort | paste -sd, -)"
ctr --namespace k8s.io images check | tail -n +2 | while read -r ref _ _ status _; do
    line=$(ctr --namespace k8s.io images check "name==${ref}" | tail -n 1)
    case "${line}" in
    *" complete ("*) complete=yes ;;
    *) complete=no ;;
    esac
    r image "${ref}" "${complete}" "$(echo "${line}" | awk '{print $NF}')"
done
for u in containerd kubelet; do r enabled "$u" "$(systemctl is-enabled "$u")"; done
r active containerd "$(systemctl is-active containerd)"
for u in ssh.service keepalived.service haproxy.service apt-daily.timer; do r enabled "$u" "$(systemctl is-enabled "$u" 2>/dev/null)"; done
for u in haimg-watch.service haimg-refresh.timer haimg-reconcile.timer; do
    r unitfile "$u" "$(test -f "/etc/systemd/system/$u" && echo present || echo absent)"
done
for s in net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables; do r sysctl "$s" "$(sysctl -n "$s")"; done
r swap "$(swapon --show --noheadings | wc -l)"
# The stages before this one (the final stage runs this report) all succeeded.
for u in cloud-init-local cloud-init cloud-config; do r stage "$u" "$(systemctl show -p Result --value "$u.service")"; done
r sshd "$(test -e /usr/sbin/sshd && echo present || echo absent)"
r listen22 "$(ss -ltnH 'sport = :22' | wc -l)"
r manifest "$(sha256sum /etc/haimg/image-manifest.json | cut -d' ' -f1)"
r haimg "$(/usr/local/bin/haimg --version)"
/usr/local/bin/haimg node preflight >/run/preflight.log 2>&1
r preflight "$?" "$(tail -n 1 /run/preflight.log)"
r root "$(findmnt -no SOURCE /)"
# The node's own user-data, as cloud-init received it, and its agent's bootstrap.
r userdata "$(sha256sum /var/lib/cloud/instance/user-data.txt | cut -d' ' -f1)"
r agent-preflight "$(grep -c 'preflight passed' /var/log/cloud-init-output.log)"
r hostname "$(hostname)"
r final "$(systemctl is-active cloud-final.service)"
r done
"#;

/// The user-data under test: exactly what `haimg render` prints for the lab's first
/// master, with static credentials (the boot has no network, so no Parameter Store).
fn node_user_data(dir: &Path) -> String {
    let text = std::fs::read_to_string(repo().join("examples/lab.yaml")).unwrap();
    let spec = dir.join("lab.yaml");
    std::fs::write(
        &spec,
        format!("{text}  credentials:\n    source: static\n    file: lab-credentials.yaml\n"),
    )
    .unwrap();
    let mut c = haimg();
    c.args(["render", "--role", "master", "--node", "m1", "-c"])
        .arg(&spec);
    let o = run(c);
    assert!(o.status.success(), "render: {}", stderr(&o));
    stdout(&o)
}

/// The test's own cloud-init part (vendor-data: the user-data stays as rendered): at boot
/// it installs the report and a watcher that runs it once the agent's own bootstrap, from
/// the user-data's runcmd, says its preflight passed; then the machine powers off. The
/// watcher gives up after 15 minutes, and the report then says so.
fn vendor_data() -> String {
    let mut s = String::from(
        "#cloud-config\nbootcmd:\n  - - sh\n    - -c\n    - |\n      cat >/usr/local/lib/haimg-boot-report <<'HAIMG_REPORT'\n",
    );
    for l in REPORT.lines() {
        s.push_str("      ");
        s.push_str(l);
        s.push('\n');
    }
    s.push_str("      HAIMG_REPORT\n      chmod 0755 /usr/local/lib/haimg-boot-report\n");
    s.push_str("      systemd-run --unit=haimg-boot-report --no-block /bin/sh -c 'i=0; until grep -q \"preflight passed\" /var/log/cloud-init-output.log 2>/dev/null || [ $i -ge 900 ]; do i=$((i+1)); sleep 1; done; /usr/local/lib/haimg-boot-report >/dev/ttyS0 2>&1; systemctl --no-block poweroff'\n");
    s
}

#[test]
fn debian_12_bakes_locally_offline_and_boots_as_the_recipe_says() {
    let store = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let o = run(bake(store.path(), "debian-12", &["--output", "json"]));
    let cold = t.elapsed();
    assert!(o.status.success(), "bake: {}", stderr(&o));
    let err = stderr(&o);
    for i in 1..=12 {
        assert!(
            err.contains(&format!("==> [{i}/12] ")),
            "progress of step {i}:\n{err}"
        );
    }
    let out: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(out["cached"], false);
    let image = PathBuf::from(out["image"].as_str().unwrap());
    let manifest_path = PathBuf::from(out["manifest"].as_str().unwrap());
    assert_eq!(
        image.parent(),
        manifest_path.parent(),
        "the manifest is beside the disk"
    );
    assert!(image.starts_with(store.path()) && image.ends_with("disk.qcow2"));
    let entries: Vec<_> = std::fs::read_dir(store.path()).unwrap().flatten().collect();
    assert_eq!(entries.len(), 1, "one entry, no work directory left");

    // The manifest says what the recipe pins.
    let recipe = haimg::recipe::load_from(Some("debian-12"), Some(&kube_artifacts()))
        .unwrap()
        .recipe;
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    assert_eq!(m["recipeSha256"], out["recipeHash"]);
    let mut pins: BTreeMap<String, String> = recipe.packages.clone();
    for d in &recipe.kubernetes_packages {
        pins.insert(d.package.clone(), d.version.clone());
    }
    for (p, v) in &pins {
        assert_eq!(m["packages"][p], v.as_str(), "{p} in the manifest");
    }
    let held: Vec<&str> = m["heldPackages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for p in [
        "kubeadm",
        "kubelet",
        "kubectl",
        "containerd",
        "runc",
        "keepalived",
        "haproxy",
    ] {
        assert!(held.contains(&p), "{p} held: {held:?}");
    }
    let images: BTreeMap<&str, &serde_json::Value> = m["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["image"].as_str().unwrap(), i))
        .collect();
    for a in &recipe.images {
        assert_eq!(
            images[a.name.as_str()]["archiveSha256"],
            a.sha256.as_str(),
            "{}",
            a.name
        );
    }
    assert!(
        !images.contains_key("registry.k8s.io/etcd:3.5.12-0"),
        "kubeadm's own etcd tag is replaced by the imported one: {images:?}"
    );

    // A second bake of the same inputs is a cache hit.
    let t = Instant::now();
    let o = run(bake(store.path(), "debian-12", &["--output", "json"]));
    let warm = t.elapsed();
    assert!(o.status.success(), "{}", stderr(&o));
    let again: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(again["cached"], true);
    assert_eq!(again["image"], out["image"]);
    assert!(warm < Duration::from_secs(2), "a cache hit took {warm:?}");

    // Boot it: its own bootloader, no network, a NoCloud seed with a report.
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("boot.qcow2");
    // A copy-on-write overlay: the image in the store stays as baked.
    let o = run({
        let mut c = Command::new(require_tool("qemu-img"));
        c.args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&image)
            .arg(&disk);
        c
    });
    assert!(o.status.success(), "{}", stderr(&o));
    let node_user_data = node_user_data(work.path());
    let seed = common::qemu::nocloud_seed(
        work.path(),
        &node_user_data,
        "instance-id: haimg-boot-test\nlocal-hostname: m1\n",
        &vendor_data(),
    );
    let b = common::qemu::boot(&disk, Some(&seed), work.path(), Duration::from_secs(900));
    let facts: Vec<Vec<String>> = b
        .console
        .lines()
        .filter_map(|l| l.split("HAIMG-R ").nth(1))
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    let fact = |k: &[&str]| -> String {
        facts
            .iter()
            .find(|f| f.len() > k.len() && f[..k.len()].iter().zip(k).all(|(a, b)| a == b))
            .map(|f| f[k.len()..].join(" "))
            .unwrap_or_else(|| panic!("no report of {k:?}:\n{}", b.console))
    };
    assert!(
        facts.iter().any(|f| f == &["done"]),
        "the report ran to its end:\n{}",
        b.console
    );
    assert_eq!(fact(&["cgroup"]), "cgroup2fs");
    assert_eq!(fact(&["root"]), "/dev/vda2");
    let id = fact(&["machine-id"]);
    assert!(id.len() == 32, "a machine id of its own: {id}");
    for (p, v) in &pins {
        assert_eq!(fact(&["pkg", p]), *v, "{p} installed");
    }
    let held = fact(&["held"]);
    for p in [
        "kubeadm",
        "kubelet",
        "kubectl",
        "containerd",
        "keepalived",
        "haproxy",
    ] {
        assert!(held.split(',').any(|h| h == p), "{p} held: {held}");
    }
    for a in &recipe.images {
        assert_eq!(
            fact(&["image", a.name.as_str()]),
            "yes true",
            "{} present, complete and unpacked",
            a.name
        );
    }
    assert_eq!(fact(&["enabled", "containerd"]), "enabled");
    assert_eq!(fact(&["enabled", "kubelet"]), "enabled");
    assert_eq!(fact(&["active", "containerd"]), "active");
    for u in [
        "ssh.service",
        "keepalived.service",
        "haproxy.service",
        "apt-daily.timer",
    ] {
        assert_eq!(fact(&["enabled", u]), "masked", "{u}");
    }
    for u in [
        "haimg-watch.service",
        "haimg-refresh.timer",
        "haimg-reconcile.timer",
    ] {
        assert_eq!(fact(&["unitfile", u]), "present", "{u}");
    }
    assert_eq!(fact(&["sysctl", "net.ipv4.ip_forward"]), "1");
    assert_eq!(fact(&["sysctl", "net.bridge.bridge-nf-call-iptables"]), "1");
    for stage in ["cloud-init-local", "cloud-init", "cloud-config"] {
        assert_eq!(
            fact(&["stage", stage]),
            "success",
            "cloud-init's {stage} stage"
        );
    }
    assert_eq!(fact(&["swap"]), "0");
    assert_eq!(fact(&["sshd"]), "absent");
    assert_eq!(fact(&["listen22"]), "0");
    assert_eq!(fact(&["manifest"]), sha256_file(&manifest_path));
    assert_eq!(
        fact(&["haimg"]),
        format!("haimg {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(
        fact(&["preflight"]).starts_with("0 "),
        "preflight: {}",
        fact(&["preflight"])
    );
    // The boot tier: the node's own user-data went through cloud-init unchanged, and the
    // agent's bootstrap, started by it in the final stage, passed its preflight on this
    // kernel (cgroup v2, as the cluster tier cannot show).
    use sha2::Digest;
    let sent: String = sha2::Sha256::digest(node_user_data.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        fact(&["userdata"]),
        sent,
        "cloud-init has the rendered user-data"
    );
    assert_eq!(
        fact(&["agent-preflight"]),
        "1",
        "the agent's preflight passed:\n{}",
        b.console
    );
    assert_eq!(fact(&["hostname"]), "m1");
    assert_eq!(
        fact(&["final"]),
        "activating",
        "the final stage runs the bootstrap"
    );
    eprintln!(
        "local bake: cold {:.1} s ({}), cache hit {:.2} s, image {} MiB; boot to cloud-init's final stage and power-off {:.1} s under TCG",
        cold.as_secs_f64(),
        out["seconds"],
        warm.as_secs_f64(),
        out["size"].as_u64().unwrap() >> 20,
        b.elapsed.as_secs_f64()
    );
}

#[test]
fn a_failing_script_shows_its_step_and_tail_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let recipe = recipe_file(dir.path(), |t| {
        t.replace("haproxy: 2.6.12-1+deb12u4", "haproxy: 9.9.9-1")
    });
    let o = run(bake(&store, recipe.to_str().unwrap(), &[]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("failed (exit status: 1) in step [3/12] pinned packages"),
        "{err}"
    );
    assert!(err.contains("the last lines of its log"), "{err}");
    assert!(
        err.contains("haproxy 9.9.9-1 is not available from the configured sources (available: "),
        "{err}"
    );
    assert_nothing_left(&store);
}

#[test]
fn ctrl_c_sigterm_and_timeout_stop_the_bake_and_remove_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // Ctrl-C and SIGTERM once the script runs (packages installing).
    for (sig, name) in [(libc::SIGINT, "Ctrl-C"), (libc::SIGTERM, "SIGTERM")] {
        let mut c = bake(&store, "debian-12", &["--force"]);
        let mut child = c
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = String::new();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        for l in lines.by_ref() {
            let l = l.unwrap();
            err.push_str(&l);
            err.push('\n');
            if l.contains("==> [3/12]") {
                break;
            }
        }
        assert!(err.contains("==> [3/12]"), "the script ran: {err}");
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(child.id() as i32, sig);
        }
        for l in lines {
            err.push_str(&l.unwrap());
            err.push('\n');
        }
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(&format!("interrupted ({name})")), "{err}");
        assert_nothing_left(&store);
    }

    // --timeout: the same, by the clock.
    let o = run(bake(&store, "debian-12", &["--force", "--timeout", "8s"]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("timed out: the local bake took longer than --timeout 8s"),
        "{}",
        stderr(&o)
    );
    assert_nothing_left(&store);
}

#[test]
fn bad_recipes_and_missing_tools_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // An archive whose digest differs: exit 2, the field named.
    let recipe = recipe_file(dir.path(), |t| {
        t.replace(
            "sha256: a56ae7239ba686fe1afed97220ba0ce146567ebdcc6646d0698540b59b177c1d",
            &format!("sha256: {}", "ab".repeat(32)),
        )
    });
    let o = run(bake(&store, recipe.to_str().unwrap(), &[]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("spec.images[4].sha256") && err.contains("pause.tar has sha256 a56ae723"),
        "{err}"
    );
    // A missing tool (qemu-img, mmdebstrap): exit 1, each named, nothing made.
    let o = run({
        let mut c = bake(&store, "debian-12", &[]);
        c.env("PATH", dir.path());
        c
    });
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("mmdebstrap") && err.contains("`qemu-img` is not installed"),
        "{err}"
    );
    assert!(!store.exists() || std::fs::read_dir(&store).unwrap().next().is_none());
    // An Ubuntu recipe is refused for a local bake, plainly.
    let o = run(bake(&store, "ubuntu-20.04", &[]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("local images are made of Debian 12"),
        "{}",
        stderr(&o)
    );
}

/// An air-gapped site's mirror: a local directory (`file:///…`) signed with the site's own
/// key. scripts/local-mirror.sh freezes exactly what the recipe installs into one; the bake
/// makes its base from it and the chroot's apt reads it through a read-only bind mount.
#[test]
fn a_local_directory_mirror_with_its_own_key_bakes_the_recipe() {
    let sources = kube_artifacts();
    let (recipe, out) = frozen_mirror(&sources);
    let key = out.join("key.gpg");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mirror = format!(
        "  aptMirror:\n    url: file://{}\n    key: {}\n    sha256: {}\n",
        out.join("mirror").display(),
        key.display(),
        sha256_file(&key)
    );
    let file = recipe_file(dir.path(), |t| {
        let start = t.find("  aptMirror:\n").unwrap();
        let end = t.find("  packages:\n").unwrap();
        format!("{}{mirror}{}", &t[..start], &t[end..])
    });
    let file = file.to_str().unwrap();

    // The dry run reads the mirror's state from the directory, checked with the site's key.
    let o = run(bake(&store, file, &["--dry-run"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = stdout(&o);
    assert!(plan.contains("bookworm: InRelease sha256 "), "{plan}");
    assert!(!plan.contains("bookworm-security"), "{plan}");

    let o = run(bake(&store, file, &["--output", "json"]));
    assert!(o.status.success(), "bake: {}", stderr(&o));
    let done: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(done["manifest"].as_str().unwrap()).unwrap())
            .unwrap();
    for (p, v) in &recipe.packages {
        assert_eq!(m["packages"][p], v.as_str(), "{p} from the local mirror");
    }
    let log = std::fs::read_to_string(
        Path::new(done["image"].as_str().unwrap()).with_file_name("provision.log"),
    )
    .unwrap();
    assert!(
        !log.contains("deb.debian.org"),
        "the chroot's apt read only the local mirror:\n{log}"
    );
    // Nothing of the bake is mounted or running: only its entry is in the store.
    let entries: Vec<_> = std::fs::read_dir(&store).unwrap().flatten().collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(out.to_str().unwrap()), "{mounts}");
}
