//! The signals that stop a long command: SIGINT (Ctrl-C), SIGTERM (systemd, CI, a
//! Kubernetes Job) and SIGHUP (a closed terminal) all stop it the same way, so whatever it
//! created is cleaned up whoever asked it to stop.

use tokio::signal::unix::{signal, SignalKind};

/// Resolves with the signal's name when the first of SIGINT, SIGTERM or SIGHUP arrives.
/// If a handler cannot be installed, that signal keeps its default action.
pub async fn stop() -> &'static str {
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut term = signal(SignalKind::terminate()).ok();
    let mut hup = signal(SignalKind::hangup()).ok();
    async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    tokio::select! {
        _ = next(&mut int) => "Ctrl-C",
        _ = next(&mut term) => "SIGTERM",
        _ = next(&mut hup) => "SIGHUP",
    }
}
