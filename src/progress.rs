//! What a long command says as it goes (bake, up, down, lab): one line per step on stderr,
//! `haimg <command>: <step>`, which `--quiet` silences. Warnings and errors are not
//! progress: they always print. Results go to stdout either way.
//!
//! Also the one tracing setup every command shares: `HAIMG_LOG` sets the filter, `NO_COLOR`
//! (or stderr not being a terminal) turns colour off.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A progress line of `command`, unless `--quiet`.
pub fn line(command: &str, msg: impl std::fmt::Display) {
    if !quiet() {
        let _ = writeln!(std::io::stderr().lock(), "haimg {command}: {msg}");
    }
}

/// A progress line as it is, unless `--quiet` (for commands whose lines are lists).
pub fn raw(msg: impl std::fmt::Display) {
    if !quiet() {
        let _ = writeln!(std::io::stderr().lock(), "{msg}");
    }
}

/// tracing to stderr with `default` as the filter unless `HAIMG_LOG` sets one.
pub fn init_tracing(default: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("HAIMG_LOG").unwrap_or_else(|_| default.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::env::var_os("NO_COLOR").is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
        .with_target(false)
        .try_init();
}
