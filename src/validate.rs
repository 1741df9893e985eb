//! `haimg validate`: load a cluster spec and report every problem at once.

use std::path::PathBuf;

use crate::error::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cluster spec (default: ./cluster.yaml, else the embedded example).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let loaded = crate::spec::load(args.config.as_deref())?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!("{}: valid", loaded.source);
    Ok(())
}
