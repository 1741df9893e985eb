//! Errors and diagnostics.
//!
//! Two families, matching the exit codes of the command line (DESIGN §3):
//! * [`Error::Invalid`] / [`Error::Usage`]: the user's input is wrong (exit 2). Invalid input
//!   carries every [`Diagnostic`] found, each naming file, line:column and field path.
//! * everything else is a runtime failure (exit 1).
//!
//! Convention: a `Display` of an error prints the whole chain on one line, outermost first,
//! separated by `: `. `main` prints it once, prefixed with `error: `.

use std::fmt;
use std::path::PathBuf;

/// A position in a source file, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// One problem with the user's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Display name of the source: a path, or `<embedded example>`.
    pub file: String,
    pub pos: Option<Pos>,
    /// Field path in the document, e.g. `spec.controlPlane.count` (empty for the whole file).
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(p) = self.pos {
            write!(f, ":{}:{}", p.line, p.col)?;
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one or more input files, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }
    /// Sorts by file and position; diagnostics without a position keep their order at the end.
    pub fn sort(&mut self) {
        self.0.sort_by(|a, b| {
            a.file.cmp(&b.file).then_with(|| match (a.pos, b.pos) {
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            })
        });
        self.0.dedup();
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input files are invalid (exit 2).
    #[error("{0}")]
    Invalid(Diagnostics),
    /// The command line is wrong, or names something that does not exist (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Reading or writing a local file failed (exit 1).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A template failed to render: a defect in haimg or in a `--templates` override (exit 1).
    #[error("template {name}: {message}")]
    Template { name: String, message: String },
    /// An AWS call failed (after the SDK's retries for transient errors) (exit 1).
    #[error("{what}: {message}")]
    Aws { what: String, message: String },
    /// Something on the node or in the cluster did not go as it must (exit 1).
    #[error("{0}")]
    Runtime(String),
    /// A bounded wait ran out (exit 1).
    #[error("timed out: {0}")]
    Timeout(String),
    /// `kubeadm init` or `join`, or a step that completes them, failed and the node was
    /// reset: bootstrap may try again (exit 1).
    #[error("{0}")]
    Kubeadm(String),
    /// A lease (the init or rotation lock) was taken over while its holder worked: what
    /// it made under the lease must not be published (exit 1).
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// Rendered output breaks a hard limit (e.g. the 16 KB EC2 user-data limit) (exit 2:
    /// the spec asks for more than fits).
    #[error("{0}")]
    Limit(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Invalid(_) | Error::Usage(_) | Error::Limit(_) => 2,
            Error::Io { .. }
            | Error::Template { .. }
            | Error::Aws { .. }
            | Error::Runtime(_)
            | Error::Kubeadm(_)
            | Error::LeaseLost(_)
            | Error::Timeout(_) => 1,
        }
    }

    /// An AWS error, with the SDK's full cause chain, about `what` (an operation and the
    /// resource it was about, never a secret).
    pub fn aws<E: std::error::Error>(what: impl Into<String>) -> impl FnOnce(E) -> Error {
        let what = what.into();
        move |e| Error::Aws {
            what,
            message: aws_sdk_ssm::error::DisplayErrorContext(&e).to_string(),
        }
    }

    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its sources, one line: `outer: cause: root cause` (tera, reqwest and the
/// SDK keep the useful part in the source chain).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
}
