//! `haimg bake --target qemu`: a bootable disk image made on this machine, offline but for
//! the recipe's apt mirror (DESIGN §5's content addressing, without AWS).
//!
//! The base is made by mmdebstrap from the recipe's mirror; the same provisioning script as
//! the AMI path runs in it as a chroot ([`Platform::Chroot`]); the root is sealed and
//! assembled into a disk with its own bootloader ([`super::disk`]). This module is the pure
//! part: the base's identity, the plan, the store's layout. [`run`] runs processes.

pub mod cmd;
pub mod run;

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::Platform;
use crate::error::Result;
use crate::recipe::{Os, Recipe};
use crate::render::templates::Templates;

/// What the base has besides Debian's required packages: a kernel and what boots it,
/// systemd as init, cloud-init (NoCloud, EC2 and the others) and what it calls, and the
/// tools the provisioning script uses before it installs anything.
pub const BASE_PACKAGES: &[&str] = &[
    // minbase means Priority: required, and apt only by Debian's override file: a mirror
    // made with apt-ftparchive and no overrides (an air-gapped site's) labels apt
    // `important`, from its own control file. Named, it is in every base.
    "apt",
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "e2fsprogs",
    "linux-image-cloud-amd64",
    "cloud-init",
    "iproute2",
    "procps",
    "ca-certificates",
    "curl",
    "gnupg",
    "python3",
];

/// The kernel command line of a local image: the serial console last, so systemd and
/// cloud-init write to it (a headless hypervisor's only window).
pub const CMDLINE: &str = "console=tty0 console=ttyS0,115200";

/// Where the stage directory appears inside the chroot (a tmpfs `/run`, so none of it is
/// imaged), and inside a lab node installing a plain base at boot.
pub const STAGE_IN_ROOT: &str = "/run/haimg-stage";

/// In a plain entry (`bake --plain`): the stage a node installs from, and in it the script
/// its user-data runs (the inputs, then the provisioning script).
pub const PLAIN_STAGE: &str = "install";
pub const PLAIN_INSTALL: &str = "install.sh";

/// The mirror's state: one `InRelease` per suite, by its sha256. The same state serves the
/// same package versions, so it enters the recipe hash as the AMI id does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorState {
    pub url: String,
    /// (source `url suite`, sha256 of its signed InRelease).
    pub suites: Vec<(String, String)>,
}

/// What a local bake will do.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub recipe: String,
    pub recipe_hash: String,
    /// `<recipe>-<hash12>`: the store directory's name.
    pub image_name: String,
    /// The base's cache key: what mmdebstrap is given.
    pub base_key: String,
    pub mirror: MirrorState,
    pub steps: Vec<String>,
    /// `bake --plain`: the steps run at each node's boot, not in the image.
    pub plain: bool,
    #[serde(skip)]
    pub script: String,
    #[serde(skip)]
    pub inner: super::Plan,
}

/// Why the recipe cannot be baked locally, if it cannot (exit 2: the recipe is wrong).
pub fn refusal(recipe: &Recipe) -> Option<String> {
    if recipe.os != Os::Bookworm {
        return Some(format!(
            "recipe {} is {}: local images are made of Debian 12 (an Ubuntu base needs an Ubuntu mirror and mmdebstrap's Ubuntu support, not built yet)",
            recipe.name,
            recipe.os.pretty()
        ));
    }
    if recipe.apt_mirror.is_none() {
        return Some(format!(
            "recipe {}: a local bake makes its base from the recipe's apt mirror: give spec.aptMirror (url, key, sha256)",
            recipe.name
        ));
    }
    if recipe.architecture.as_str() != "amd64" {
        return Some(format!(
            "recipe {} is {}: local images are amd64 (the disk's loader and kernel are)",
            recipe.name,
            recipe.architecture.as_str()
        ));
    }
    None
}

/// The base's cache key: the release, the mirror's state and the package list.
pub fn base_key(recipe: &Recipe, mirror: &MirrorState) -> String {
    #[derive(Serialize)]
    struct Key<'a> {
        format: &'static str,
        os: Os,
        mirror: &'a MirrorState,
        packages: &'a [&'a str],
        variant: &'static str,
    }
    let k = Key {
        format: "haimg.dev/local-base/v1",
        os: recipe.os,
        mirror,
        packages: BASE_PACKAGES,
        variant: "minbase",
    };
    hex::encode(Sha256::digest(
        serde_json::to_vec(&k).expect("plain data serializes"),
    ))
}

/// The plan of a local bake: the chroot script, and a recipe hash over the recipe, the
/// mirror's state (in place of a base AMI), the script and the haimg version.
pub fn plan(
    recipe: &Recipe,
    mirror: MirrorState,
    haimg_sha256: &str,
    t: &Templates,
) -> Result<Plan> {
    plan_for(recipe, mirror, haimg_sha256, t, false)
}

/// The plan of a local bake, or with `plain` of `bake --plain`: the same base as a disk,
/// with nothing of the recipe installed, and beside it the script ([`Platform::Boot`]) and
/// files a node's user-data installs it all from at boot. For comparison with a baked
/// image only: its entry is named `<recipe>-plain-<hash12>`.
pub fn plan_for(
    recipe: &Recipe,
    mirror: MirrorState,
    haimg_sha256: &str,
    t: &Templates,
    plain: bool,
) -> Result<Plan> {
    let platform = if plain {
        Platform::Boot
    } else {
        Platform::Chroot
    };
    let script = super::script_for(recipe, platform, haimg_sha256, t)?;
    let base_key = base_key(recipe, &mirror);
    let base = format!("local:{base_key}");
    let recipe_hash = super::recipe_hash(recipe, &base, &script);
    let mut inner = super::plan(recipe, &base, haimg_sha256, t)?;
    inner.script = script.clone();
    inner.recipe_hash = recipe_hash.clone();
    let kind = if plain { "-plain" } else { "" };
    Ok(Plan {
        recipe: recipe.name.clone(),
        image_name: format!("{}{kind}-{}", recipe.name, &recipe_hash[..12]),
        recipe_hash,
        base_key,
        mirror,
        steps: super::steps_on(recipe, platform),
        plain,
        script,
        inner,
    })
}

