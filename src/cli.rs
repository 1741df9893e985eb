//! The command line (DESIGN §3). Each subcommand owns its `Args` and `run()`.

use clap::{Parser, Subcommand};

use crate::error::Result;

#[derive(Debug, Parser)]
#[command(name = "haimg", version, about = "Bake air-gapped Kubernetes node images and render self-joining HA kubeadm clusters for AWS", long_about = None)]
pub struct Cli {
    /// No progress on stderr (warnings, errors and results still print). Logs:
    /// HAIMG_LOG sets the tracing filter; NO_COLOR turns colour off.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Progress as plain lines, one per step, even on a terminal (no spinner).
    #[arg(long, global = true)]
    no_progress: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bake a node image (AMI) from a recipe: pinned packages, pre-pulled images, no SSH.
    Bake(crate::bake::cmd::Args),
    /// Render cloud-init user-data, launch templates, Auto Scaling groups, the NLB and IAM
    /// policies from a cluster spec (no AWS access needed).
    Render(crate::render::cmd::Args),
    /// Create or update the cluster's AWS resources from the rendered files (idempotent).
    Up(crate::deploy::cmd::UpArgs),
    /// Show the cluster's instances, API targets, phase and join material age (exit 1 when
    /// degraded).
    Status(crate::deploy::cmd::StatusArgs),
    /// Delete everything haimg created for the cluster, SSM parameters included.
    Down(crate::deploy::cmd::DownArgs),
    /// Check a cluster spec and image recipes; report every problem at once (exit 0 or 2).
    Validate(crate::validate::Args),
    /// Print the JSON Schema of cluster.yaml.
    Schema,
    /// The node agent (runs on the nodes).
    Node(crate::node::Args),
    /// A real cluster from a local image on this machine: system-container nodes on a
    /// private network with no route out (root; see the README's "Lab").
    Lab(crate::lab::cmd::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(crate::docs::CompletionsArgs),
    /// Print haimg(1), or with --out one man page per command.
    Man(crate::docs::ManArgs),
}

/// `--output`: what a command that reports something prints (each documents its JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// For a person.
    #[default]
    Text,
    /// One JSON document on stdout.
    Json,
}

impl Cli {
    pub fn run(self) -> Result<()> {
        crate::progress::configure(self.quiet, self.no_progress);
        // The agent sets up its own (info: its lines are the node's journal).
        if !matches!(self.command, Command::Node(_)) {
            // The SDK's own warnings (a retried request, say) are haimg's to report, in
            // its own words: HAIMG_LOG=aws=debug shows them.
            crate::progress::init_tracing("warn,aws=error,hyper=error,reqwest=error,rustls=error");
        }
        match self.command {
            Command::Bake(a) => crate::bake::cmd::run(a),
            Command::Render(a) => crate::render::cmd::run(a),
            Command::Up(a) => crate::deploy::cmd::up(a),
            Command::Status(a) => crate::deploy::cmd::status(a),
            Command::Down(a) => crate::deploy::cmd::down(a),
            Command::Validate(a) => crate::validate::run(a),
            Command::Node(a) => crate::node::run(a),
            Command::Lab(a) => crate::lab::cmd::run(a),
            Command::Completions(a) => crate::docs::completions(a),
            Command::Man(a) => crate::docs::man(a),
            Command::Schema => {
                print!("{}", crate::spec::schema::schema_text());
                Ok(())
            }
        }
    }
}
