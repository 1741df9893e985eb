//! `haimg bake`: content-addressed, no-SSH AMI builds (DESIGN §5, §8).
//!
//! [`plan`] is pure: from a recipe, the resolved base AMI and the haimg binary's digest to
//! the provisioning script, the recipe hash, the AMI name, the tags and the steps. Only
//! [`flow`] talks to AWS, and only [`cmd`] to the user.

pub mod binary;
pub mod cmd;
pub mod disk;
pub mod flow;
pub mod local;

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::recipe::Recipe;
use crate::render::templates::Templates;

pub const SCRIPT_TEMPLATE: &str = "image-recipes/provision.sh.tera";

/// The systemd units the image carries (enabled by user-data, per role).
pub const UNITS: &[(&str, &str)] = &[
    (
        "haimg-watch.service",
        include_str!("../../systemd/haimg-watch.service"),
    ),
    (
        "haimg-refresh.service",
        include_str!("../../systemd/haimg-refresh.service"),
    ),
    (
        "haimg-refresh.timer",
        include_str!("../../systemd/haimg-refresh.timer"),
    ),
    (
        "haimg-reconcile.service",
        include_str!("../../systemd/haimg-reconcile.service"),
    ),
    (
        "haimg-reconcile.timer",
        include_str!("../../systemd/haimg-reconcile.timer"),
    ),
];

/// What a bake will do, before it does anything.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub recipe: String,
    pub recipe_hash: String,
    pub base_image: String,
    pub ami_name: String,
    pub tags: BTreeMap<String, String>,
    pub steps: Vec<String>,
    pub script: String,
    /// Image archives to stage for the builder, in the script's IMPORTED_IMAGES order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub archives: Vec<crate::recipe::ImageArchive>,
    /// Local Kubernetes packages to stage, in the script's LOCAL_DEBS order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub debs: Vec<crate::recipe::DebFile>,
    /// The apt mirror whose key is staged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apt_mirror: Option<crate::recipe::AptMirror>,
    /// The CNI manifest to stage, when the recipe gives it as a file.
    #[serde(skip)]
    pub cni_manifest: Option<Vec<u8>>,
}

impl Plan {
    /// `haimg-<recipe>-<first 12 hex of the hash>`.
    pub fn short_hash(&self) -> &str {
        &self.recipe_hash[..12]
    }
    /// The SSM parameters the bake publishes.
    pub fn parameters(&self) -> [String; 2] {
        [
            format!("/haimg/images/{}/latest", self.recipe),
            format!("/haimg/images/{}/{}", self.recipe, self.recipe_hash),
        ]
    }
}

/// The provisioning script's run-time inputs (its environment): where the bake staged each
/// file it needs. Not part of the recipe hash: the script pins every file's digest. The URLs
/// may be presigned (credentials until they expire): never printed.
pub struct Inputs {
    pub binary_url: String,
    pub log_url: Option<String>,
    /// One per image archive, in the plan's order.
    pub archive_urls: Vec<String>,
    /// One per local Kubernetes package, in the plan's order.
    pub deb_urls: Vec<String>,
    pub apt_key_url: Option<String>,
    pub cni_manifest_url: Option<String>,
    pub recipe_sha256: String,
}

impl Inputs {
    /// `NAME=value` pairs, in a fixed order (lists are newline-separated).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("HAIMG_BINARY_URL", self.binary_url.clone())];
        if let Some(u) = &self.log_url {
            out.push(("HAIMG_LOG_URL", u.clone()));
        }
        if let Some(u) = &self.apt_key_url {
            out.push(("HAIMG_APT_KEY_URL", u.clone()));
        }
        if let Some(u) = &self.cni_manifest_url {
            out.push(("HAIMG_CNI_MANIFEST_URL", u.clone()));
        }
        for (var, urls) in [
            ("HAIMG_IMAGE_ARCHIVE_URLS", &self.archive_urls),
            ("HAIMG_DEB_URLS", &self.deb_urls),
        ] {
            if !urls.is_empty() {
                out.push((var, urls.join("\n")));
            }
        }
        out.push(("HAIMG_RECIPE_SHA256", self.recipe_sha256.clone()));
        out
    }
}

#[derive(Serialize)]
struct Unit {
    name: &'static str,
    content: &'static str,
}

