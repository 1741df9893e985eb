//! Image recipes (DESIGN §5): what goes into a node image, pinned to exact versions.
//!
//! Loading mirrors the cluster spec: YAML with positions ([`crate::yaml`]), strict wire
//! types (`deny_unknown_fields`), then typed rules that report every problem at once with
//! file:line:col and field path (exit code 2).

mod wire;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::contract::types::{AmiId, AmiParameter, ImageRef, KubernetesVersion};
use crate::error::{Diagnostic, Diagnostics, Error};
use crate::spec::resolve::Ctx;

pub const DEFAULT_NAME: &str = "ubuntu-20.04";
/// Recipes shipped in the binary, by name (`haimg bake ubuntu-22.04` works air-gapped).
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        "ubuntu-20.04",
        include_str!("../../image-recipes/ubuntu-20.04.yaml"),
    ),
    (
        "ubuntu-22.04",
        include_str!("../../image-recipes/ubuntu-22.04.yaml"),
    ),
    (
        "debian-12",
        include_str!("../../image-recipes/debian-12.yaml"),
    ),
];

/// Files the embedded recipes name (public signing keys), by the path a recipe gives.
pub const EMBEDDED_FILES: &[(&str, &[u8])] = &[
    (
        "keys/debian-12-archive.gpg",
        include_bytes!("../../image-recipes/keys/debian-12-archive.gpg"),
    ),
    (
        "cni/kindnet.yaml",
        include_bytes!("../../image-recipes/cni/kindnet.yaml"),
    ),
];

/// A validated recipe. Field order is the canonical order hashed into the recipe hash.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recipe {
    pub name: String,
    /// The AMI an `--target aws` bake starts from; none for a recipe baked only locally.
    pub base: Option<Base>,
    pub os: Os,
    pub architecture: Arch,
    pub kubernetes_version: KubernetesVersion,
    /// The pkgs.k8s.io package revision: kubeadm `1.30.4-<revision>`.
    pub kubernetes_package_revision: String,
    /// OpenPGP fingerprint of the pkgs.k8s.io signing key (40 hex digits).
    pub kubernetes_key_fingerprint: String,
    /// Exact apt versions of containerd, keepalived, haproxy (and any more), held.
    pub packages: BTreeMap<String, String>,
    /// The Kubernetes packages as local `.deb` files instead of pkgs.k8s.io (a mirror's
    /// copies, or packages built in-house). Left out of the hash input when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kubernetes_packages: Vec<DebFile>,
    /// Ubuntu snapshot archive timestamp (`20240601T000000Z`): the whole package set as
    /// it was then.
    pub apt_snapshot: Option<String>,
    /// A mirror of the distribution's archive, with its signing key: apt uses it instead
    /// of the archive and security hosts. Left out of the hash input when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apt_mirror: Option<AptMirror>,
    pub cni: Cni,
    pub extra_images: Vec<ImageRef>,
    /// Images imported from archives instead of pulled (a bake with no registry in reach).
    /// Left out of the hash input when empty; each archive enters it by its digest.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageArchive>,
    /// Registry host → mirrors (https URLs) containerd tries first, in order, at bake time
    /// and on the node; the upstream registry stays the last resort. Left out of the hash
    /// input when empty, so recipes without mirrors keep their hashes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub registry_mirrors: BTreeMap<String, Vec<String>>,
    pub hardening: Hardening,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Base {
    Ami(AmiId),
    SsmParameter(AmiParameter),
}

/// The distribution release an image is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Os {
    #[serde(rename = "ubuntu-20.04")]
    Focal,
    #[serde(rename = "ubuntu-22.04")]
    Jammy,
    #[serde(rename = "debian-12")]
    Bookworm,
}

