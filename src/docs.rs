//! `haimg completions SHELL` and `haimg man`: shell completions and man pages generated
//! from the clap definitions, so they never drift from the command line.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::error::{Error, Result};

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for; install the output where it looks (bash:
    /// ~/.local/share/bash-completion/completions/haimg, zsh: a directory on $fpath as
    /// _haimg, fish: ~/.config/fish/completions/haimg.fish).
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write one page per command into DIR (haimg.1, haimg-bake.1, haimg-lab-up.1, …)
    /// instead of printing haimg(1).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn completions(a: CompletionsArgs) -> Result<()> {
    let mut cmd = crate::cli::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "haimg", &mut out);
    std::io::stdout()
        .lock()
        .write_all(&out)
        .map_err(Error::io("<stdout>"))
}

pub fn man(a: ManArgs) -> Result<()> {
    let cmd = crate::cli::Cli::command();
    match a.out {
        None => {
            let mut out = Vec::new();
            render(&cmd, &mut out)?;
            std::io::stdout()
                .lock()
                .write_all(&out)
                .map_err(Error::io("<stdout>"))
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
            let mut written = vec![];
            write_pages(&cmd, "haimg", &dir, &mut written)?;
            for p in written {
                println!("{}", p.display());
            }
            Ok(())
        }
    }
}

fn render(cmd: &clap::Command, out: &mut Vec<u8>) -> Result<()> {
    clap_mangen::Man::new(cmd.clone())
        .render(out)
        .map_err(|e| Error::Runtime(format!("rendering the man page of {}: {e}", cmd.get_name())))
}

/// The page of `cmd` as `name.1`, then its subcommands' as `name-sub.1` (hidden ones and
/// clap's own `help` left out).
fn write_pages(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    let cmd = cmd.clone().name(name.to_string());
    let mut page = Vec::new();
    render(&cmd, &mut page)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).map_err(Error::io(&path))?;
    written.push(path);
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
