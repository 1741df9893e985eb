//! The recipe file as written, and the rules that turn it into a [`Recipe`].

use std::collections::BTreeMap;

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecipeFile {
    pub api_version: String,
    pub kind: String,
    pub metadata: MetadataFile,
    pub spec: SpecFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataFile {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpecFile {
    /// The AMI of an `--target aws` bake; a recipe without one bakes only locally.
    #[serde(default)]
    pub base: Option<BaseFile>,
    /// `ubuntu-20.04`, `ubuntu-22.04` or `debian-12`. Default: the `ubuntu` release.
    #[serde(default)]
    pub os: Option<String>,
    /// Default: the release Canonical's `ssmParameter` path names, else 20.04.
    #[serde(default)]
    pub ubuntu: Option<String>,
    pub architecture: String,
    pub kubernetes_version: String,
    #[serde(default)]
    pub kubernetes_package_revision: Option<String>,
    /// Default: [`PKGS_K8S_IO_KEY_FINGERPRINT`].
    #[serde(default)]
    pub kubernetes_key_fingerprint: Option<String>,
    pub packages: BTreeMap<String, String>,
    /// Local `.deb` files of kubeadm, kubelet, kubectl (and cri-tools, kubernetes-cni).
    #[serde(default)]
    pub kubernetes_packages: Vec<LocalFile>,
    #[serde(default)]
    pub apt_snapshot: Option<String>,
    #[serde(default)]
    pub apt_mirror: Option<AptMirrorFile>,
    pub cni: CniFile,
    #[serde(default)]
    pub extra_images: Vec<String>,
    /// Image archives imported instead of pulled.
    #[serde(default)]
    pub images: Vec<ImageArchiveFile>,
    /// Registry host → mirrors tried first, in order (an ECR pull-through cache, a private
    /// registry): anonymous Docker Hub pulls are limited per address.
    #[serde(default)]
    pub registry_mirrors: BTreeMap<String, Vec<String>>,
    pub hardening: HardeningFile,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BaseFile {
    pub ami: Option<String>,
    pub ssm_parameter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CniFile {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub manifest_url: Option<String>,
    #[serde(default)]
    pub manifest_sha256: Option<String>,
    /// The manifest as a local file instead of a download.
    #[serde(default)]
    pub manifest: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptMirrorFile {
    pub url: String,
    /// Debian only: the security archive's mirror.
    #[serde(default, rename = "securityUrl")]
    pub security_url: Option<String>,
    pub key: String,
    pub sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalFile {
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageArchiveFile {
    pub name: String,
    pub archive: String,
    pub sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardeningFile {
    pub ssh: String,
}

/// The OpenPGP fingerprint of the pkgs.k8s.io repository signing key (the
/// `isv:kubernetes` key that signs `core:/stable:/vX.Y/deb/Release`). Not checked from
/// this machine (no network to the archive): a wrong value fails the bake's key step.
pub const PKGS_K8S_IO_KEY_FINGERPRINT: &str = "DE15B14486CD377B9E876E1A234654DA9A296436";

const KUBERNETES_PACKAGES: &[&str] = &[
    "kubeadm",
    "kubelet",
    "kubectl",
    "kubernetes-cni",
    "cri-tools",
];

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A Debian version as apt takes it exactly: `[epoch:]upstream[-revision]`, no wildcards
/// or relations.
fn is_exact_debian_version(v: &str) -> bool {
    !v.is_empty()
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c))
}

/// A fully qualified image reference (`ctr` pulls and imports only those), or an error at
/// `at`. The first component names a registry when it has a '.' or a ':' or is `localhost`,
/// as the distribution reference grammar says.
fn qualified_image(cx: &mut Ctx, at: &str, img: &str) -> Option<ImageRef> {
    let r = cx.parse::<ImageRef>(at, img)?;
    if !r.as_str().contains('/')
        || !r
            .as_str()
            .split('/')
            .next()
            .is_some_and(|h| h.contains('.') || h.contains(':') || h == "localhost")
    {
        cx.error(at, format!("`{img}`: name the registry (docker.io/library/haproxy:2.8.14): containerd's `ctr` pulls fully qualified references only"));
    }
    Some(r)
}

/// A local file the recipe pins by digest: its path (relative to `dir`) when it exists
/// and has that digest, else an error at `at`/`field` or `at`/sha256.
fn checked_file(
    cx: &mut Ctx,
    at: &str,
    field: &str,
    files: Files,
    file: &str,
    sha256: &str,
) -> Option<(std::path::PathBuf, String)> {
    let sha = sha256.to_lowercase();
    if !is_hex(&sha, 64) {
        cx.error(
            &format!("{at}/sha256"),
            format!("`{sha256}` is not a sha256: 64 hex digits (sha256sum of the file)"),
        );
        return None;
    }
    let path = files.path(file);
    match files.sha256(file) {
        Err(e) => {
            cx.error(&format!("{at}/{field}"), format!("{}: {e}", path.display()));
            None
        }
        Ok(got) if got != sha => {
            cx.error(
                &format!("{at}/sha256"),
                format!("{} has sha256 {got}, the recipe pins {sha}", path.display()),
            );
            None
        }
        Ok(_) => Some((path, sha)),
    }
}

/// The Kubernetes packages from local `.deb` files: named `<package>_<version>_<arch>.deb`
/// as Debian names them, kubeadm, kubelet and kubectl at the recipe's version.
fn kubernetes_debs(
    cx: &mut Ctx,
    files: &[LocalFile],
    dir: Files,
    version: Option<String>,
    arch: Option<Arch>,
) -> Vec<DebFile> {
    let mut out: Vec<DebFile> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let at = format!("/spec/kubernetesPackages/{i}");
        let base = std::path::Path::new(&f.file)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let parts: Vec<&str> = base
            .strip_suffix(".deb")
            .map(|b| b.split('_').collect())
            .unwrap_or_default();
        let [package, deb_version, deb_arch] = parts[..] else {
            cx.error(&format!("{at}/file"), format!("`{}` is not named as a Debian package is: <package>_<version>_<architecture>.deb", f.file));
            continue;
        };
        if !KUBERNETES_PACKAGES.contains(&package) {
            cx.error(
                &format!("{at}/file"),
                format!(
                    "`{package}` is not a Kubernetes package ({}): pin the others under packages",
                    KUBERNETES_PACKAGES.join(", ")
                ),
            );
            continue;
        }
        if let Some(a) = arch {
            if deb_arch != a.as_str() && deb_arch != "all" {
                cx.error(
                    &format!("{at}/file"),
                    format!(
                        "`{}` is for {deb_arch}, the image is {}",
                        f.file,
                        a.as_str()
                    ),
                );
            }
        }
        if let Some(v) = &version {
            if ["kubeadm", "kubelet", "kubectl"].contains(&package) && deb_version != v {
                cx.error(&format!("{at}/file"), format!("`{}` is {package} {deb_version}; kubernetesVersion and kubernetesPackageRevision make it {v}", f.file));
            }
        }
        if seen.contains(&package) {
            cx.error(
                &format!("{at}/file"),
                format!("a second `{package}` package"),
            );
        }
        seen.push(package);
        if let Some((path, sha256)) = checked_file(cx, &at, "file", dir, &f.file, &f.sha256) {
            out.push(DebFile {
                package: package.to_string(),
                version: deb_version.to_string(),
                sha256,
                path,
            });
        }
    }
    if !files.is_empty() {
        for p in ["kubeadm", "kubelet", "kubectl"] {
            if !seen.contains(&p) {
                cx.error("/spec/kubernetesPackages", format!("`{p}` is missing: with local packages, pkgs.k8s.io is not used, so kubeadm, kubelet and kubectl all come from files"));
            }
        }
    }
    out
}

fn image_archives(
    cx: &mut Ctx,
    files: &[ImageArchiveFile],
    extra: &[String],
    dir: Files,
) -> Vec<ImageArchive> {
    let mut out: Vec<ImageArchive> = Vec::new();
    for (i, a) in files.iter().enumerate() {
        let at = format!("/spec/images/{i}");
        let Some(name) = qualified_image(cx, &format!("{at}/name"), &a.name) else {
            continue;
        };
        if out.iter().any(|o| o.name == name) || extra.contains(&a.name) {
            cx.error(&format!("{at}/name"), format!("`{}` is listed twice: an image is either pulled (extraImages) or imported from one archive", a.name));
        }
        if let Some((archive, sha256)) =
            checked_file(cx, &at, "archive", dir, &a.archive, &a.sha256)
        {
            out.push(ImageArchive {
                name,
                sha256,
                archive,
            });
        }
    }
    out
}

/// The pod network: Calico (downloaded by its release, or a local manifest) or kindnet (a
/// local manifest, for networks with no route to Calico's images).
fn cni(cx: &mut Ctx, cni: &CniFile, dir: Files) -> Option<Cni> {
    cni_version(cx, cni);
    if cni.manifest.is_some() && cni.manifest_url.is_some() {
        cx.error(
            "/spec/cni",
            "give manifest (a local file) or manifestUrl, not both",
        );
    }
    let manifest_data = match &cni.manifest {
        Some(file) => {
            let Some(sha) = &cni.manifest_sha256 else {
                cx.error(
                    "/spec/cni/manifestSha256",
                    "a local manifest is pinned by its sha256",
                );
                return None;
            };
            let (path, _) = checked_file(cx, "/spec/cni", "manifest", dir, file, sha)?;
            match dir.read(file) {
                Ok(d) => Some(d),
                Err(e) => {
                    cx.error("/spec/cni/manifest", format!("{}: {e}", path.display()));
                    return None;
                }
            }
        }
        None => None,
    };
    let manifest_url = match &cni.manifest {
        Some(_) => String::new(),
        None => cni.manifest_url.clone().unwrap_or_else(|| {
            format!(
                "https://raw.githubusercontent.com/projectcalico/calico/{}/manifests/calico.yaml",
                cni.version
            )
        }),
    };
    if cni.manifest.is_none()
        && (!manifest_url.starts_with("https://")
            || manifest_url.contains(|c: char| c.is_whitespace() || "'\"`$\\".contains(c)))
    {
        cx.error(
            "/spec/cni/manifestUrl",
            "must be an https:// URL without quotes, spaces or shell characters",
        );
    }
    match &cni.manifest_sha256 {
        Some(h) if !is_hex(h, 64) => cx.error("/spec/cni/manifestSha256", "must be 64 hex digits (sha256sum of the manifest)"),
        Some(_) => {}
        None => cx.warn("/spec/cni", "no manifestSha256: the bake cannot prove which CNI manifest it baked (the image manifest still records the hash it got)"),
    }
    Some(Cni {
        name: cni.name.clone(),
        version: cni.version.clone(),
        manifest_url,
        manifest_sha256: cni.manifest_sha256.clone().map(|h| h.to_lowercase()),
        manifest_data,
    })
}

/// The CNI's name and its version's form: a calico release, or kindnet's image tag (which
/// has no published manifest, so a local one is required).
fn cni_version(cx: &mut Ctx, cni: &CniFile) {
    let release_ok = |v: &str| {
        let parts: Vec<&str> = v.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    match cni.name.as_str() {
        "calico" => {
            if !cni.version.strip_prefix('v').is_some_and(release_ok) {
                cx.error(
                    "/spec/cni/version",
                    format!(
                        "`{}` is not a calico release: vMAJOR.MINOR.PATCH (e.g. v3.28.1)",
                        cni.version
                    ),
                );
            }
        }
        "kindnet" => {
            // kindnetd's image tag (v20240513-cd2ac642): letters, digits, '.', '-', '_'.
            let ok = !cni.version.is_empty()
                && cni.version.len() <= 128
                && cni
                    .version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !ok {
                cx.error(
                    "/spec/cni/version",
                    format!(
                        "`{}` is not an image tag (e.g. v20240513-cd2ac642)",
                        cni.version
                    ),
                );
            }
            if cni.manifest.is_none() {
                cx.error("/spec/cni/manifest", "kindnet has no published manifest to download: give the manifest as a local file (with manifestSha256)");
            }
        }
        other => {
            cx.error("/spec/cni/name", format!("`{other}` is not supported: calico (its IP autodetection is set so it never picks a VIP) or kindnet"));
        }
    }
}

/// The release: `os`, or the legacy `ubuntu`, or what Canonical's base parameter names.
fn release(cx: &mut Ctx, s: &SpecFile) -> Option<Os> {
    // The release Canonical's public parameter names (…/ubuntu/server/22.04/…), if any.
    let named = s
        .base
        .as_ref()
        .and_then(|b| b.ssm_parameter.as_deref())
        .and_then(|p| {
            ["20.04", "22.04"]
                .into_iter()
                .find(|r| p.contains(&format!("/{r}/")))
        });
    let ubuntu = |v: &str| match v {
        "20.04" => Some(Os::Focal),
        "22.04" => Some(Os::Jammy),
        _ => None,
    };
    let os = match (s.os.as_deref(), s.ubuntu.as_deref()) {
        (Some(_), Some(_)) => {
            cx.error(
                "/spec/ubuntu",
                "give `os` or `ubuntu`, not both (`ubuntu: \"22.04\"` is `os: ubuntu-22.04`)",
            );
            return None;
        }
        (Some(o), None) => match o {
            "ubuntu-20.04" => Os::Focal,
            "ubuntu-22.04" => Os::Jammy,
            "debian-12" => Os::Bookworm,
            other => {
                cx.error("/spec/os", format!("`{other}` is not a supported release (ubuntu-20.04, ubuntu-22.04, debian-12)"));
                return None;
            }
        },
        (None, given) => match ubuntu(given.or(named).unwrap_or("20.04")) {
            Some(os) => os,
            None => {
                cx.error(
                    "/spec/ubuntu",
                    format!(
                        "`{}` is not a supported Ubuntu release (20.04, 22.04)",
                        given.unwrap_or_default()
                    ),
                );
                return None;
            }
        },
    };
    if let Some(named) = named {
        if ubuntu(named) != Some(os) {
            let at = if s.os.is_some() {
                "/spec/os"
            } else {
                "/spec/ubuntu"
            };
            cx.error(
                at,
                format!(
                    "{}, but the base image parameter is for Ubuntu {named}",
                    os.pretty()
                ),
            );
        }
    }
    Some(os)
}

pub(super) fn resolve(cx: &mut Ctx, f: &RecipeFile, dir: Files) -> Option<Recipe> {
    let name = header(cx, f);
    let s = &f.spec;
    let base = base(cx, s);
    let os = release(cx, s);
    let architecture = architecture(cx, s);
    let (kubernetes_version, revision, fingerprint) = kubernetes(cx, s);
    packages(cx, s);
    let apt_mirror = apt(cx, s, os, dir);
    let cni = self::cni(cx, &s.cni, dir);
    let mut extra_images = Vec::new();
    for (i, img) in s.extra_images.iter().enumerate() {
        if let Some(r) = qualified_image(cx, &format!("/spec/extraImages/{i}"), img) {
            extra_images.push(r);
        }
    }
    let images = image_archives(cx, &s.images, &s.extra_images, dir);
    let kubernetes_packages = kubernetes_debs(
        cx,
        &s.kubernetes_packages,
        dir,
        kubernetes_version.map(|v| format!("{v}-{revision}")),
        architecture,
    );
    let registry_mirrors = registry_mirrors(cx, s);
    hardening(cx, s);
    Some(Recipe {
        name: name.clone(),
        base,
        os: os?,
        architecture: architecture?,
        kubernetes_version: kubernetes_version?,
        kubernetes_package_revision: revision,
        kubernetes_key_fingerprint: fingerprint,
        packages: s.packages.clone(),
        kubernetes_packages,
        apt_snapshot: s.apt_snapshot.clone(),
        apt_mirror,
        cni: cni?,
        extra_images,
        images,
        registry_mirrors,
        hardening: Hardening {
            ssh: s.hardening.ssh.clone(),
        },
    })
}

/// apiVersion, kind and the recipe's name (which names the AMI and a parameter path).
fn header<'a>(cx: &mut Ctx, f: &'a RecipeFile) -> &'a String {
    if f.api_version != crate::contract::API_VERSION {
        cx.error(
            "/apiVersion",
            format!(
                "`{}` is not supported: use {}",
                f.api_version,
                crate::contract::API_VERSION
            ),
        );
    }
    if f.kind != "ImageRecipe" {
        cx.error(
            "/kind",
            format!("`{}`: a recipe's kind is ImageRecipe", f.kind),
        );
    }
    let name = &f.metadata.name;
    let name_ok = (1..=48).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !name_ok {
        cx.error("/metadata/name", format!("`{name}` is not a recipe name: 1-48 lowercase letters, digits, '-' and '.', starting with a letter (it names the AMI and an SSM parameter path)"));
    }
    name
}

/// The base image: exactly one of an AMI id or an SSM parameter, or none (local only).
fn base(cx: &mut Ctx, s: &SpecFile) -> Option<Base> {
    match s.base.as_ref().map(|b| (&b.ami, &b.ssm_parameter)) {
        None => None,
        Some((Some(a), None)) => cx.parse::<AmiId>("/spec/base/ami", a).map(Base::Ami),
        Some((None, Some(p))) => cx
            .parse::<AmiParameter>("/spec/base/ssmParameter", p)
            .map(Base::SsmParameter),
        Some(_) => {
            cx.error("/spec/base", "give exactly one base image: `ami` (an id: reproducible, and `--dry-run` needs no AWS) or `ssmParameter` (e.g. Canonical's /aws/service/canonical/ubuntu/server/20.04/stable/current/amd64/hvm/ebs-gp2/ami-id)");
            None
        }
    }
}

fn architecture(cx: &mut Ctx, s: &SpecFile) -> Option<Arch> {
    match s.architecture.as_str() {
        "amd64" => Some(Arch::Amd64),
        "arm64" => Some(Arch::Arm64),
        other => {
            cx.error(
                "/spec/architecture",
                format!("`{other}` is not an architecture: amd64 or arm64"),
            );
            None
        }
    }
}

/// The Kubernetes version (supported, with its known issues), the packages' Debian
/// revision and the repository key's fingerprint.
fn kubernetes(cx: &mut Ctx, s: &SpecFile) -> (Option<KubernetesVersion>, String, String) {
    let kubernetes_version =
        cx.parse::<KubernetesVersion>("/spec/kubernetesVersion", &s.kubernetes_version);
    if let Some(v) = &kubernetes_version {
        if let Err(e) = crate::kubernetes::check_supported(v) {
            cx.error("/spec/kubernetesVersion", e);
        }
        if let Some(w) = crate::kubernetes::known_issues(v) {
            cx.warn("/spec/kubernetesVersion", w);
        }
    }
    let revision = s
        .kubernetes_package_revision
        .clone()
        .unwrap_or_else(|| "1.1".into());
    if !is_exact_debian_version(&revision) || revision.contains(':') || revision.contains('-') {
        cx.error(
            "/spec/kubernetesPackageRevision",
            format!("`{revision}` is not a Debian revision (e.g. 1.1: kubeadm 1.30.4-1.1)"),
        );
    }
    let fingerprint: String = s
        .kubernetes_key_fingerprint
        .as_deref()
        .unwrap_or(PKGS_K8S_IO_KEY_FINGERPRINT)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_uppercase();
    if !is_hex(&fingerprint, 40) {
        cx.error("/spec/kubernetesKeyFingerprint", "must be the 40-hex-digit OpenPGP fingerprint of the pkgs.k8s.io signing key: the bake refuses a repository key that does not match it");
    }
    (kubernetes_version, revision, fingerprint)
}

/// The pinned packages: every required one, exact versions, none that kubernetesVersion pins.
fn packages(cx: &mut Ctx, s: &SpecFile) {
    for p in REQUIRED_PACKAGES {
        if !s.packages.contains_key(*p) {
            cx.error("/spec/packages", format!("`{p}` is missing: containerd, keepalived and haproxy are pinned to exact versions"));
        }
    }
    for (pkg, version) in &s.packages {
        let at = format!("/spec/packages/{}", crate::yaml::escape(pkg));
        if KUBERNETES_PACKAGES.contains(&pkg.as_str()) {
            cx.error(&at, format!("`{pkg}` is pinned by kubernetesVersion (and kubernetesPackageRevision): remove it here"));
        } else if !(pkg.len() >= 2
            && pkg.starts_with(|c: char| c.is_ascii_alphanumeric())
            && pkg
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c)))
        {
            cx.error(&at, format!("`{pkg}` is not a Debian package name"));
        } else if !is_exact_debian_version(version) {
            cx.error(&at, format!("`{version}` is not an exact package version: give the full Debian version (e.g. 1.7.12-0ubuntu2~20.04.1), no wildcards or ranges"));
        }
    }
}

/// The apt source: a snapshot (Ubuntu) or a mirror with its key, never both.
fn apt(cx: &mut Ctx, s: &SpecFile, os: Option<Os>, dir: Files) -> Option<AptMirror> {
    if s.apt_snapshot.is_some() && os.is_some_and(|o| o.id() != "ubuntu") {
        cx.error("/spec/aptSnapshot", "snapshot.ubuntu.com serves Ubuntu only: for Debian, point aptMirror at a mirror frozen at the versions you pin");
    }
    if let Some(ts) = &s.apt_snapshot {
        let b = ts.as_bytes();
        let ok = b.len() == 16
            && b[8] == b'T'
            && b[15] == b'Z'
            && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
            && ts[..4] >= *"2023";
        if !ok {
            cx.error("/spec/aptSnapshot", format!("`{ts}` is not an Ubuntu snapshot timestamp: YYYYMMDDTHHMMSSZ, from 2023 on (e.g. 20241101T000000Z)"));
        }
    } else if s.apt_mirror.is_none() {
        cx.warn("/spec", "no aptSnapshot: the pinned versions are taken from the live archive, where superseded versions disappear; pin aptSnapshot for bakes that can be repeated");
    }
    s.apt_mirror.as_ref().and_then(|m| {
        if s.apt_snapshot.is_some() {
            cx.error("/spec/aptMirror", "give aptSnapshot or aptMirror, not both: a mirror is what it serves (mirror the snapshot to pin versions)");
        }
        let scheme_ok = m.url.starts_with("https://")
            || m.url.starts_with("http://")
            || m.url.starts_with("file:///");
        let url_ok = scheme_ok
            && m.url.len() > "https://".len()
            && !m.url.contains(|c: char| c.is_whitespace() || "'\"`$\\<>#;[]".contains(c));
        if let Some(sec) = &m.security_url {
            let ok = (sec.starts_with("https://") || sec.starts_with("http://") || sec.starts_with("file:///"))
                && !sec.contains(|c: char| c.is_whitespace() || "'\"`$\\<>#;[]".contains(c));
            if !ok {
                cx.error("/spec/aptMirror/securityUrl", format!("`{sec}`: an http://, https:// or file:/// URL without quotes, spaces or shell characters"));
            }
            if os.is_some_and(|o| o.id() != "debian") {
                cx.error("/spec/aptMirror/securityUrl", "Debian only: an Ubuntu mirror serves the security pocket itself");
            }
        }
        if !url_ok {
            cx.error("/spec/aptMirror/url", format!("`{}`: an http://, https:// or file:/// (a local directory) URL without quotes, spaces or shell characters (apt checks the signatures, so http is safe)", m.url));
        }
        if !(m.key.ends_with(".asc") || m.key.ends_with(".gpg")) {
            cx.error("/spec/aptMirror/key", format!("`{}`: the key file is ASCII-armored (.asc) or binary (.gpg), and named so (apt tells them apart by the name)", m.key));
        }
        let (key, key_sha256) = checked_file(cx, "/spec/aptMirror", "key", dir, &m.key, &m.sha256)?;
        let key_data = match dir.read(&m.key) {
            Ok(d) => d,
            Err(e) => {
                cx.error("/spec/aptMirror/key", format!("{}: {e}", key.display()));
                return None;
            }
        };
        Some(AptMirror {
            url: m.url.clone(),
            key_sha256,
            key,
            key_data,
            security_url: m.security_url.as_ref().map(|u| u.trim_end_matches('/').to_string()),
        })
    })
}

/// containerd's registry mirrors: real host names, https:// mirrors only.
fn registry_mirrors(cx: &mut Ctx, s: &SpecFile) -> BTreeMap<String, Vec<String>> {
    let mut registry_mirrors = BTreeMap::new();
    for (host, mirrors) in &s.registry_mirrors {
        let at = format!("/spec/registryMirrors/{}", crate::yaml::escape(host));
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
            && (host.contains('.') || host.contains(':') || host == "localhost");
        if !host_ok {
            cx.error(
                &at,
                format!("`{host}`: a registry host name (docker.io, registry.k8s.io, quay.io)"),
            );
            continue;
        }
        if mirrors.is_empty() {
            cx.error(&at, "list at least one mirror, or leave the registry out");
        }
        for (i, m) in mirrors.iter().enumerate() {
            let ok = m.starts_with("https://")
                && m.len() > "https://".len()
                && !m.contains(|c: char| c.is_whitespace() || "'\"`$\\<>".contains(c));
            if !ok {
                cx.error(&format!("{at}/{i}"), format!("`{m}`: an https:// URL without quotes, spaces or shell characters (containerd's hosts.toml `server`)"));
            }
        }
        registry_mirrors.insert(host.clone(), mirrors.clone());
    }
    registry_mirrors
}

fn hardening(cx: &mut Ctx, s: &SpecFile) {
    if s.hardening.ssh != "disabled" {
        cx.error("/spec/hardening/ssh", format!("`{}`: haimg images have no SSH (the builder is driven by SSM Run Command and nodes by user-data); only `disabled` is accepted", s.hardening.ssh));
    }
}
