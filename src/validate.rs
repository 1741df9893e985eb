//! `haimg validate`: load a cluster spec and any recipes; report every problem at once.

use std::path::PathBuf;

use crate::error::{Diagnostics, Error, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cluster spec (default: ./cluster.yaml, else the embedded example).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Image recipes to check (files, or names of embedded recipes). With recipes and no
    /// -c, only the recipes are checked.
    #[arg(value_name = "RECIPE")]
    pub recipes: Vec<String>,
    /// The directory the recipes' relative file paths resolve against (as `bake
    /// --sources`).
    #[arg(long, value_name = "DIR")]
    pub sources: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let mut problems = Diagnostics(vec![]);
    let mut other = None;
    // The spec is checked when named, or when no recipe is (the default job).
    if args.config.is_some() || args.recipes.is_empty() {
        match crate::spec::load(args.config.as_deref()) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    eprintln!("warning: {w}");
                }
                eprintln!("{}: valid", loaded.source);
            }
            Err(Error::Invalid(d)) => problems.0.extend(d.0),
            Err(e) => other = Some(e),
        }
    }
    for r in &args.recipes {
        match crate::recipe::load_from(Some(r), args.sources.as_deref()) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    eprintln!("warning: {w}");
                }
                eprintln!("{}: valid", loaded.source);
            }
            Err(Error::Invalid(d)) => problems.0.extend(d.0),
            Err(e) => other = other.or(Some(e)),
        }
    }
    if !problems.0.is_empty() {
        return Err(Error::Invalid(problems));
    }
    other.map_or(Ok(()), Err)
}
