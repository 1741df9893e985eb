//! `haimg render`: the command-line front of [`crate::render`].

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::ValueEnum;

use super::templates::Templates;
use super::{render, user_data, Group, Selection};
use crate::error::{Error, Result};
use crate::spec::{ClusterSpec, WorkerPool};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Master,
    Worker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The `#cloud-config` text.
    CloudConfig,
    /// What a launch template's UserData field takes (gzipped first when over 16 KB).
    Base64,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["role", "all"])))]
pub struct Args {
    /// Render one role: its user-data to stdout, or its artifacts with --out.
    #[arg(long, value_enum)]
    pub role: Option<RoleArg>,
    /// Render the whole tree (needs --out).
    #[arg(long, requires = "out")]
    pub all: bool,
    /// Cluster spec (default: ./cluster.yaml, else the embedded example).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Control-plane node (with --role master in VIP mode, where each master differs).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Worker pool (with --role worker; default: the only pool).
    #[arg(long, value_name = "NAME")]
    pub pool: Option<String>,
    /// Write files under DIR instead of printing user-data.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Output format of the user-data printed to stdout.
    #[arg(long, value_enum, default_value = "cloud-config")]
    pub format: Format,
    /// Use templates from DIR where present (same relative paths as the embedded ones).
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
    /// With --out, what is printed: the written paths one per line (text), or `json`:
    /// `{"cluster", "out", "files": [{"path", "bytes", "sha256", "secret"}]}` (path relative
    /// to --out; `secret`: written 0600 because it carries static join material).
    #[arg(long, value_enum, default_value = "text", requires = "out")]
    pub output: crate::cli::Output,
}

/// One written file, as `render --out --output json` reports it.
#[derive(Debug, serde::Serialize)]
struct Written<'a> {
    path: &'a str,
    bytes: usize,
    sha256: String,
    secret: bool,
}

pub fn run(args: Args) -> Result<()> {
    let mut loaded = crate::spec::load(args.config.as_deref())?;
    for w in &loaded.warnings {
        crate::progress::warn(w);
    }
    let spec_dir = args
        .config
        .as_deref()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let secret_output = load_static_credentials(&mut loaded.spec, &spec_dir, true)?;
    let spec = &loaded.spec;
    let t = match &args.templates {
        Some(dir) => Templates::with_overrides(dir)?,
        None => Templates::embedded(),
    };
    if args.pool.is_some() && args.role != Some(RoleArg::Worker) {
        return Err(Error::Usage("--pool goes with --role worker".into()));
    }
    let pool = match (&args.pool, args.role) {
        (Some(name), _) => Some(find_pool(spec, name)?),
        (None, Some(RoleArg::Worker)) if args.out.is_none() => Some(only_pool(spec)?),
        _ => None,
    };

    let masters = super::master_groups(spec);
    let node_names = check_node(&args, &masters)?;
    let Some(out) = &args.out else {
        return print_user_data(&args, spec, &t, pool, &masters, &node_names);
    };
    let selection = match (args.all, args.role) {
        (true, _) => Selection::All,
        (false, Some(RoleArg::Master)) => Selection::Master(args.node.as_deref()),
        (false, _) => Selection::Workers(pool.map(|p| &p.name)),
    };
    write_tree(&args, spec, &t, selection, out, secret_output)
}

/// `--node` goes with `--role master` of a cluster with fixed masters, and names one of
/// them. Returns the names of the fixed masters (none in NLB mode).
fn check_node(args: &Args, masters: &[Group]) -> Result<Vec<String>> {
    if args.node.is_some() && args.role != Some(RoleArg::Master) {
        return Err(Error::Usage("--node goes with --role master".into()));
    }
    let node_names: Vec<String> = masters
        .iter()
        .filter_map(|g| {
            if let Group::FixedMaster { node, .. } = g {
                Some(node.name.to_string())
            } else {
                None
            }
        })
        .collect();
    if let Some(n) = &args.node {
        if node_names.is_empty() {
            return Err(Error::Usage("--node: only clusters with fixed masters (spec.controlPlane.endpoint.type: vip or external) have per-node masters".into()));
        }
        if !node_names.contains(n) {
            let hint = crate::spec::schema::did_you_mean(n, &node_names)
                .map(|b| format!(", did you mean `{b}`?"))
                .unwrap_or_default();
            return Err(Error::Usage(format!(
                "--node {n}: no such node in spec.controlPlane.endpoint.nodes ({}){hint}",
                node_names.join(", ")
            )));
        }
    }
    Ok(node_names)
}