/// The script a plain node's user-data runs (`bake --plain`): the provisioning script's
/// run-time inputs, at `file://` URLs of the stage the lab binds read-only at
/// [`STAGE_IN_ROOT`], then the script itself.
pub fn install_script(recipe: &str, env: &[(&str, String)]) -> String {
    let quote = |v: &str| format!("'{}'", v.replace('\'', "'\\''"));
    let mut s = format!(
        "#!/bin/sh\n# haimg {}: installs recipe {recipe} on a plain node at boot (haimg bake --plain),\n# from the stage bound at {STAGE_IN_ROOT}.\nset -eu\n",
        env!("CARGO_PKG_VERSION")
    );
    for (k, v) in env {
        s.push_str(&format!("export {k}={}\n", quote(v)));
    }
    s.push_str(&format!("exec /bin/bash {STAGE_IN_ROOT}/provision.sh\n"));
    s
}

/// The sources.list lines mmdebstrap makes the base from.
pub fn mirror_lines(sources: &[(String, String)]) -> Vec<String> {
    sources
        .iter()
        .map(|(u, s)| format!("deb {} {s} main", u.trim_end_matches('/')))
        .collect()
}

/// The local image store: `<root>/<recipe>-<hash12>/` holds one finished image.
#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

/// The file that marks a store entry complete (written last, before the rename).
pub const BAKE_RECORD: &str = "bake.json";
pub const MANIFEST: &str = "image-manifest.json";

impl Store {
    /// `dir`, or `$XDG_CACHE_HOME/haimg/images`, or `~/.cache/haimg/images`.
    pub fn at(dir: Option<&Path>) -> Result<Store> {
        let root = match dir {
            Some(d) => d.to_path_buf(),
            None => cache_dir()?.join("images"),
        };
        Ok(Store { root })
    }
    pub fn entry(&self, image_name: &str) -> PathBuf {
        self.root.join(image_name)
    }
    /// A finished image of that name, if the store has one.
    pub fn lookup(&self, image_name: &str) -> Option<PathBuf> {
        let e = self.entry(image_name);
        e.join(BAKE_RECORD).is_file().then_some(e)
    }
}

pub use crate::cache::dir as cache_dir;

/// The step a script's output was in when it stopped: the last `==> [i/N] …` line.
pub fn last_step(log: &str) -> Option<&str> {
    log.lines().rev().find(|l| l.starts_with("==> ["))
}

/// The last `n` lines of `log`.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror() -> MirrorState {
        MirrorState {
            url: "http://deb.debian.org/debian".into(),
            suites: vec![
                ("bookworm".into(), "a".repeat(64)),
                ("bookworm-updates".into(), "b".repeat(64)),
            ],
        }
    }

    #[test]
    fn the_mirror_state_and_the_platform_enter_the_hash() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("image-recipes/ubuntu-20.04.yaml"),
        )
        .unwrap();
        let r = crate::recipe::load_str(&text, "u.yaml").unwrap().recipe;
        let mut d = r.clone();
        d.os = Os::Bookworm;
        let t = Templates::embedded();
        let a = plan(&d, mirror(), &"a".repeat(64), &t).unwrap();
        assert_eq!(
            a.recipe_hash,
            plan(&d, mirror(), &"a".repeat(64), &t).unwrap().recipe_hash
        );
        let mut m = mirror();
        m.suites[1].1 = "c".repeat(64);
        let b = plan(&d, m, &"a".repeat(64), &t).unwrap();
        assert_ne!(a.recipe_hash, b.recipe_hash, "a new mirror state");
        assert_ne!(a.base_key, b.base_key);
        assert!(a.image_name.starts_with("ubuntu-20.04-k8s-"));
        assert_eq!(a.inner.recipe_hash, a.recipe_hash);
        assert!(a.script.contains("local image (chroot)"));
        assert!(!a.script.contains("\nsysctl --system") && !a.script.contains("\nswapoff -a"));
        assert!(!a.script.contains("cloud-init status --wait"));
        let ami = super::super::script(&d, &"a".repeat(64), &t).unwrap();
        assert!(ami.contains("\nsysctl --system") && ami.contains("\nswapoff -a"));
        assert_ne!(
            a.recipe_hash,
            super::super::recipe_hash(&d, &format!("local:{}", a.base_key), &ami),
            "the chroot script is not the AMI script"
        );
    }

    #[test]
    fn the_failing_step_and_the_tail_come_from_the_log() {
        let log = "==> [1/3] apt sources\nok\n==> [2/3] pinned packages\nE: no\nboom";
        assert_eq!(last_step(log), Some("==> [2/3] pinned packages"));
        assert_eq!(tail(log, 2), "E: no\nboom");
        assert_eq!(tail("x", 5), "x");
        assert_eq!(last_step("nothing"), None);
    }

    #[test]
    fn refusals_name_what_is_missing() {
        let r = crate::recipe::load(None).unwrap().recipe;
        assert!(refusal(&r).unwrap().contains("Ubuntu 20.04"));
        let mut d = r.clone();
        d.os = Os::Bookworm;
        assert!(refusal(&d).unwrap().contains("spec.aptMirror"));
    }
}
