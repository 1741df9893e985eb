//! `haimg bake --target qemu`: the steps of a local bake, its progress, its cache and its
//! cleanup on every path (failure, Ctrl-C, SIGTERM, `--timeout`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::run::{self, Children};
use super::{Plan, Store, BAKE_RECORD, MANIFEST, STAGE_IN_ROOT};
use crate::bake::cmd::{Args, Output};
use crate::error::{Error, Result};
use crate::recipe::{AptMirror, Recipe};
use crate::render::templates::Templates;

/// What a local bake reports (`--output json`), and what `bake.json` in the store holds.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub image: PathBuf,
    /// The image manifest (none for `--plain`: nothing is installed until a node boots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<PathBuf>,
    /// `--plain`: what a node installs from at boot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain: Option<PlainEntry>,
    pub recipe: String,
    pub recipe_hash: String,
    pub cached: bool,
    pub format: &'static str,
    /// Bytes of the image file.
    pub size: u64,
    pub kernel: String,
    /// Seconds per phase of the bake that made it.
    pub seconds: Phases,
}

/// What a plain entry's nodes install from: its stage (the script and every file it
/// fetches), and the recipe's `file://` mirror, which a node must see at the same path.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlainEntry {
    pub stage: PathBuf,
    pub mirror: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Phases {
    pub base: f64,
    pub provision: f64,
    pub seal_and_disk: f64,
    pub total: f64,
}

fn progress(msg: &str) {
    crate::progress::line("bake", msg);
}

/// The tools a local bake runs, each named when missing (before anything is made).
fn check_tools() -> Result<()> {
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .collect();
    let missing: Vec<&str> = ["mmdebstrap", "unshare", "chroot", "tar", "curl", "gpgv"]
        .into_iter()
        .filter(|t| !dirs.iter().any(|d| d.join(t).is_file()))
        .collect();
    let disk = crate::bake::disk::check_tools();
    if missing.is_empty() {
        return disk;
    }
    let mut msg = format!(
        "a local bake needs mmdebstrap, util-linux, coreutils, tar, curl and gpgv: not installed: {}",
        missing.join(", ")
    );
    if let Err(e) = disk {
        msg.push_str(&format!("; {e}"));
    }
    Err(Error::Runtime(msg))
}