/// Without `--out`: one group's user-data on stdout.
fn print_user_data(
    args: &Args,
    spec: &ClusterSpec,
    t: &Templates,
    pool: Option<&WorkerPool>,
    masters: &[Group],
    node_names: &[String],
) -> Result<()> {
    let group = match (pool, &args.node) {
            (Some(p), _) => Group::Worker(p),
            (None, Some(n)) => *masters.iter().find(|g| matches!(g, Group::FixedMaster { node, .. } if node.name.as_str() == n.as_str())).expect("checked above"),
            (None, None) if !node_names.is_empty() => {
                return Err(Error::Usage(format!("--role master: with fixed masters every master differs; choose one with --node ({})", node_names.join(", "))));
            }
            (None, None) => Group::Master,
        };
    let ud = user_data(spec, group, t)?;
    let mut stdout = std::io::stdout().lock();
    let written = match args.format {
        Format::CloudConfig => {
            if ud.is_compressed() {
                eprintln!("note: this user-data is over 16 KB; launch templates carry it gzipped (--format base64)");
            }
            stdout.write_all(ud.text.as_bytes())
        }
        Format::Base64 => writeln!(stdout, "{}", ud.base64()),
    };
    written.map_err(Error::io("<stdout>"))
}

/// With `--out`: the selected files under `out` (the ones holding static credentials
/// owner-only), listed on stdout as paths or as JSON.
fn write_tree(
    args: &Args,
    spec: &ClusterSpec,
    t: &Templates,
    selection: Selection,
    out: &Path,
    secret_output: bool,
) -> Result<()> {
    let artifacts = render(spec, selection, t)?;
    let mut stdout = std::io::stdout().lock();
    let mut written = vec![];
    for a in &artifacts {
        let path = out.join(&a.path);
        let secret = secret_output
            && (a.path.starts_with("cloud-init/") || a.path.starts_with("launch-templates/"));
        write_atomically(&path, a.contents.as_bytes(), secret)?;
        if args.output == crate::cli::Output::Text {
            writeln!(stdout, "{}", path.display()).map_err(Error::io("<stdout>"))?;
        }
        written.push(Written {
            path: &a.path,
            bytes: a.contents.len(),
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                a.contents.as_bytes(),
            )),
            secret,
        });
    }
    if args.output == crate::cli::Output::Json {
        let v = serde_json::json!({"cluster": spec.name.to_string(), "out": out, "files": written});
        writeln!(
            stdout,
            "{}",
            serde_json::to_string_pretty(&v).expect("plain data")
        )
        .map_err(Error::io("<stdout>"))?;
    }
    eprintln!(
        "rendered {} files for cluster {} under {}",
        artifacts.len(),
        spec.name,
        out.display()
    );
    Ok(())
}

/// Fills in static credentials (generating the file on first use, loudly). Returns whether
/// user-data will then hold secrets, so the files that carry it are written 0600.
///
/// Without `may_create` (`status`, `down`: they never use user-data) a missing file is not
/// created: throwaway material stands in, in memory only.
pub(crate) fn load_static_credentials(
    spec: &mut ClusterSpec,
    spec_dir: &Path,
    may_create: bool,
) -> Result<bool> {
    let crate::spec::Credentials::Static { file, material } = &mut spec.credentials else {
        return Ok(false);
    };
    if !may_create {
        let path = spec_dir.join(&*file);
        let m = if path.exists() {
            crate::spec::credentials::load_or_create(file, spec_dir)?.0
        } else {
            crate::spec::credentials::generate(std::time::SystemTime::now())?
        };
        *material = Some(Box::new(m));
        return Ok(true);
    }
    let (m, path, created) = crate::spec::credentials::load_or_create(file, spec_dir)?;
    if created {
        eprintln!(
            "warning: generated static join credentials (token, certificate key, cluster CA) into {} (0600). \
             Keep that file secret and out of version control; every render reuses it.",
            path.display()
        );
    }
    crate::progress::warn("STATIC CREDENTIALS: the user-data written now holds a bootstrap token, masters' also the certificate key and the first master's the CA key; masters must join within 2 h and workers within 24 h of the first master's init");
    *material = Some(Box::new(m));
    Ok(true)
}

fn find_pool<'a>(spec: &'a ClusterSpec, name: &str) -> Result<&'a crate::spec::WorkerPool> {
    spec.worker_pools
        .iter()
        .find(|p| p.name.as_str() == name)
        .ok_or_else(|| {
            let names: Vec<String> = spec
                .worker_pools
                .iter()
                .map(|p| p.name.to_string())
                .collect();
            let hint = crate::spec::schema::did_you_mean(name, &names)
                .map(|b| format!(", did you mean `{b}`?"))
                .unwrap_or_default();
            Error::Usage(format!(
                "--pool {name}: no such worker pool in spec.workerPools (pools: {}){hint}",
                names.join(", ")
            ))
        })
}

fn only_pool(spec: &ClusterSpec) -> Result<&crate::spec::WorkerPool> {
    match spec.worker_pools.as_slice() {
        [one] => Ok(one),
        [] => Err(Error::Usage(
            "--role worker: spec.workerPools is empty".into(),
        )),
        many => {
            let names: Vec<&str> = many.iter().map(|p| p.name.as_str()).collect();
            Err(Error::Usage(format!(
                "--role worker: choose a pool with --pool ({})",
                names.join(", ")
            )))
        }
    }
}

/// Writes through a temporary file in the same directory and renames it into place, so a
/// reader never sees half a file.
/// `secret` files are created 0600.
fn write_atomically(path: &Path, data: &[u8], secret: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("haimg")
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(Error::io(&tmp))?;
    f.write_all(data).map_err(Error::io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}
