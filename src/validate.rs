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
    /// `json`: `{"valid", "documents": [{"source", "kind", "warnings"}], "problems":
    /// [{"file", "line", "column", "field", "message"}]}` on stdout (exit codes unchanged).
    #[arg(long, value_enum, default_value = "text")]
    pub output: crate::cli::Output,
}

/// One document that loaded (`--output json`).
#[derive(Debug, serde::Serialize)]
struct Checked {
    source: String,
    kind: &'static str,
    warnings: Vec<String>,
}

/// One problem as `--output json` reports it (line and column absent for a whole file).
#[derive(Debug, serde::Serialize)]
struct Problem<'a> {
    file: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    column: Option<usize>,
    field: &'a str,
    message: &'a str,
}

fn report(checked: &[Checked], problems: &Diagnostics) -> String {
    let problems: Vec<Problem> = problems
        .iter()
        .map(|d| Problem {
            file: &d.file,
            line: d.pos.map(|p| p.line),
            column: d.pos.map(|p| p.col),
            field: &d.path,
            message: &d.message,
        })
        .collect();
    let v = serde_json::json!({
        "valid": problems.is_empty(),
        "documents": checked,
        "problems": problems,
    });
    serde_json::to_string_pretty(&v).expect("plain data") + "\n"
}

pub fn run(args: Args) -> Result<()> {
    let mut problems = Diagnostics(vec![]);
    let mut checked = vec![];
    let mut other = None;
    // The spec is checked when named, or when no recipe is (the default job).
    if args.config.is_some() || args.recipes.is_empty() {
        match crate::spec::load(args.config.as_deref()) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    crate::progress::warn(w);
                }
                eprintln!("{}: valid", loaded.source);
                checked.push(Checked {
                    source: loaded.source.to_string(),
                    kind: "cluster",
                    warnings: loaded.warnings.iter().map(ToString::to_string).collect(),
                });
            }
            Err(Error::Invalid(d)) => problems.0.extend(d.0),
            Err(e) => other = Some(e),
        }
    }
    for r in &args.recipes {
        match crate::recipe::load_from(Some(r), args.sources.as_deref()) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    crate::progress::warn(w);
                }
                eprintln!("{}: valid", loaded.source);
                checked.push(Checked {
                    source: loaded.source.to_string(),
                    kind: "recipe",
                    warnings: loaded.warnings.iter().map(ToString::to_string).collect(),
                });
            }
            Err(Error::Invalid(d)) => problems.0.extend(d.0),
            Err(e) => other = other.or(Some(e)),
        }
    }
    // A failure that is not the input's (a file that cannot be read) has no report.
    if args.output == crate::cli::Output::Json && other.is_none() {
        print!("{}", report(&checked, &problems));
    }
    if !problems.0.is_empty() {
        return Err(Error::Invalid(problems));
    }
    other.map_or(Ok(()), Err)
}
