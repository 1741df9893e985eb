//! What a long command says as it goes (bake, `up`, `down`, lab): its steps, on stderr.
//! Results go to stdout either way; warnings and errors are not progress and always print.
//!
//! Three ways to say it, chosen once per process by [`configure`]:
//! * on a terminal, a spinner with the current step and its time so far; each step, once
//!   the next one starts (or the command ends), stays on screen as a plain line with the
//!   time it took;
//! * otherwise (a pipe, a log, CI, `TERM=dumb`, or `--no-progress`), one plain line per
//!   step as it starts: `haimg <command>: <step>`;
//! * with `--quiet`, nothing.
//!
//! Everything else haimg writes to stderr while a spinner runs (tracing events, warnings)
//! goes through [`warn`] or the tracing writer set up by [`init_tracing`], which lift the
//! spinner out of the way first, so no line is ever drawn over.
//!
//! `HAIMG_LOG` sets the tracing filter; `NO_COLOR` (or stderr not being a terminal) turns
//! colour off, in the spinner and in log lines.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing (`--quiet`).
    Quiet,
    /// A line per step.
    Lines,
    /// A spinner on the current step; finished steps as lines.
    Live,
}

static MODE: AtomicU8 = AtomicU8::new(Mode::Lines as u8);

/// The spinner and the step it shows, while one runs.
static LIVE: Mutex<Option<Live>> = Mutex::new(None);

struct Live {
    bar: ProgressBar,
    /// The step on the spinner and when it started.
    step: Option<(String, Instant)>,
}

/// Chooses the mode from the global flags and where stderr goes.
pub fn configure(quiet: bool, no_progress: bool) {
    let terminal =
        std::io::stderr().is_terminal() && std::env::var_os("TERM").is_none_or(|t| t != "dumb");
    set_mode(choose(quiet, no_progress, terminal));
}

/// `--quiet` wins over everything; a spinner needs a terminal and no `--no-progress`.
pub fn choose(quiet: bool, no_progress: bool, terminal: bool) -> Mode {
    match (quiet, no_progress, terminal) {
        (true, _, _) => Mode::Quiet,
        (false, false, true) => Mode::Live,
        _ => Mode::Lines,
    }
}

pub fn set_mode(mode: Mode) {
    MODE.store(mode as u8, Ordering::Relaxed);
}

pub fn mode() -> Mode {
    match MODE.load(Ordering::Relaxed) {
        x if x == Mode::Quiet as u8 => Mode::Quiet,
        x if x == Mode::Live as u8 => Mode::Live,
        _ => Mode::Lines,
    }
}

pub fn quiet() -> bool {
    mode() == Mode::Quiet
}

fn colour() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

/// A step of `command` begins: `haimg <command>: <step>`.
pub fn line(command: &str, msg: impl std::fmt::Display) {
    step(format_args!("haimg {command}: {msg}"));
}

/// A step begins, its text complete as it is (for commands whose steps read as a list).
pub fn step(msg: impl std::fmt::Display) {
    let text = msg.to_string();
    match mode() {
        Mode::Quiet => {}
        Mode::Lines => {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        }
        Mode::Live => {
            let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
            let live = live.get_or_insert_with(|| Live::start(ProgressDrawTarget::stderr()));
            live.advance(text);
        }
    }
}

/// Something that happened (not a step that takes time): a line of its own, above the
/// spinner if one runs; nothing with `--quiet`.
pub fn note(msg: impl std::fmt::Display) {
    if !quiet() {
        print_above(msg);
    }
}

/// A warning: always printed (also with `--quiet`), above the spinner if one runs.
pub fn warn(msg: impl std::fmt::Display) {
    print_above(format_args!("warning: {msg}"));
}

/// Prints one line on stderr with the spinner out of the way.
pub fn print_above(msg: impl std::fmt::Display) {
    let text = msg.to_string();
    suspended(|| {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    });
}

/// Runs `f` with the spinner, if any, lifted off the screen.
fn suspended<R>(f: impl FnOnce() -> R) -> R {
    let live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    match live.as_ref() {
        Some(l) => l.bar.suspend(f),
        None => f(),
    }
}