/// Where the provisioning script runs: the one script's differences between platforms are
/// these values, rendered in (never a second script).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// A booted builder instance (the AMI path): it may load modules, apply sysctls,
    /// restart services.
    Instance,
    /// The image's root filesystem in a chroot (the local path): nothing may touch this
    /// machine's kernel, and no service manager runs.
    Chroot,
    /// A plain node installing everything at its first boot, from its user-data (what the
    /// seeds do by hand; `bake --plain`, for comparison only): a running system, started
    /// by cloud-init (so never waiting on it), loading only the modules its kernel lacks,
    /// and never cleaned as an image is.
    Boot,
}

#[derive(Serialize)]
struct ScriptCtx<'a> {
    description: String,
    chroot: bool,
    boot: bool,
    /// `Ubuntu` or `Debian`.
    os_family: &'static str,
    /// `url suite` of each Debian apt source (empty without a mirror).
    debian_sources: Vec<String>,
    calico: bool,
    kindnet: bool,
    cni_staged: bool,
    recipe: &'a str,
    haimg_version: &'static str,
    haimg_sha256: &'a str,
    codename: &'static str,
    arch: &'static str,
    kubernetes_version: String,
    kubernetes_minor: String,
    key_fingerprint: &'a str,
    cni_url: &'a str,
    cni_sha256: &'a str,
    apt_snapshot: &'a str,
    /// The apt mirror (empty: none), its key's sha256 and the key file's extension.
    apt_mirror_url: &'a str,
    apt_key_sha256: &'a str,
    apt_key_ext: &'a str,
    step_count: usize,
    pins: Vec<String>,
    extra_images: Vec<&'a str>,
    imported: Vec<Imported<'a>>,
    /// Local Kubernetes packages (in the order of HAIMG_DEB_URLS), and the pins apt takes
    /// from its repositories (all of them without local packages).
    local_debs: Vec<&'a crate::recipe::DebFile>,
    repo_pins: Vec<String>,
    /// `{"name": "sha256", …}` of the imported images, for the image manifest.
    imported_json: String,
    units: Vec<Unit>,
    cgroup_v2: bool,
    registry_hosts: Vec<RegistryHosts>,
}

/// An image the builder imports from an archive (in the order of HAIMG_IMAGE_ARCHIVE_URLS).
#[derive(Serialize)]
struct Imported<'a> {
    name: &'a str,
    sha256: &'a str,
}

/// One `/etc/containerd/certs.d/<host>/hosts.toml`.
#[derive(Serialize)]
struct RegistryHosts {
    host: String,
    content: String,
}