impl Os {
    pub fn codename(self) -> &'static str {
        match self {
            Os::Focal => "focal",
            Os::Jammy => "jammy",
            Os::Bookworm => "bookworm",
        }
    }
    /// `ubuntu` or `debian`: what `/etc/os-release` calls it (`ID`).
    pub fn id(self) -> &'static str {
        match self {
            Os::Focal | Os::Jammy => "ubuntu",
            Os::Bookworm => "debian",
        }
    }
    /// "Ubuntu 20.04", "Debian 12".
    pub fn pretty(self) -> &'static str {
        match self {
            Os::Focal => "Ubuntu 20.04",
            Os::Jammy => "Ubuntu 22.04",
            Os::Bookworm => "Debian 12",
        }
    }
    /// Ubuntu 20.04 boots cgroup v1; the others already boot v2.
    pub fn boots_cgroup_v1(self) -> bool {
        self == Os::Focal
    }
    /// The glibc the release ships (`ldd --version`): the newest symbol version a binary
    /// staged into its image may need.
    pub fn glibc(self) -> (u32, u32) {
        match self {
            Os::Focal => (2, 31),
            Os::Jammy => (2, 35),
            Os::Bookworm => (2, 36),
        }
    }
    /// The suites an image's apt sources name on its mirror (a base made from the mirror
    /// takes its packages from all of them).
    pub fn suites(self) -> Vec<String> {
        let c = self.codename();
        match self.id() {
            "ubuntu" => vec![c.into(), format!("{c}-updates"), format!("{c}-security")],
            _ => vec![c.into(), format!("{c}-updates")],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
    /// The EC2 architecture name.
    pub fn ec2(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cni {
    pub name: String,
    pub version: String,
    /// Where the bake downloads the manifest (empty with a local `manifest` file).
    pub manifest_url: String,
    pub manifest_sha256: Option<String>,
    /// The manifest from a local file (an air-gapped bake, or a CNI haimg does not
    /// download), read when the recipe loads: staged like the image archives, checked by
    /// `manifest_sha256`. Not hashed: the digest says what it is.
    #[serde(skip)]
    pub manifest_data: Option<Vec<u8>>,
}

impl Cni {
    /// Calico's manifest is patched at bake time (quay.io images, IP autodetection that
    /// never picks a VIP); other CNIs are baked as given.
    pub fn is_calico(&self) -> bool {
        self.name == "calico"
    }
}

/// An apt mirror and the public key its Release files are signed with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AptMirror {
    pub url: String,
    /// sha256 of the key file (ASCII-armored `.asc` or binary `.gpg`).
    pub key_sha256: String,
    /// The key file on this machine (or in the binary, for an embedded recipe); its
    /// content is read when the recipe loads. Not hashed: the digest says what it is.
    #[serde(skip)]
    pub key: PathBuf,
    #[serde(skip)]
    pub key_data: Vec<u8>,
    /// Debian's security archive mirror (`bookworm-security`), signed by the same keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_url: Option<String>,
}

impl AptMirror {
    /// `gpg` for a binary keyring, `asc` for an ASCII-armored key (apt tells them apart
    /// by the name).
    pub fn key_ext(&self) -> &'static str {
        if self.key.extension().is_some_and(|e| e == "gpg") {
            "gpg"
        } else {
            "asc"
        }
    }
    /// A local directory mirror (`file:///srv/mirror`), as opposed to an http(s) one.
    pub fn local_dir(&self) -> Option<&Path> {
        self.url.strip_prefix("file://").map(Path::new)
    }
    /// The (url, suite) pairs a Debian image's apt takes its packages from: the release and
    /// its updates from the mirror, its security updates from the security mirror.
    pub fn sources(&self, os: Os) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = os
            .suites()
            .into_iter()
            .map(|s| (self.url.clone(), s))
            .collect();
        if let Some(sec) = &self.security_url {
            out.push((sec.clone(), format!("{}-security", os.codename())));
        }
        out
    }
}

/// A local Debian package: what its file name says it is, and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DebFile {
    pub package: String,
    pub version: String,
    pub sha256: String,
    /// Where the file is on this machine. Not hashed: the digest says what it is.
    #[serde(skip)]
    pub path: PathBuf,
}

/// An image archive (an OCI image layout or a `docker save` tar) and the image it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageArchive {
    pub name: ImageRef,
    /// sha256 of the archive file, lowercase hex: checked when the recipe loads, again on
    /// the builder before the import.
    pub sha256: String,
    /// Where the archive is on this machine (relative paths resolve against the recipe
    /// file's directory). Not hashed: the digest says what it is.
    #[serde(skip)]
    pub archive: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hardening {
    pub ssh: String,
}

/// The packages every recipe pins besides kubeadm, kubelet and kubectl.
pub const REQUIRED_PACKAGES: &[&str] = &["containerd", "keepalived", "haproxy"];

/// A loaded recipe and its warnings.
#[derive(Debug)]
pub struct Loaded {
    pub recipe: Recipe,
    pub warnings: Vec<Diagnostic>,
    pub source: String,
}

