//! `haimg bake`: the command-line front of [`crate::bake`].

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::flow::{self, Options, Tracker};
use super::plan;
use crate::error::{Error, Result};
use crate::recipe::{Arch, Base, Recipe};
use crate::render::templates::Templates;

pub use crate::cli::Output;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A recipe file, or the name of an embedded recipe (ubuntu-20.04, ubuntu-22.04,
    /// debian-12).
    #[arg(value_name = "RECIPE")]
    pub recipe: Option<String>,
    /// Where the image is made: an AMI on AWS, or a bootable disk image on this machine.
    #[arg(long, value_enum, default_value = "aws")]
    pub target: Target,
    /// The directory the recipe's relative file paths (packages, image archives) resolve
    /// against (default: the recipe file's directory; the current one for an embedded
    /// recipe).
    #[arg(long, value_name = "DIR")]
    pub sources: Option<std::path::PathBuf>,
    /// `--target qemu`: the local image store (default: ~/.cache/haimg/images).
    #[arg(long, value_name = "DIR")]
    pub store: Option<std::path::PathBuf>,
    /// `--target qemu`: also write the raw disk beside the qcow2.
    #[arg(long)]
    pub raw: bool,
    /// `--target qemu`, for comparison only: the recipe's base as a disk with nothing of
    /// the recipe installed, and beside it what a node's user-data installs it all from at
    /// boot (the provisioning script's boot variant and its files), as a plain cloud image
    /// and the seeds' manual steps would. `haimg lab up` runs it (see the README).
    #[arg(long)]
    pub plain: bool,
    /// Print the plan (hash, base image, tags, steps) and the full provisioning script;
    /// no AWS call when the base AMI is pinned by id.
    #[arg(long)]
    pub dry_run: bool,
    /// Bake even when an image with this recipe hash exists.
    #[arg(long)]
    pub force: bool,
    /// Copy the image to these regions too (in parallel), with the same tags and parameters.
    #[arg(long, value_delimiter = ',', value_name = "REGION,…")]
    pub copy_to: Vec<String>,
    /// Subnet of the builder (default: the default VPC's). It needs outbound HTTPS only.
    #[arg(long, value_name = "ID")]
    pub subnet_id: Option<String>,
    /// Instance profile of the builder: its role needs AmazonSSMManagedInstanceCore only.
    #[arg(long, value_name = "NAME", default_value = "haimg-builder")]
    pub instance_profile: String,
    /// Builder instance type (default t3.large, or t4g.large for arm64).
    #[arg(long, value_name = "TYPE")]
    pub instance_type: Option<String>,
    /// The haimg binary the image gets (default: this one). Needed to bake another
    /// architecture than this machine's.
    #[arg(long, value_name = "PATH")]
    pub haimg_binary: Option<std::path::PathBuf>,
    /// Leave the builder running after the bake, for debugging (staged files still go).
    #[arg(long)]
    pub keep_builder: bool,
    /// Bound on the provisioning script (`--target qemu`: on the whole bake).
    #[arg(long, value_name = "DURATION", default_value = "45m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
    #[arg(long)]
    pub region: Option<String>,
    #[arg(long)]
    pub profile: Option<String>,
    /// Poll interval of the SSM waits (the builder's agent, the script; tests shorten it).
    /// EC2's generated waiters pace the stopped-builder and available-image waits.
    #[arg(long, hide = true, default_value = "5s", value_parser = humantime::parse_duration)]
    pub poll: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// An AMI, baked on an EC2 builder driven by SSM Run Command.
    Aws,
    /// A bootable qcow2 disk image in the local image store, baked in a chroot.
    Qemu,
}

pub fn run(args: Args) -> Result<()> {
    let loaded = crate::recipe::load_from(args.recipe.as_deref(), args.sources.as_deref())?;
    for w in &loaded.warnings {
        crate::progress::warn(w);
    }
    let recipe = loaded.recipe;
    check_target(&args, &recipe)?;
    let (binary, haimg_sha256) = agent_binary(&args, &recipe)?;
    let t = Templates::embedded();
    if args.target == Target::Qemu {
        return super::local::cmd::run(&args, &recipe, &binary, &haimg_sha256, &t);
    }
    on_aws(args, recipe, binary, haimg_sha256, t)
}

/// The options that only make sense for one target, and what a target needs of a recipe.
fn check_target(args: &Args, recipe: &Recipe) -> Result<()> {
    if args.plain && args.target != Target::Qemu {
        return Err(Error::Usage(
            "--plain makes a local image: it needs --target qemu".into(),
        ));
    }
    if args.target == Target::Qemu {
        if let Some(why) = super::local::refusal(recipe) {
            return Err(Error::Usage(why));
        }
    }
    for r in &args.copy_to {
        crate::contract::types::Region::try_from(r.as_str())
            .map_err(|e| Error::Usage(format!("--copy-to: {e}")))?;
    }
    Ok(())
}