/// The command is over: the last step stays as a line with its time, the spinner goes.
/// Called before a result is printed (stdout may be the same terminal) and by `main`
/// before an error; a later step starts a new spinner.
pub fn finish() {
    let taken = LIVE.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(mut live) = taken {
        live.finish();
    }
}

impl Live {
    fn start(target: ProgressDrawTarget) -> Live {
        let template = if colour() {
            "{spinner:.cyan} {wide_msg} {elapsed:.dim}"
        } else {
            "{spinner} {wide_msg} {elapsed}"
        };
        let style = ProgressStyle::with_template(template)
            .expect("a fixed, valid template")
            .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ");
        let bar = ProgressBar::with_draw_target(None, target).with_style(style);
        // 10 frames a second: smooth enough to show life, cheap enough for a 2-core builder.
        bar.enable_steady_tick(Duration::from_millis(100));
        Live { bar, step: None }
    }

    /// The step on the spinner is done: it is printed with its time, `text` takes its place.
    fn advance(&mut self, text: String) {
        self.close_step();
        self.bar.reset_elapsed();
        self.bar.set_message(text.clone());
        self.step = Some((text, Instant::now()));
    }

    fn close_step(&mut self) {
        if let Some((text, started)) = self.step.take() {
            self.bar
                .println(format!("{text} ({})", seconds(started.elapsed())));
        }
    }

    fn finish(&mut self) {
        self.close_step();
        self.bar.finish_and_clear();
    }
}

/// `0.4s`, `12.3s`, `2m05s`.
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

/// tracing to stderr with `default` as the filter unless `HAIMG_LOG` sets one; each event
/// is written with the spinner out of the way.
pub fn init_tracing(default: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("HAIMG_LOG").unwrap_or_else(|_| default.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| AboveSpinner(Vec::new()))
        .with_ansi(colour())
        .with_target(false)
        .try_init();
}

/// One tracing event, buffered, then written in one piece with the spinner lifted.
struct AboveSpinner(Vec<u8>);

impl Write for AboveSpinner {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for AboveSpinner {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let buf = std::mem::take(&mut self.0);
        suspended(|| {
            let _ = std::io::stderr().lock().write_all(&buf);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::InMemoryTerm;

    #[test]
    fn quiet_wins_and_a_spinner_needs_a_terminal() {
        assert_eq!(choose(true, false, true), Mode::Quiet);
        assert_eq!(choose(true, true, false), Mode::Quiet);
        assert_eq!(choose(false, false, true), Mode::Live);
        assert_eq!(choose(false, true, true), Mode::Lines);
        assert_eq!(choose(false, false, false), Mode::Lines);
    }

    #[test]
    fn durations_read_as_seconds_then_minutes() {
        assert_eq!(seconds(Duration::from_millis(420)), "0.4s");
        assert_eq!(seconds(Duration::from_millis(12_345)), "12.3s");
        assert_eq!(seconds(Duration::from_secs(125)), "2m05s");
    }

    /// The screen a person sees: finished steps as lines with their times, in order, and
    /// the current one on the spinner line below them; at the end, no spinner left.
    #[test]
    fn finished_steps_stay_as_lines_and_the_spinner_shows_the_current_one() {
        let term = InMemoryTerm::new(10, 80);
        let mut live = Live::start(ProgressDrawTarget::term_like(Box::new(term.clone())));
        live.bar.disable_steady_tick();
        live.advance("haimg bake: [1/3] base image".into());
        live.bar.tick();
        let screen = term.contents();
        assert!(
            screen
                .lines()
                .next()
                .unwrap()
                .contains("haimg bake: [1/3] base image"),
            "{screen}"
        );
        live.advance("haimg bake: [2/3] provisioning".into());
        live.bar.tick();
        let screen = term.contents();
        let lines: Vec<&str> = screen.lines().collect();
        assert!(
            lines[0].starts_with("haimg bake: [1/3] base image (") && lines[0].ends_with("s)"),
            "{screen}"
        );
        assert!(
            lines[1].contains("haimg bake: [2/3] provisioning"),
            "{screen}"
        );
        assert!(
            !lines[1].contains("s)"),
            "the current step has no final time: {screen}"
        );
        live.finish();
        let screen = term.contents();
        let lines: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 2, "{screen}");
        assert!(
            lines[1].starts_with("haimg bake: [2/3] provisioning ("),
            "{screen}"
        );
    }
}
