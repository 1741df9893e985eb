//! A plain base in the lab (`haimg bake --plain`), for comparison with a baked image only:
//! the same cluster, each node installing containerd, Kubernetes, the images and haimg at
//! boot from the bake's stage and the recipe's local mirror, both bound read-only into the
//! node, as the seeds do by hand. The user-data is what `haimg render` prints with one
//! `runcmd` entry put first: the install (pure).

use std::io::Read;
use std::path::Path;

use crate::bake::local::cmd::PlainEntry;
use crate::bake::local::{PLAIN_INSTALL, STAGE_IN_ROOT};
use crate::error::{Error, Result};

/// The rendered user-data with the install first in its `runcmd` (cloud-init's final
/// stage runs the entries in order: the install, then haimg's own).
pub fn user_data(rendered: &[u8]) -> Result<Vec<u8>> {
    let text = if rendered.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        flate2::read::GzDecoder::new(rendered)
            .read_to_string(&mut s)
            .map_err(|e| Error::Runtime(format!("lab: the rendered user-data: gzip: {e}")))?;
        s
    } else {
        String::from_utf8(rendered.to_vec())
            .map_err(|e| Error::Runtime(format!("lab: the rendered user-data: {e}")))?
    };
    let at = text.find("\nruncmd:\n").ok_or_else(|| {
        Error::Runtime(
            "lab: the rendered user-data has no runcmd to put the install first in".into(),
        )
    })? + "\nruncmd:\n".len();
    // runcmd goes on after a failed entry: the failure is named where `lab up` looks.
    let install = format!(
        "/bin/sh {STAGE_IN_ROOT}/{PLAIN_INSTALL} || {{ echo 'haimg lab: error: the install at boot failed' >&2; exit 1; }}"
    );
    let entry = format!(
        "  # haimg lab, plain base (bake --plain): everything a baked image has, installed now.\n  - {}\n",
        serde_json::to_string(&["/bin/sh", "-c", install.as_str()]).expect("plain data")
    );
    Ok(format!("{}{entry}{}", &text[..at], &text[at..]).into_bytes())
}

/// What a node of a plain entry sees besides its root: the stage at [`STAGE_IN_ROOT`] and
/// a `file://` mirror at its own path, both read-only (`systemd-nspawn` arguments).
pub fn binds(p: &PlainEntry) -> Vec<String> {
    let mut out = vec![format!("--bind-ro={}:{STAGE_IN_ROOT}", p.stage.display())];
    if let Some(m) = &p.mirror {
        out.push(format!("--bind-ro={}:{}", m.display(), m.display()));
    }
    out
}

/// A plain entry's stage must hold its install script (what `bake --plain` wrote).
pub fn check(p: &PlainEntry, kubernetes_version: &str) -> Result<()> {
    let script = p.stage.join("provision.sh");
    let text = std::fs::read_to_string(&script).map_err(|e| {
        Error::Usage(format!(
            "--image: a plain entry without its install ({}: {e})",
            script.display()
        ))
    })?;
    if !p.stage.join(PLAIN_INSTALL).is_file() {
        return Err(Error::Usage(format!(
            "--image: a plain entry without {}",
            p.stage.join(PLAIN_INSTALL).display()
        )));
    }
    let want = format!("readonly KUBERNETES_VERSION='{kubernetes_version}'");
    if !text.lines().any(|l| l == want) {
        return Err(Error::Usage(format!(
            "--image: the plain entry installs another Kubernetes than the spec's {kubernetes_version}"
        )));
    }
    if let Some(m) = &p.mirror {
        if !m.is_dir() {
            return Err(Error::Usage(format!(
                "--image: the plain entry's mirror {} is gone",
                m.display()
            )));
        }
    }
    Ok(())
}

/// The entry `--image` names (a store entry, or a disk in one): its plain stage, if any.
pub fn entry_of(image: &Path) -> Option<PlainEntry> {
    let dir = if image.is_dir() {
        image
    } else {
        image.parent()?
    };
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(crate::bake::local::BAKE_RECORD)).ok()?)
            .ok()?;
    let plain = v.get("plain")?;
    Some(PlainEntry {
        // The entry's own stage, wherever the store is now.
        stage: dir.join(crate::bake::local::PLAIN_STAGE),
        mirror: plain["mirror"].as_str().map(Into::into),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENDERED: &str = "#cloud-config\nwrite_files: []\nruncmd:\n  # haimg's own\n  - [/usr/local/bin/haimg, node, bootstrap]\n";

    #[test]
    fn the_install_comes_first_and_the_rest_is_as_rendered() {
        let out = String::from_utf8(user_data(RENDERED.as_bytes()).unwrap()).unwrap();
        let first = out.find("/run/haimg-stage/install.sh").unwrap();
        assert!(first < out.find("node, bootstrap").unwrap());
        assert_eq!(
            out.lines()
                .filter(|l| !l.contains("plain base") && !l.contains("install.sh"))
                .collect::<Vec<_>>(),
            RENDERED.lines().collect::<Vec<_>>()
        );
        let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::default());
        std::io::Write::write_all(&mut gz, RENDERED.as_bytes()).unwrap();
        assert_eq!(user_data(&gz.finish().unwrap()).unwrap(), out.as_bytes());
        let e = user_data(b"#cloud-config\nwrite_files: []\n").unwrap_err();
        assert!(e.to_string().contains("no runcmd"), "{e}");
    }

    #[test]
    fn the_stage_and_the_mirror_are_bound_read_only() {
        let p = PlainEntry {
            stage: "/s/debian-12-k8s-plain-x/install".into(),
            mirror: Some("/m/mirror".into()),
        };
        assert_eq!(
            binds(&p),
            [
                "--bind-ro=/s/debian-12-k8s-plain-x/install:/run/haimg-stage",
                "--bind-ro=/m/mirror:/m/mirror"
            ]
        );
    }

    #[test]
    fn a_plain_entry_is_checked_against_the_spec() {
        let d = tempfile::tempdir().unwrap();
        let stage = d.path().join("install");
        std::fs::create_dir_all(&stage).unwrap();
        let p = PlainEntry {
            stage: stage.clone(),
            mirror: None,
        };
        assert!(check(&p, "1.30.0")
            .unwrap_err()
            .to_string()
            .contains("without its install"));
        std::fs::write(
            stage.join("provision.sh"),
            "readonly KUBERNETES_VERSION='1.30.0'\n",
        )
        .unwrap();
        assert!(check(&p, "1.30.0")
            .unwrap_err()
            .to_string()
            .contains("install.sh"));
        std::fs::write(stage.join("install.sh"), "").unwrap();
        check(&p, "1.30.0").unwrap();
        assert!(check(&p, "1.31.0")
            .unwrap_err()
            .to_string()
            .contains("another Kubernetes"));
        std::fs::write(
            d.path().join("bake.json"),
            r#"{"image": "/elsewhere/disk.qcow2", "plain": {"stage": "/elsewhere/install", "mirror": "/m"}}"#,
        )
        .unwrap();
        let e = entry_of(&d.path().join("disk.qcow2")).unwrap();
        assert_eq!(e.stage, stage);
        assert_eq!(e.mirror.as_deref(), Some(Path::new("/m")));
        std::fs::write(d.path().join("bake.json"), r#"{"image": "x"}"#).unwrap();
        assert!(entry_of(d.path()).is_none());
    }
}