/// The binary the image gets as its agent (this one, or `--haimg-binary`) and its sha256,
/// once it is known to start on the recipe's machine and glibc.
fn agent_binary(args: &Args, recipe: &Recipe) -> Result<(PathBuf, String)> {
    let binary = match &args.haimg_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| Error::Runtime(format!("locating the haimg binary: {e}")))?,
    };
    if !args.dry_run && args.haimg_binary.is_none() && Arch::host() != Some(recipe.architecture) {
        return Err(Error::Usage(format!(
            "recipe {} is {}, but this haimg binary is {}: give --haimg-binary, a haimg built for {} (it is what the image runs)",
            recipe.name,
            recipe.architecture.as_str(),
            std::env::consts::ARCH,
            recipe.architecture.as_str()
        )));
    }
    let what = match &args.haimg_binary {
        Some(p) => format!("--haimg-binary {}", p.display()),
        None => format!("the running haimg ({})", binary.display()),
    };
    let bytes = std::fs::read(&binary).map_err(|e| Error::Usage(format!("{what}: {e}")))?;
    if let Some(why) = super::binary::refusal(
        &bytes,
        recipe.architecture,
        recipe.os.pretty(),
        recipe.os.glibc(),
    ) {
        // A dry run only prints the plan: say it, but show the plan.
        if args.dry_run {
            crate::progress::warn(format_args!("{what} cannot be the image's agent: {why}"));
        } else {
            return Err(Error::Usage(format!(
                "{what} cannot be the image's agent: {why}"
            )));
        }
    }
    drop(bytes);
    let haimg_sha256 =
        crate::cache::file_sha256(&binary).map_err(|e| Error::Usage(format!("{what}: {e}")))?;
    Ok((binary, haimg_sha256))
}

/// An AMI: the plan (a dry run ends there), a cached image, or a bake on an EC2 builder,
/// with everything it made removed on every path but the image it publishes.
fn on_aws(
    args: Args,
    recipe: Recipe,
    binary: PathBuf,
    haimg_sha256: String,
    t: Templates,
) -> Result<()> {
    let Some(recipe_base) = recipe.base.clone() else {
        return Err(Error::Usage(format!(
            "recipe {} has no spec.base (an AMI to start from): it bakes only locally, with --target qemu",
            recipe.name
        )));
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(format!("tokio: {e}")))?;
    rt.block_on(async move {
        // --dry-run with a pinned AMI: no AWS configuration is even loaded.
        let sdk = match (&recipe_base, args.dry_run) {
            (Base::Ami(_), true) => None,
            _ => Some(crate::aws::load(args.region.as_deref(), args.profile.as_deref()).await),
        };
        let base = match &sdk {
            None => match &recipe_base {
                Base::Ami(id) => id.to_string(),
                Base::SsmParameter(_) => unreachable!("only a pinned AMI skips AWS"),
            },
            Some(sdk) => flow::resolve_base(sdk, &recipe).await?,
        };
        let plan = plan(&recipe, &base, &haimg_sha256, &t)?;
        let mut stdout = std::io::stdout().lock();
        if args.dry_run {
            let text = match args.output {
                Output::Json => serde_json::to_string_pretty(&plan).expect("plain data") + "\n",
                Output::Text => dry_run_text(&plan),
            };
            return stdout
                .write_all(text.as_bytes())
                .map_err(Error::io("<stdout>"));
        }
        let sdk = sdk.expect("loaded unless dry-run");
        let opts = Options {
            subnet_id: args.subnet_id,
            instance_profile: args.instance_profile,
            instance_type: args
                .instance_type
                .unwrap_or_else(|| match recipe.architecture {
                    Arch::Amd64 => "t3.large".into(),
                    Arch::Arm64 => "t4g.large".into(),
                }),
            keep_builder: args.keep_builder,
            force: args.force,
            copy_to: args.copy_to,
            script_timeout: args.timeout,
            wait_timeout: Duration::from_secs(3600),
            poll: args.poll,
            binary,
        };
        let created = Tracker::default();
        let result = tokio::select! {
            r = flow::run(&sdk, &plan, &opts, created.clone()) => r,
            sig = crate::signals::stop() => Err(Error::Runtime(format!("interrupted ({sig})"))),
        };
        let snapshot = created.lock().unwrap().clone();
        let left = flow::cleanup(&sdk, &snapshot, opts.keep_builder).await;
        if !left.is_empty() {
            let list = left.join("\n  ");
            let cause = match &result {
                Err(e) => format!("{e}\n"),
                Ok(_) => String::new(),
            };
            return Err(Error::Runtime(format!(
                "{cause}could not remove (delete these by hand):\n  {list}"
            )));
        }
        let outcome = result?;
        let text = match args.output {
            Output::Json => serde_json::to_string(&outcome).expect("plain data") + "\n",
            Output::Text => format!("{}\n", outcome.image_id),
        };
        crate::progress::finish();
        stdout
            .write_all(text.as_bytes())
            .map_err(Error::io("<stdout>"))
    })
}

fn dry_run_text(plan: &super::Plan) -> String {
    let mut s = String::new();
    s.push_str("# haimg bake plan (dry run): nothing was created\n");
    s.push_str(&format!("recipe:       {}\n", plan.recipe));
    s.push_str(&format!("recipe hash:  {}\n", plan.recipe_hash));
    s.push_str(&format!("base image:   {}\n", plan.base_image));
    s.push_str(&format!("image name:   {}\n", plan.ami_name));
    s.push_str("parameters:\n");
    for p in plan.parameters() {
        s.push_str(&format!("  {p}\n"));
    }
    s.push_str("tags:\n");
    for (k, v) in &plan.tags {
        s.push_str(&format!("  {k} = {v}\n"));
    }
    s.push_str("bake: cache lookup, stage binary, launch builder, run script (SSM), stop, create image, tag, copy, publish\n");
    s.push_str("script steps:\n");
    for (i, step) in plan.steps.iter().enumerate() {
        s.push_str(&format!("  {}. {step}\n", i + 1));
    }
    s.push_str("--- provisioning script ---\n");
    s.push_str(&plan.script);
    s
}