/// Where a recipe's relative file paths (archives, packages, keys, manifests) point: the
/// first of `dir` (`--sources`, or the recipe's directory), `also` (the recipe file's
/// directory when `--sources` is given) and, for an embedded recipe, [`EMBEDDED_FILES`].
#[derive(Debug, Clone, Copy)]
pub struct Files<'a> {
    pub dir: &'a Path,
    pub also: Option<&'a Path>,
    pub embedded: bool,
}

enum Located {
    Path(PathBuf),
    Bytes(&'static [u8]),
}

impl Files<'_> {
    fn locate(&self, file: &str) -> Located {
        let first = self.dir.join(file);
        if first.exists() {
            return Located::Path(first);
        }
        if let Some(p) = self.also.map(|a| a.join(file)).filter(|p| p.exists()) {
            return Located::Path(p);
        }
        if self.embedded {
            if let Some((_, b)) = EMBEDDED_FILES.iter().find(|(n, _)| *n == file) {
                return Located::Bytes(b);
            }
        }
        Located::Path(first)
    }
    /// Where `file` is, for messages and for reading.
    pub fn path(&self, file: &str) -> PathBuf {
        match self.locate(file) {
            // Displays as `<embedded image-recipes>/keys/…`, and keeps the extension.
            Located::Bytes(_) => Path::new("<embedded image-recipes>").join(file),
            Located::Path(p) => p,
        }
    }
    /// The sha256 of `file`.
    pub fn sha256(&self, file: &str) -> std::io::Result<String> {
        use sha2::Digest;
        match self.locate(file) {
            Located::Bytes(b) => Ok(hex::encode(sha2::Sha256::digest(b))),
            // Remembered across runs: a second bake of the same inputs is a cache hit in
            // well under a second, not a rehash of every archive.
            Located::Path(p) => crate::cache::file_sha256(&p),
        }
    }
    pub fn read(&self, file: &str) -> std::io::Result<Vec<u8>> {
        match self.locate(file) {
            Located::Bytes(b) => Ok(b.to_vec()),
            Located::Path(p) => std::fs::read(p),
        }
    }
}

/// `arg` is a path to a recipe file, or the name of an embedded recipe; `None` is the
/// default recipe. Relative file paths resolve against the recipe file's directory, or the
/// current directory for an embedded recipe.
pub fn load(arg: Option<&str>) -> Result<Loaded, Error> {
    load_from(arg, None)
}

