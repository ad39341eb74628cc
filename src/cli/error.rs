//! What a command's failure is, and the exit code each kind gets: the one
//! place the CLI turns errors into exit codes (see `cli::main`).
//!
//! Exit codes: 0 success; 1 the task ran and did not succeed (or `check`
//! found problems, or `status`/`cancel` found no such task); 2 it could not
//! be run or submitted (bad manifest, unknown task, bad arguments, queue
//! full, control plane unreachable or shutting down); 124 `submit` stopped
//! waiting before the task ended; 130 interrupted by Ctrl-C.

use super::args::ConnectArgs;
use super::output::shown;

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_UNUSABLE: u8 = 2;
pub const EXIT_STILL_RUNNING: u8 = 124;
pub const EXIT_INTERRUPTED: u8 = 130;

/// Why a command did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// It could not do what was asked: bad arguments, an unknown task, a
    /// refusal. Exit 2.
    Unusable(String),
    /// Several problems, each a line (a manifest's), with the exit code.
    Problems { lines: Vec<String>, code: u8 },
    /// The control plane could not be reached, with a hint. Exit 2.
    Unreachable { error: String, hint: Option<String> },
    /// The task ran and did not succeed, or what was asked for does not
    /// exist: the text may hold more lines (a traceback). Exit 1.
    Failed(String),
    /// A blocking submit stopped waiting, saying what became of the task.
    /// Exit 124.
    StillRunning(String),
    /// Interrupted by Ctrl-C, saying what became of the task. Exit 130.
    Interrupted(String),
    /// The task was cancelled (Ctrl-C on `run`): how it ended. Exit 130.
    Cancelled(String),
    /// The command has printed what it had to say; only the code remains.
    Exit(u8),
}

impl CliError {
    pub fn code(&self) -> u8 {
        match self {
            CliError::Unusable(_) | CliError::Unreachable { .. } => EXIT_UNUSABLE,
            CliError::Problems { code, .. } | CliError::Exit(code) => *code,
            CliError::Failed(_) => EXIT_FAILED,
            CliError::StillRunning(_) => EXIT_STILL_RUNNING,
            CliError::Interrupted(_) | CliError::Cancelled(_) => EXIT_INTERRUPTED,
        }
    }

    /// Writes it to stderr, control characters escaped.
    pub fn print(&self) {
        match self {
            CliError::Unusable(e) | CliError::Failed(e) | CliError::Cancelled(e) => {
                eprintln!("error: {}", shown(e));
            }
            CliError::Problems { lines, .. } => {
                for line in lines {
                    eprintln!("error: {}", shown(line));
                }
            }
            CliError::Unreachable { error, hint } => {
                eprintln!("error: {}", shown(error));
                if let Some(hint) = hint {
                    eprintln!("{hint}");
                }
            }
            CliError::StillRunning(text) | CliError::Interrupted(text) => {
                eprintln!("{}", shown(text));
            }
            CliError::Exit(_) => {}
        }
    }

    /// A client error: an unreachable control plane gets a hint at what to
    /// check.
    pub fn unreachable(e: &crate::client::ClientError, connect: &ConnectArgs) -> CliError {
        let dial_failed = matches!(
            e,
            crate::client::ClientError::Transport(crate::transport::TransportError::Dial { .. })
        );
        CliError::Unreachable {
            error: e.to_string(),
            hint: match connect.target() {
                super::args::Target::Base(base) if dial_failed => Some(format!(
                    "is `fastworker control-plane` running with --base-address {base}?"
                )),
                _ => None,
            },
        }
    }

    /// A manifest that cannot be used: every problem on its own line.
    pub fn manifest(e: &crate::manifest::ManifestError, code: u8) -> CliError {
        let lines = match e {
            crate::manifest::ManifestError::Invalid { problems } => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => vec![other.to_string()],
        };
        CliError::Problems { lines, code }
    }
}

/// What a command returns.
pub type CliResult = Result<(), CliError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_code() {
        assert_eq!(CliError::Unusable("x".into()).code(), 2);
        assert_eq!(CliError::Failed("x".into()).code(), 1);
        assert_eq!(CliError::StillRunning("x".into()).code(), 124);
        assert_eq!(CliError::Interrupted("x".into()).code(), 130);
        assert_eq!(CliError::Exit(7).code(), 7);
        let problems = CliError::Problems {
            lines: vec!["a".into()],
            code: 1,
        };
        assert_eq!(problems.code(), 1);
    }
}