pub fn run(
    args: &Args,
    recipe: &Recipe,
    binary: &Path,
    haimg_sha256: &str,
    t: &Templates,
) -> Result<()> {
    if let Some(why) = super::refusal(recipe) {
        return Err(Error::Usage(why));
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if !args.dry_run && unsafe { libc::geteuid() } != 0 {
        return Err(Error::Usage(
            "a local bake runs as root (mmdebstrap, mounts and a chroot in namespaces of its own)"
                .into(),
        ));
    }
    if !args.dry_run {
        check_tools()?;
    }
    let store = Store::at(args.store.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(format!("tokio: {e}")))?;
    let children = Children::default();
    let work = store
        .root
        .join(format!(".work-{}-{}", recipe.name, std::process::id()));
    let result = rt.block_on(async {
        let deadline = tokio::time::sleep(args.timeout);
        tokio::select! {
            r = bake(args, recipe, binary, haimg_sha256, t, &store, &work, &children) => r,
            sig = crate::signals::stop() => Err(Error::Runtime(format!("interrupted ({sig}): the bake is stopped and its files removed"))),
            _ = deadline => Err(Error::Timeout(format!("the local bake took longer than --timeout {}: stopped, its files removed", humantime::format_duration(args.timeout)))),
        }
    });
    // Every path: the processes first (their mounts go with their namespaces), then the
    // work directory.
    children.kill_all();
    drop(rt);
    if let Err(e) = run::remove_work(&work) {
        return Err(match result {
            Err(first) => Error::Runtime(format!("{first}\nand: {e}")),
            Ok(_) => e,
        });
    }
    let Some(outcome) = result? else {
        return Ok(());
    };
    let text = match args.output {
        Output::Json => serde_json::to_string(&outcome).expect("plain data") + "\n",
        Output::Text => format!("{}\n", outcome.image.display()),
    };
    crate::progress::finish();
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(Error::io("<stdout>"))
}

#[allow(clippy::too_many_arguments)]
async fn bake(
    args: &Args,
    recipe: &Recipe,
    binary: &Path,
    haimg_sha256: &str,
    t: &Templates,
    store: &Store,
    work: &Path,
    children: &Children,
) -> Result<Option<Outcome>> {
    let t0 = Instant::now();
    let mirror = recipe.apt_mirror.as_ref().expect("refusal() checked");
    tokio::fs::create_dir_all(work)
        .await
        .map_err(Error::io(work))?;
    let key = work.join(format!("mirror-key.{}", mirror.key_ext()));
    tokio::fs::write(&key, &mirror.key_data)
        .await
        .map_err(Error::io(&key))?;
    let sources = mirror.sources(recipe.os);
    let state = run::mirror_state(children, &sources, &key, work).await?;
    let plan = super::plan_for(recipe, state, haimg_sha256, t, args.plain)?;
    if args.dry_run {
        let text = match args.output {
            Output::Json => serde_json::to_string_pretty(&plan).expect("plain data") + "\n",
            Output::Text => dry_run_text(&plan, store),
        };
        std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .map_err(Error::io("<stdout>"))?;
        return Ok(None);
    }
    if !args.force {
        if let Some(entry) = store.lookup(&plan.image_name) {
            return cached(&entry).map(Some);
        }
    }
    progress(&format!(
        "baking {} locally (recipe hash {}){}",
        plan.image_name,
        plan.recipe_hash,
        if plan.plain {
            ": the base only, installed by each node at boot"
        } else {
            ""
        }
    ));

    let tar = base(recipe, &plan, &sources, &key, work, children).await?;
    let root = work.join("root");
    run::unpack(children, &tar, &root).await?;
    let base_s = t0.elapsed().as_secs_f64();

    let out_dir = work.join("out");
    tokio::fs::create_dir_all(&out_dir)
        .await
        .map_err(Error::io(&out_dir))?;
    let t1 = Instant::now();
    let plain = if plan.plain {
        Some(stage_plain(&plan, binary, &root, &out_dir, store, mirror).await?)
    } else {
        provision_root(&plan, binary, &root, work, mirror.local_dir(), children).await?;
        None
    };
    let provision_s = t1.elapsed().as_secs_f64();

    let t2 = Instant::now();
    let (name, format) = if args.raw {
        ("disk.raw", "raw")
    } else {
        ("disk.qcow2", "qcow2")
    };
    let disk_path = out_dir.join(name);
    let disk = seal_and_assemble(&root, &disk_path, work, args.raw, plain.is_none()).await?;
    let seal_s = t2.elapsed().as_secs_f64();

    let entry = store.entry(&plan.image_name);
    let size = std::fs::metadata(&disk_path)
        .map_err(Error::io(&disk_path))?
        .len();
    let outcome = Outcome {
        image: entry.join(name),
        manifest: plain.is_none().then(|| entry.join(MANIFEST)),
        plain,
        recipe: plan.recipe.clone(),
        recipe_hash: plan.recipe_hash.clone(),
        cached: false,
        format,
        size,
        kernel: disk.kernel,
        seconds: Phases {
            base: base_s,
            provision: provision_s,
            seal_and_disk: seal_s,
            total: t0.elapsed().as_secs_f64(),
        },
    };
    publish(&outcome, &out_dir, &entry, work).await?;
    progress(&format!(
        "done in {:.0} s: {} ({} MiB)",
        outcome.seconds.total,
        outcome.image.display(),
        size >> 20
    ));
    Ok(Some(outcome))
}

/// The plan's base root as a tar: cached by what makes it, outside the store (a fresh
/// store reuses it); one bake makes a base at a time, the others wait for it and reuse it.
async fn base(
    recipe: &Recipe,
    plan: &Plan,
    sources: &[(String, String)],
    key: &Path,
    work: &Path,
    children: &Children,
) -> Result<PathBuf> {
    let bases = super::cache_dir()?.join("bases");
    tokio::fs::create_dir_all(&bases)
        .await
        .map_err(Error::io(&bases))?;
    let tar = bases.join(format!(
        "{}-{}.tar",
        recipe.os.codename(),
        &plan.base_key[..16]
    ));
    let _lock = run::lock(&bases.join(".lock")).await?;
    if tar.is_file() {
        progress(&format!("base: cached {}", tar.display()));
        return Ok(tar);
    }
    let mirror = recipe.apt_mirror.as_ref().expect("refusal() checked");
    progress(&format!(
        "base: mmdebstrap {} from {} (about a minute)",
        recipe.os.codename(),
        mirror.url
    ));
    let part = work.join("base.tar");
    run::make_base(children, recipe.os, sources, key, &part, work).await?;
    tokio::fs::rename(&part, &tar)
        .await
        .or_else(|_| std::fs::copy(&part, &tar).map(drop))
        .map_err(Error::io(&tar))?;
    Ok(tar)
}

/// A plain base: nothing is installed now; the stage goes into the entry, for each node's
/// boot, and the root gets only what every boot needs.
async fn stage_plain(
    plan: &Plan,
    binary: &Path,
    root: &Path,
    out_dir: &Path,
    store: &Store,
    mirror: &AptMirror,
) -> Result<PlainEntry> {
    let stage = out_dir.join(super::PLAIN_STAGE);
    let inputs = stage_inputs(plan, binary, &stage).await?;
    for (name, text) in [
        ("provision.sh", plan.script.clone()),
        (
            super::PLAIN_INSTALL,
            super::install_script(&plan.recipe, &inputs.env()),
        ),
    ] {
        let p = stage.join(name);
        std::fs::write(&p, text).map_err(Error::io(&p))?;
    }
    run::clean_plain(root)?;
    Ok(PlainEntry {
        stage: store.entry(&plan.image_name).join(super::PLAIN_STAGE),
        mirror: mirror.local_dir().map(Path::to_path_buf),
    })
}

/// Seals the root and makes the disk `disk_path` from it, with the image's manifest beside
/// it when `manifest` (a baked image; a plain base has none).
async fn seal_and_assemble(
    root: &Path,
    disk_path: &Path,
    work: &Path,
    raw: bool,
    manifest: bool,
) -> Result<crate::bake::disk::Disk> {
    progress("sealing the root and assembling the disk");
    run::seal(root)?;
    if manifest {
        let manifest_src = root.join("etc/haimg/image-manifest.json");
        let to = disk_path.with_file_name(MANIFEST);
        tokio::fs::copy(&manifest_src, &to)
            .await
            .map_err(Error::io(&manifest_src))?;
    }
    let (r, d, w) = (
        root.to_path_buf(),
        disk_path.to_path_buf(),
        work.to_path_buf(),
    );
    // mkfs and qemu-img take seconds and cannot be cancelled halfway: the task is awaited
    // even when the bake is being stopped (its files are in the work directory).
    tokio::task::spawn_blocking(move || {
        crate::bake::disk::assemble(&r, &d, &w, super::CMDLINE, raw)
    })
    .await
    .map_err(|e| Error::Runtime(format!("assembling the disk: {e}")))?
}

/// Moves the finished bake into its store entry, whole: an entry is complete or absent.
async fn publish(outcome: &Outcome, out_dir: &Path, entry: &Path, work: &Path) -> Result<()> {
    let record = out_dir.join(BAKE_RECORD);
    std::fs::write(
        &record,
        serde_json::to_string_pretty(outcome).expect("plain data") + "\n",
    )
    .map_err(Error::io(&record))?;
    let log = work.join("provision.log");
    if log.is_file() {
        tokio::fs::copy(&log, out_dir.join("provision.log"))
            .await
            .map_err(Error::io(&log))?;
    }
    if entry.exists() {
        run::remove_work(entry)?;
    }
    std::fs::rename(out_dir, entry).map_err(Error::io(entry))?;
    Ok(())
}

/// The recipe's script in the chroot of `root`, with its stage at file:// URLs.
async fn provision_root(
    plan: &Plan,
    binary: &Path,
    root: &Path,
    work: &Path,
    local_mirror: Option<&Path>,
    children: &Children,
) -> Result<()> {
    // The stage: every file the script fetches, at file:// URLs inside the chroot.
    let stage = work.join("stage");
    let inputs = stage_inputs(plan, binary, &stage).await?;
    let script = stage.join("provision.sh");
    tokio::fs::write(&script, &plan.script)
        .await
        .map_err(Error::io(&script))?;
    let log = work.join("provision.log");
    let env = inputs.env();
    let show = |l: &str| progress(l);
    run::provision(children, root, &stage, local_mirror, &env, &log, &show)
        .await
        .map(drop)
}

/// A store entry's record, as a cache hit reports it.
fn cached(entry: &Path) -> Result<Outcome> {
    let record = entry.join(BAKE_RECORD);
    let text = std::fs::read_to_string(&record).map_err(Error::io(&record))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Runtime(format!("{}: {e}", record.display())))?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    progress(&format!(
        "cached: {} (use --force to bake again)",
        entry.display()
    ));
    // The files are the entry's own, wherever the store is now (a store may be moved).
    let here = |k: &str| {
        let recorded = PathBuf::from(s(k));
        recorded
            .file_name()
            .map_or(recorded.clone(), |name| entry.join(name))
    };
    Ok(Outcome {
        image: here("image"),
        manifest: v.get("manifest").map(|_| here("manifest")),
        plain: v.get("plain").map(|_| PlainEntry {
            stage: entry.join(super::PLAIN_STAGE),
            mirror: v["plain"]["mirror"].as_str().map(PathBuf::from),
        }),
        recipe: s("recipe"),
        recipe_hash: s("recipeHash"),
        cached: true,
        format: if s("format") == "raw" { "raw" } else { "qcow2" },
        size: v["size"].as_u64().unwrap_or_default(),
        kernel: s("kernel"),
        seconds: serde_json::from_value(v["seconds"].clone()).unwrap_or_default(),
    })
}