/// [`load`], with relative file paths resolved against `sources` when it is given (the
/// directory of packages and image archives an embedded recipe such as `debian-12` names).
pub fn load_from(arg: Option<&str>, sources: Option<&Path>) -> Result<Loaded, Error> {
    let arg = arg.unwrap_or(DEFAULT_NAME);
    let path = Path::new(arg);
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Usage(format!("cannot read recipe {arg}: {e}")))?;
        let own = path.parent().unwrap_or(Path::new("."));
        let files = Files {
            dir: sources.unwrap_or(own),
            also: sources.map(|_| own),
            embedded: false,
        };
        return load_files(&text, arg, files);
    }
    let name = arg.trim_end_matches(".yaml");
    match EMBEDDED.iter().find(|(n, _)| *n == name) {
        Some((n, text)) => load_files(
            text,
            &format!("<embedded image-recipes/{n}.yaml>"),
            Files {
                dir: sources.unwrap_or(Path::new(".")),
                also: None,
                embedded: true,
            },
        ),
        None => Err(Error::Usage(format!(
            "recipe {arg}: no such file, and no embedded recipe of that name (embedded: {})",
            EMBEDDED
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A recipe from text; relative archive paths resolve against the current directory.
pub fn load_str(text: &str, source: &str) -> Result<Loaded, Error> {
    load_in(text, source, Path::new("."))
}

/// A recipe from text whose relative archive paths resolve against `dir`.
pub fn load_in(text: &str, source: &str, dir: &Path) -> Result<Loaded, Error> {
    load_files(
        text,
        source,
        Files {
            dir,
            also: None,
            embedded: false,
        },
    )
}

fn load_files(text: &str, source: &str, files: Files) -> Result<Loaded, Error> {
    let doc = crate::yaml::parse(text).map_err(|e| {
        Error::Invalid(Diagnostics(vec![Diagnostic {
            file: source.into(),
            pos: e.pos,
            path: String::new(),
            message: format!("invalid YAML: {}", e.message),
        }]))
    })?;
    let file: wire::RecipeFile = crate::yaml::from_document(&doc).map_err(|(pointer, msg)| {
        Error::Invalid(Diagnostics(vec![Diagnostic {
            file: source.into(),
            pos: doc.value_pos(&pointer),
            path: crate::yaml::dotted(&pointer),
            message: msg,
        }]))
    })?;
    let mut cx = Ctx::new(&doc, source);
    let recipe = wire::resolve(&mut cx, &file, files);
    match recipe {
        Some(recipe) if cx.errors.is_empty() => Ok(Loaded {
            recipe,
            warnings: cx.warnings,
            source: source.into(),
        }),
        _ => Err(Error::Invalid(Diagnostics(
            cx.errors.into_iter().map(|(_, d)| d).collect(),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DESIGN §5's example recipe, its `…` versions filled in: the contract's shape loads.
    #[test]
    fn the_design_example_recipe_loads() {
        let text = r#"apiVersion: haimg.dev/v1alpha1
kind: ImageRecipe
metadata:
  name: ubuntu-20.04-k8s
spec:
  base:
    ssmParameter: /aws/service/canonical/ubuntu/server/20.04/stable/current/amd64/hvm/ebs-gp2/ami-id
  architecture: amd64
  kubernetesVersion: 1.30.4
  packages:
    containerd: "1.7.12-0ubuntu2~20.04.1"
    keepalived: "1:2.0.19-2ubuntu0.2"
    haproxy: "2.0.33-0ubuntu0.1"
  cni: {name: calico, version: v3.28.1}
  extraImages: []
  hardening: {ssh: disabled}
"#;
        let r = load_str(text, "design.yaml").unwrap().recipe;
        assert_eq!(r.os, Os::Focal, "from the parameter path");
        assert_eq!(
            r.kubernetes_key_fingerprint,
            wire::PKGS_K8S_IO_KEY_FINGERPRINT
        );
        let jammy = text.replace("/20.04/", "/22.04/");
        assert_eq!(load_str(&jammy, "j.yaml").unwrap().recipe.os, Os::Jammy);
        let clash = text.replace(
            "  architecture: amd64",
            "  ubuntu: \"22.04\"\n  architecture: amd64",
        );
        let e = load_str(&clash, "c.yaml").unwrap_err().to_string();
        assert!(e.contains("spec.ubuntu"), "{e}");
    }

    #[test]
    fn image_archives_are_checked_by_digest_where_the_recipe_names_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pause.tar"), b"an archive").unwrap();
        let sha = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(b"an archive"))
        };
        let base = r#"apiVersion: haimg.dev/v1alpha1
kind: ImageRecipe
metadata:
  name: offline
spec:
  base:
    ami: ami-0123456789abcdef0
  architecture: amd64
  kubernetesVersion: 1.30.4
  aptSnapshot: 20241101T000000Z
  packages: {containerd: "1.7.12-0ubuntu2~20.04.1", keepalived: "1:2.0.19-2ubuntu0.2", haproxy: "2.0.33-0ubuntu0.1"}
  cni: {name: calico, version: v3.28.1, manifestSha256: 9a0e3e4e4b1c5f0a3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70819a2b}
  extraImages: [docker.io/library/haproxy:2.8.14]
  hardening: {ssh: disabled}
"#;
        let with = |images: &str| format!("{base}  images:\n{images}");
        let ok = with(&format!(
            "    - {{name: registry.k8s.io/pause:3.9, archive: pause.tar, sha256: {}}}\n",
            sha.to_uppercase()
        ));
        let r = load_in(&ok, "offline.yaml", dir.path()).unwrap().recipe;
        assert_eq!(r.images.len(), 1);
        assert_eq!(r.images[0].sha256, sha, "lowercased");
        assert_eq!(r.images[0].archive, dir.path().join("pause.tar"));
        // The digest is in the hash input; where the file is, is not.
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(&sha) && !json.contains("pause.tar"), "{json}");

        let err = |images: String| {
            load_in(&with(&images), "offline.yaml", dir.path())
                .unwrap_err()
                .to_string()
        };
        let e = err(format!(
            "    - {{name: registry.k8s.io/pause:3.9, archive: pause.tar, sha256: {}}}\n",
            "a".repeat(64)
        ));
        assert!(
            e.contains("offline.yaml:16:")
                && e.contains("spec.images[0].sha256")
                && e.contains(&format!(
                    "has sha256 {sha}, the recipe pins {}",
                    "a".repeat(64)
                )),
            "{e}"
        );
        let e = err(format!(
            "    - {{name: registry.k8s.io/pause:3.9, archive: missing.tar, sha256: {sha}}}\n"
        ));
        assert!(
            e.contains("spec.images[0].archive") && e.contains("missing.tar"),
            "{e}"
        );
        let e = err(format!(
            "    - {{name: docker.io/library/haproxy:2.8.14, archive: pause.tar, sha256: {sha}}}\n"
        ));
        assert!(e.contains("listed twice"), "{e}");
        let e = err(format!(
            "    - {{name: pause:3.9, archive: pause.tar, sha256: {sha}}}\n"
        ));
        assert!(e.contains("name the registry"), "{e}");
        // `library/` is a path, not a registry (`localhost/` is one: debian-12 uses it).
        let e = err(format!(
            "    - {{name: library/pause:3.9, archive: pause.tar, sha256: {sha}}}\n"
        ));
        assert!(e.contains("name the registry"), "{e}");
        let e = err(
            "    - {name: registry.k8s.io/pause:3.9, archive: pause.tar, sha256: abc}\n".into(),
        );
        assert!(e.contains("is not a sha256"), "{e}");
    }

    #[test]
    fn local_kubernetes_packages_must_be_the_recipes_versions_and_all_three() {
        let dir = tempfile::tempdir().unwrap();
        let sha = |p: &str| {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(
                std::fs::read(dir.path().join(p)).unwrap(),
            ))
        };
        for f in [
            "kubeadm_1.30.4-1.1_amd64.deb",
            "kubelet_1.30.4-1.1_amd64.deb",
            "kubectl_1.30.4-1.1_amd64.deb",
            "kubectl_1.30.3-1.1_amd64.deb",
            "kubelet_1.30.4-1.1_arm64.deb",
            "etcd_3.5.0_amd64.deb",
        ] {
            std::fs::write(dir.path().join(f), f).unwrap();
        }
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("image-recipes/ubuntu-20.04.yaml"),
        )
        .unwrap();
        let with = |files: &[&str]| {
            let mut y = String::from("  kubernetesPackages:\n");
            for f in files {
                y.push_str(&format!("    - {{file: {f}, sha256: {}}}\n", sha(f)));
            }
            let t = text.replace("  hardening:", &format!("{y}  hardening:"));
            load_in(&t, "offline.yaml", dir.path())
        };
        let ok = with(&[
            "kubeadm_1.30.4-1.1_amd64.deb",
            "kubelet_1.30.4-1.1_amd64.deb",
            "kubectl_1.30.4-1.1_amd64.deb",
        ])
        .unwrap()
        .recipe;
        let got: Vec<(&str, &str)> = ok
            .kubernetes_packages
            .iter()
            .map(|d| (d.package.as_str(), d.version.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("kubeadm", "1.30.4-1.1"),
                ("kubelet", "1.30.4-1.1"),
                ("kubectl", "1.30.4-1.1")
            ]
        );
        let err = |files: &[&str]| with(files).unwrap_err().to_string();
        let e = err(&[
            "kubeadm_1.30.4-1.1_amd64.deb",
            "kubelet_1.30.4-1.1_amd64.deb",
            "kubectl_1.30.3-1.1_amd64.deb",
        ]);
        assert!(e.contains("is kubectl 1.30.3-1.1; kubernetesVersion and kubernetesPackageRevision make it 1.30.4-1.1"), "{e}");
        let e = err(&[
            "kubeadm_1.30.4-1.1_amd64.deb",
            "kubectl_1.30.4-1.1_amd64.deb",
        ]);
        assert!(e.contains("`kubelet` is missing"), "{e}");
        let e = err(&[
            "kubeadm_1.30.4-1.1_amd64.deb",
            "kubelet_1.30.4-1.1_arm64.deb",
            "kubectl_1.30.4-1.1_amd64.deb",
        ]);
        assert!(e.contains("is for arm64, the image is amd64"), "{e}");
        let e = err(&[
            "etcd_3.5.0_amd64.deb",
            "kubeadm_1.30.4-1.1_amd64.deb",
            "kubelet_1.30.4-1.1_amd64.deb",
            "kubectl_1.30.4-1.1_amd64.deb",
        ]);
        assert!(e.contains("`etcd` is not a Kubernetes package"), "{e}");
    }
}