/// containerd's `hosts.toml` for `host`: the mirrors first, in order, then the registry
/// itself (Docker Hub's API lives at registry-1.docker.io).
pub fn hosts_toml(host: &str, mirrors: &[String]) -> String {
    let upstream = if host == "docker.io" {
        "https://registry-1.docker.io".to_string()
    } else {
        format!("https://{host}")
    };
    let mut out = format!(
        "# haimg: pulls from {host} try these mirrors first, in order, then {upstream}.\nserver = \"{upstream}\"\n"
    );
    for m in mirrors {
        out.push_str(&format!(
            "\n[host.\"{m}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ));
    }
    out
}

/// The steps the script announces, in order (its `step` calls).
pub fn steps(recipe: &Recipe) -> Vec<String> {
    steps_on(recipe, Platform::Instance)
}

/// The steps on `platform`: a node installing at boot cleans up, it is not imaged.
pub fn steps_on(recipe: &Recipe, platform: Platform) -> Vec<String> {
    let mut s = vec![
        "apt sources",
        if recipe.kubernetes_packages.is_empty() {
            "kubernetes apt repository"
        } else {
            "kubernetes packages from staged files"
        },
        "pinned packages",
        "kernel modules and sysctls",
        "swap off",
    ];
    if recipe.os.boots_cgroup_v1() {
        s.push("cgroup v2 on the kernel command line");
    }
    s.extend([
        "containerd",
        "pre-pull images",
        "haimg and its systemd units",
        "hardening: no SSH, no package changes at run time",
        "image manifest",
        "verify",
        if platform == Platform::Boot {
            "clean up"
        } else {
            "clean for imaging"
        },
    ]);
    s.into_iter().map(String::from).collect()
}

/// Every `name=version` apt installs, Kubernetes first.
pub fn pins(recipe: &Recipe) -> Vec<String> {
    let k = format!(
        "{}-{}",
        recipe.kubernetes_version, recipe.kubernetes_package_revision
    );
    let mut out: Vec<String> = ["kubeadm", "kubelet", "kubectl"]
        .iter()
        .map(|p| format!("{p}={k}"))
        .collect();
    out.extend(recipe.packages.iter().map(|(p, v)| format!("{p}={v}")));
    out
}

/// Renders the AMI builder's provisioning script for a recipe and a haimg binary digest.
pub fn script(recipe: &Recipe, haimg_sha256: &str, t: &Templates) -> Result<String> {
    script_for(recipe, Platform::Instance, haimg_sha256, t)
}

/// Renders the provisioning script for `platform`.
pub fn script_for(
    recipe: &Recipe,
    platform: Platform,
    haimg_sha256: &str,
    t: &Templates,
) -> Result<String> {
    if platform == Platform::Boot && recipe.os.boots_cgroup_v1() {
        return Err(crate::error::Error::Usage(format!(
            "recipe {}: {} boots cgroup v1, and a node installing at boot cannot reboot into cgroup v2",
            recipe.name,
            recipe.os.codename()
        )));
    }
    let v = recipe.kubernetes_version;
    let steps = steps_on(recipe, platform);
    let os_family = match recipe.os.id() {
        "ubuntu" => "Ubuntu",
        _ => "Debian",
    };
    let ctx = ScriptCtx {
        description: format!(
            "haimg {} provisioning script: recipe {}, Kubernetes {v}, {os_family} {}{}",
            env!("CARGO_PKG_VERSION"),
            recipe.name,
            recipe.os.codename(),
            match platform {
                Platform::Instance => "",
                Platform::Chroot => ", local image (chroot)",
                Platform::Boot => ", installed at boot (plain base)",
            }
        ),
        chroot: platform == Platform::Chroot,
        boot: platform == Platform::Boot,
        os_family,
        debian_sources: recipe.apt_mirror.as_ref().map_or(vec![], |m| {
            m.sources(recipe.os)
                .into_iter()
                .map(|(u, s)| format!("{u} {s}"))
                .collect()
        }),
        calico: recipe.cni.is_calico(),
        kindnet: recipe.cni.name == "kindnet",
        cni_staged: recipe.cni.manifest_data.is_some(),
        recipe: &recipe.name,
        haimg_version: env!("CARGO_PKG_VERSION"),
        haimg_sha256,
        codename: recipe.os.codename(),
        arch: recipe.architecture.as_str(),
        kubernetes_version: v.to_string(),
        kubernetes_minor: format!("v{}.{}", v.major, v.minor),
        key_fingerprint: &recipe.kubernetes_key_fingerprint,
        cni_url: &recipe.cni.manifest_url,
        cni_sha256: recipe.cni.manifest_sha256.as_deref().unwrap_or(""),
        apt_snapshot: recipe.apt_snapshot.as_deref().unwrap_or(""),
        apt_mirror_url: recipe.apt_mirror.as_ref().map_or("", |m| m.url.as_str()),
        apt_key_sha256: recipe
            .apt_mirror
            .as_ref()
            .map_or("", |m| m.key_sha256.as_str()),
        apt_key_ext: recipe.apt_mirror.as_ref().map_or("asc", |m| m.key_ext()),
        step_count: steps.len(),
        pins: pins(recipe),
        extra_images: recipe.extra_images.iter().map(|i| i.as_str()).collect(),
        local_debs: recipe.kubernetes_packages.iter().collect(),
        repo_pins: pins(recipe)
            .into_iter()
            .filter(|p| {
                !recipe
                    .kubernetes_packages
                    .iter()
                    .any(|d| p.split('=').next() == Some(d.package.as_str()))
            })
            .collect(),
        imported: recipe
            .images
            .iter()
            .map(|i| Imported {
                name: i.name.as_str(),
                sha256: &i.sha256,
            })
            .collect(),
        imported_json: serde_json::to_string(
            &recipe
                .images
                .iter()
                .map(|i| (i.name.as_str(), i.sha256.as_str()))
                .collect::<BTreeMap<_, _>>(),
        )
        .expect("plain data"),
        units: UNITS
            .iter()
            .map(|(name, content)| Unit { name, content })
            .collect(),
        cgroup_v2: recipe.os.boots_cgroup_v1(),
        registry_hosts: recipe
            .registry_mirrors
            .iter()
            .map(|(host, mirrors)| RegistryHosts {
                host: host.clone(),
                content: hosts_toml(host, mirrors),
            })
            .collect(),
    };
    t.render(SCRIPT_TEMPLATE, &ctx)
}

/// The recipe hash (DESIGN §5): sha256 over a canonical serialization of the resolved
/// recipe (with the resolved base AMI id), the rendered script and the haimg version.
pub fn recipe_hash(recipe: &Recipe, base_ami: &str, script: &str) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Canonical<'a> {
        format: &'static str,
        recipe: &'a Recipe,
        resolved_base_ami: &'a str,
        script_sha256: String,
        haimg_version: &'static str,
    }
    let c = Canonical {
        format: "haimg.dev/recipe-hash/v1",
        recipe,
        resolved_base_ami: base_ami,
        script_sha256: hex::encode(Sha256::digest(script.as_bytes())),
        haimg_version: env!("CARGO_PKG_VERSION"),
    };
    // Struct fields serialize in declaration order and maps are BTreeMaps: canonical.
    let bytes = serde_json::to_vec(&c).expect("plain data serializes");
    hex::encode(Sha256::digest(&bytes))
}