/// Copies (or links) every file the script fetches into `stage`, and the inputs that name
/// them as the chroot sees them.
async fn stage_inputs(plan: &Plan, binary: &Path, stage: &Path) -> Result<crate::bake::Inputs> {
    tokio::fs::create_dir_all(stage)
        .await
        .map_err(Error::io(stage))?;
    let url = |name: &str| format!("file://{STAGE_IN_ROOT}/{name}");
    let place = |src: &Path, name: &str| -> Result<String> {
        let dst = stage.join(name);
        if std::fs::hard_link(src, &dst).is_err() {
            std::fs::copy(src, &dst).map_err(Error::io(src))?;
        }
        Ok(url(name))
    };
    let write = |data: &[u8], name: &str| -> Result<String> {
        let dst = stage.join(name);
        std::fs::write(&dst, data).map_err(Error::io(&dst))?;
        Ok(url(name))
    };
    let p = &plan.inner;
    Ok(crate::bake::Inputs {
        binary_url: place(binary, "haimg")?,
        log_url: None,
        archive_urls: p
            .archives
            .iter()
            .enumerate()
            .map(|(i, a)| place(&a.archive, &format!("image-{i}.tar")))
            .collect::<Result<_>>()?,
        deb_urls: p
            .debs
            .iter()
            .map(|d| place(&d.path, &format!("{}_{}.deb", d.package, d.version)))
            .collect::<Result<_>>()?,
        apt_key_url: p
            .apt_mirror
            .as_ref()
            .map(|m| write(&m.key_data, &format!("mirror-key.{}", m.key_ext())))
            .transpose()?,
        cni_manifest_url: p
            .cni_manifest
            .as_ref()
            .map(|m| write(m, "cni-manifest.yaml"))
            .transpose()?,
        recipe_sha256: plan.recipe_hash.clone(),
    })
}

