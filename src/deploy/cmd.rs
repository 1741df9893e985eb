//! `haimg up`, `haimg status`, `haimg down`: the command-line front of [`crate::deploy`].

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::apply::{self, Progress};
use super::desired::Desired;
use super::observe::{self, Clients};
use super::{down, plan, status};
use crate::error::{Error, Result};
use crate::render::{render, templates::Templates, Selection};

/// Which cluster, and where.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// Cluster spec (default: ./cluster.yaml, else the embedded example).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// AWS region (default: spec.region; when given, it must equal spec.region).
    #[arg(long)]
    pub region: Option<String>,
    /// AWS profile from the shared config files.
    #[arg(long)]
    pub profile: Option<String>,
    /// Use templates from DIR where present (as `render --templates`).
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print what would change (a diff against what exists); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Then wait until the cluster is healthy (`haimg status` exits 0): P/state ready,
    /// healthy API targets, every group at its desired capacity.
    #[arg(long)]
    pub wait: bool,
    /// Bound on --wait.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Poll interval of --wait (tests shorten it).
    #[arg(long, hide = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    /// `json`: the plan (or what was applied) as one document on stdout
    /// ({cluster, dryRun, changes: [{action, resource, summary, diff}], applied, healthy}).
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

pub use crate::cli::Output;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub target: Target,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Bound on waiting for instances and the load balancer to go.
    #[arg(long, value_name = "DURATION", default_value = "20m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[arg(long, hide = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    /// `json`: what was deleted as one document on stdout ({cluster, deleted: [{kind, name,
    /// id}], leftAlone}).
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

struct Cluster {
    desired: Desired,
    region: String,
    /// API servers behind the target group (NLB mode).
    masters: usize,
}