/// The plan for a recipe whose base AMI is `base_ami`, baking the haimg binary whose
/// sha256 is `haimg_sha256`.
pub fn plan(recipe: &Recipe, base_ami: &str, haimg_sha256: &str, t: &Templates) -> Result<Plan> {
    let script = script(recipe, haimg_sha256, t)?;
    let recipe_hash = recipe_hash(recipe, base_ami, &script);
    let mut tags = BTreeMap::from([
        (
            "Name".to_string(),
            format!("haimg-{}-{}", recipe.name, &recipe_hash[..12]),
        ),
        ("haimg:recipe".to_string(), recipe.name.clone()),
        ("haimg:recipe-sha256".to_string(), recipe_hash.clone()),
        (
            "haimg:kubernetes-version".to_string(),
            recipe.kubernetes_version.to_string(),
        ),
        (
            "haimg:version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        ("haimg:base-ami".to_string(), base_ami.to_string()),
        (
            "haimg:cni".to_string(),
            format!("{} {}", recipe.cni.name, recipe.cni.version),
        ),
    ]);
    for p in pins(recipe) {
        let (name, version) = p.split_once('=').expect("pins are name=version");
        // EC2 tag values allow letters, digits, spaces and _ . : / = + - @ (and ~ is not
        // guaranteed): keep the version readable.
        tags.insert(format!("haimg:pkg/{name}"), version.replace('~', "_"));
    }
    if let Some(s) = &recipe.apt_snapshot {
        tags.insert("haimg:apt-snapshot".into(), s.clone());
    }
    Ok(Plan {
        recipe: recipe.name.clone(),
        ami_name: format!("haimg-{}-{}", recipe.name, &recipe_hash[..12]),
        recipe_hash,
        base_image: base_ami.to_string(),
        tags,
        steps: steps(recipe),
        script,
        archives: recipe.images.clone(),
        debs: recipe.kubernetes_packages.clone(),
        apt_mirror: recipe.apt_mirror.clone(),
        cni_manifest: recipe.cni.manifest_data.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> Recipe {
        crate::recipe::load(None).unwrap().recipe
    }

    #[test]
    fn the_script_announces_exactly_the_planned_steps() {
        let r = recipe();
        let s = script(&r, &"a".repeat(64), &Templates::embedded()).unwrap();
        let announced: Vec<&str> = s
            .lines()
            .filter_map(|l| l.strip_prefix("step \""))
            .map(|l| l.trim_end_matches('"'))
            .collect();
        assert_eq!(announced.len(), steps(&r).len());
        for (a, p) in announced.iter().zip(steps(&r)) {
            assert!(a.starts_with(p.as_str()), "{a} vs {p}");
        }
    }

    #[test]
    fn the_hash_covers_recipe_base_script_and_binary() {
        let t = Templates::embedded();
        let r = recipe();
        let base = plan(&r, "ami-0123456789abcdef0", &"a".repeat(64), &t).unwrap();
        assert_eq!(
            base.recipe_hash,
            plan(&r, "ami-0123456789abcdef0", &"a".repeat(64), &t)
                .unwrap()
                .recipe_hash,
            "deterministic"
        );
        assert_ne!(
            base.recipe_hash,
            plan(&r, "ami-0123456789abcdef1", &"a".repeat(64), &t)
                .unwrap()
                .recipe_hash,
            "base AMI"
        );
        assert_ne!(
            base.recipe_hash,
            plan(&r, "ami-0123456789abcdef0", &"b".repeat(64), &t)
                .unwrap()
                .recipe_hash,
            "binary"
        );
        let mut r2 = r.clone();
        r2.packages
            .insert("haproxy".into(), "2.0.34-0ubuntu0.1".into());
        assert_ne!(
            base.recipe_hash,
            plan(&r2, "ami-0123456789abcdef0", &"a".repeat(64), &t)
                .unwrap()
                .recipe_hash,
            "a pin"
        );
        assert_eq!(
            base.ami_name,
            format!("haimg-ubuntu-20.04-k8s-{}", &base.recipe_hash[..12])
        );
    }
}