fn dry_run_text(plan: &Plan, store: &Store) -> String {
    let mut s = String::new();
    s.push_str("# haimg bake --target qemu plan (dry run): nothing was made\n");
    s.push_str(&format!("recipe:       {}\n", plan.recipe));
    s.push_str(&format!("recipe hash:  {}\n", plan.recipe_hash));
    s.push_str(&format!("mirror:       {}\n", plan.mirror.url));
    for (suite, sha) in &plan.mirror.suites {
        s.push_str(&format!("  {suite}: InRelease sha256 {sha}\n"));
    }
    s.push_str(&format!("base key:     {}\n", plan.base_key));
    s.push_str(&format!(
        "image:        {}\n",
        store.entry(&plan.image_name).display()
    ));
    s.push_str(if plan.plain {
        "bake: mirror state, base (mmdebstrap, cached), seal, disk (qcow2), stage for the nodes' boot, store\n"
    } else {
        "bake: mirror state, base (mmdebstrap, cached), stage, run script (chroot), seal, disk (qcow2), store\n"
    });
    s.push_str("script steps:\n");
    for (i, step) in plan.steps.iter().enumerate() {
        s.push_str(&format!("  {}. {step}\n", i + 1));
    }
    s.push_str("--- provisioning script ---\n");
    s.push_str(&plan.script);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_hit_names_the_entrys_own_files_even_in_a_moved_store() {
        let dir = tempfile::tempdir().unwrap();
        let entry = dir.path().join("debian-12-k8s-0123456789ab");
        std::fs::create_dir_all(&entry).unwrap();
        let record = serde_json::json!({
            "image": "/where/it/was/debian-12-k8s-0123456789ab/disk.qcow2",
            "manifest": "/where/it/was/debian-12-k8s-0123456789ab/image-manifest.json",
            "recipe": "debian-12",
            "format": "qcow2",
        });
        std::fs::write(entry.join(BAKE_RECORD), record.to_string()).unwrap();
        let o = cached(&entry).unwrap();
        assert_eq!(o.image, entry.join("disk.qcow2"));
        assert_eq!(o.manifest, Some(entry.join("image-manifest.json")));
        assert!(o.plain.is_none());
        assert!(o.cached);
    }
}