/// The spec, rendered in memory exactly as `render --all` writes it, read back.
fn load(t: &Target, may_create_credentials: bool) -> Result<Cluster> {
    let mut loaded = crate::spec::load(t.config.as_deref())?;
    for w in &loaded.warnings {
        crate::progress::warn(w);
    }
    let spec_dir = t
        .config
        .as_deref()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .to_path_buf();
    crate::render::cmd::load_static_credentials(
        &mut loaded.spec,
        &spec_dir,
        may_create_credentials,
    )?;
    let spec = &loaded.spec;
    let region = spec.region.to_string();
    if let Some(r) = &t.region {
        if r != &region {
            return Err(Error::Usage(format!(
                "--region {r}: {} says spec.region: {region}; nodes are rendered for that region",
                loaded.source
            )));
        }
    }
    let templates = match &t.templates {
        Some(dir) => Templates::with_overrides(dir)?,
        None => Templates::embedded(),
    };
    let artifacts = render(spec, Selection::All, &templates)?;
    let ssm_prefix = match spec.credentials {
        crate::spec::Credentials::Ssm => Some(spec.ssm.prefix.to_string()),
        crate::spec::Credentials::Static { .. } => None,
    };
    let desired = Desired::from_artifacts(spec.name.as_str(), ssm_prefix.as_deref(), &artifacts)?;
    let masters = match spec.control_plane.endpoint {
        crate::spec::Endpoint::Nlb { .. } => usize::from(spec.control_plane.count),
        _ => 0,
    };
    Ok(Cluster {
        desired,
        region,
        masters,
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(format!("tokio: {e}")))
}

async fn clients(t: &Target, region: &str) -> Clients {
    Clients::new(&crate::aws::load(Some(region), t.profile.as_deref()).await)
}

/// The result, on stdout, once the last step's line is on stderr (and no spinner is).
fn out(text: &str) -> Result<()> {
    crate::progress::finish();
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(Error::io("<stdout>"))
}

/// `up` and `down` change AWS: they never act on the embedded example (a cluster named
/// `demo` that nobody asked for). `status` only reads, and keeps the default.
fn require_explicit_spec(t: &Target, command: &str) -> Result<()> {
    if t.config.is_none() && !Path::new("cluster.yaml").exists() {
        return Err(Error::Usage(format!(
            "haimg {command} changes AWS and needs your cluster spec: give it with -c FILE or run where ./cluster.yaml is \
             (the embedded example is for `render` and `validate` only)"
        )));
    }
    Ok(())
}

pub fn up(args: UpArgs) -> Result<()> {
    require_explicit_spec(&args.target, "up")?;
    let cluster = load(&args.target, true)?;
    runtime()?.block_on(async move {
        let c = clients(&args.target, &cluster.region).await;
        let mut desired = cluster.desired;
        if !desired.groups.is_empty() {
            let ami = observe::resolve_image(&c, &desired.image).await?;
            desired = desired.with_image(&ami);
        }
        let (observed, tagged) = tokio::try_join!(
            observe::observe(&c, &desired),
            crate::aws::autoscaling::tagged_groups(&c.asg, &desired.cluster)
        )?;
        let changes = plan::plan(&desired, &observed)?;
        let name = desired.cluster.clone();
        for g in plan::orphans(&desired, &tagged) {
            crate::progress::warn(format_args!(
                "auto scaling group {g} is tagged {}={name} but is not in the spec any more: `up` leaves it running; delete it with `aws autoscaling delete-auto-scaling-group --auto-scaling-group-name {g} --force-delete` (or `haimg down` for the whole cluster)",
                super::desired::CLUSTER_TAG
            ));
        }
        let report = |applied: Option<usize>, healthy: Option<bool>| {
            let v = serde_json::json!({
                "cluster": name,
                "dryRun": args.dry_run,
                "changes": changes.iter().map(plan::Change::report).collect::<Vec<_>>(),
                "applied": applied,
                "healthy": healthy,
            });
            out(&(serde_json::to_string_pretty(&v).expect("plain data") + "\n"))
        };
        if args.dry_run && args.output == Output::Json {
            return report(None, None);
        }
        if args.dry_run {
            let mut text = String::new();
            for ch in &changes {
                text.push_str(&format!("{ch}\n"));
            }
            text.push_str(&if changes.is_empty() {
                format!("cluster {name}: no changes\n")
            } else {
                format!(
                    "cluster {name}: {} change(s) ({} to create); nothing was changed (--dry-run)\n",
                    changes.len(),
                    changes.iter().filter(|c| c.is_create()).count()
                )
            });
            return out(&text);
        }
        if changes.is_empty() {
            crate::progress::note(format_args!("cluster {name}: up to date, no changes"));
        } else {
            crate::progress::note(format_args!("cluster {name}: {} change(s)", changes.len()));
        }
        let progress = Progress::default();
        let result = tokio::select! {
            r = apply::apply(&c, &name, &changes, &observed, progress.clone()) => r,
            sig = crate::signals::stop() => {
                let done = progress.lock().unwrap().len();
                let not_done: Vec<String> = changes[done..]
                    .iter()
                    .map(|c| c.to_string().lines().next().unwrap_or_default().to_string())
                    .collect();
                Err(Error::Runtime(format!(
                    "interrupted ({sig}); the change in flight may or may not have taken effect (`haimg up` finds out)\n{}",
                    apply::stopped_report(&name, "up", done, &not_done)
                )))
            }
        };
        result?;
        if args.wait {
            wait_healthy(&c, &desired, &cluster.region, cluster.masters, &args).await?;
        }
        if args.output == Output::Json {
            return report(Some(changes.len()), args.wait.then_some(true));
        }
        out(&format!(
            "cluster {name}: {} change(s) applied{}\n",
            changes.len(),
            if args.wait { ", healthy" } else { "" }
        ))
    })
}

async fn wait_healthy(
    c: &Clients,
    d: &Desired,
    region: &str,
    masters: usize,
    args: &UpArgs,
) -> Result<()> {
    let started = std::time::Instant::now();
    let last = std::sync::Mutex::new(String::new());
    let what = format!("cluster {}", d.cluster);
    let r = crate::aws::wait_until(args.timeout, args.poll, &what, || {
        let last = &last;
        async move {
            let s = status::read(c, d, region, masters).await?;
            if s.healthy {
                crate::progress::note(format_args!(
                    "  healthy after {}s",
                    started.elapsed().as_secs()
                ));
                return Ok(None);
            }
            let line = s.problems.join("; ");
            let mut last = last.lock().unwrap();
            if *last != line {
                crate::progress::step(format_args!(
                    "  [{:>4}s] waiting: {line}",
                    started.elapsed().as_secs()
                ));
                *last = line.clone();
            }
            Ok(Some(format!("not healthy ({line})")))
        }
    })
    .await;
    r.map_err(|e| match e {
        Error::Timeout(m) => Error::Timeout(format!(
            "{m}; the resources are in place: `haimg status` shows the cluster, and `haimg up --wait` waits again"
        )),
        e => e,
    })
}

pub fn status(args: StatusArgs) -> Result<()> {
    let cluster = load(&args.target, false)?;
    runtime()?.block_on(async move {
        let c = clients(&args.target, &cluster.region).await;
        let s = status::read(&c, &cluster.desired, &cluster.region, cluster.masters).await?;
        match args.output {
            Output::Json => out(&(serde_json::to_string_pretty(&s).expect("plain data") + "\n"))?,
            Output::Text => out(&status::text(&s, std::time::SystemTime::now()))?,
        }
        if s.healthy {
            Ok(())
        } else {
            Err(Error::Runtime(format!(
                "cluster {} is degraded: {} problem(s)",
                s.cluster,
                s.problems.len()
            )))
        }
    })
}

pub fn down(args: DownArgs) -> Result<()> {
    require_explicit_spec(&args.target, "down")?;
    let cluster = load(&args.target, false)?;
    runtime()?.block_on(async move {
        let c = clients(&args.target, &cluster.region).await;
        let d = &cluster.desired;
        let inv = down::inventory(&c, d).await?;
        for f in &inv.foreign {
            crate::progress::warn(format_args!(
                "{f} is not tagged {}={}: left alone",
                super::desired::CLUSTER_TAG,
                d.cluster
            ));
        }
        let report = |deleted: &[down::Resource]| {
            let v = serde_json::json!({"cluster": d.cluster, "deleted": deleted, "leftAlone": inv.foreign});
            out(&(serde_json::to_string_pretty(&v).expect("plain data") + "\n"))
        };
        if inv.is_empty() {
            if args.output == Output::Json {
                return report(&[]);
            }
            return out(&format!("cluster {}: nothing to delete\n", d.cluster));
        }
        let lines = inv.lines();
        // The list is what a confirmation is asked for: shown unless --quiet with --yes.
        if !(args.yes && crate::progress::quiet()) {
            crate::progress::print_above(format_args!(
                "cluster {}: deleting {} resource(s):",
                d.cluster,
                lines.len()
            ));
            for l in &lines {
                crate::progress::print_above(format_args!("  {l}"));
            }
        }
        if !args.yes {
            confirm(&d.cluster)?;
        }
        let result = tokio::select! {
            r = down::delete(&c, &inv, args.timeout, args.poll) => r,
            sig = crate::signals::stop() => Err(Error::Runtime(format!("interrupted ({sig})"))),
        };
        result.map_err(|e| {
            Error::Runtime(format!(
                "{e}\ndown stopped part-way: what is left is still tagged {}={}; run `haimg down` again to finish",
                super::desired::CLUSTER_TAG,
                d.cluster
            ))
        })?;
        if args.output == Output::Json {
            return report(&inv.resources());
        }
        out(&format!(
            "cluster {}: deleted {} resource(s)\n",
            d.cluster,
            lines.len()
        ))
    })
}

/// Asks for the cluster's name on a terminal; refuses without one.
fn confirm(cluster: &str) -> Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Error::Usage(
            "refusing to delete without confirmation: stdin is not a terminal; pass --yes".into(),
        ));
    }
    eprint!("type the cluster name ({cluster}) to delete it: ");
    let mut line = String::new();
    stdin.read_line(&mut line).map_err(Error::io("<stdin>"))?;
    if line.trim() != cluster {
        return Err(Error::Runtime("not confirmed: nothing was deleted".into()));
    }
    Ok(())
}
