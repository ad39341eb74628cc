//! `fastworker journal check|repair`: the operator's look at a data dir's
//! journal, and the way out when it is damaged.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::error::{CliError, CliResult, EXIT_FAILED};
use crate::journal::recover;

#[derive(Debug, Args)]
pub struct JournalArgs {
    #[command(subcommand)]
    pub action: JournalAction,
}

#[derive(Debug, Subcommand)]
pub enum JournalAction {
    /// Read the journal and say what it holds and what is wrong with it,
    /// changing nothing (safe while a control plane runs); exit 1 if
    /// acknowledged changes are unreadable
    Check(DataDirArgs),
    /// Rewrite the journal with every readable record (the control plane
    /// must be stopped): undecodable records go to quarantine/, the
    /// original file is kept beside the new one
    Repair(DataDirArgs),
}

#[derive(Debug, Args)]
pub struct DataDirArgs {
    /// The control plane's data dir
    #[arg(long, env = "FASTWORKER_DATA_DIR", default_value = ".fastworker")]
    pub data_dir: PathBuf,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn journal(args: &JournalArgs) -> CliResult {
    let (report, repairing) = match &args.action {
        JournalAction::Check(a) => (recover::check(&a.data_dir), false),
        JournalAction::Repair(a) => (recover::repair(&a.data_dir), true),
    };
    let json = match &args.action {
        JournalAction::Check(a) | JournalAction::Repair(a) => a.json,
    };
    let report = report.map_err(|e| CliError::Unusable(e.to_string()))?;
    if json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        print!("{report}");
    }
    match (repairing, report.healthy(), &report.kept_original) {
        (false, true, _) => {
            if !json {
                println!("ok: every acknowledged change is readable");
            }
            Ok(())
        }
        (false, false, _) => {
            if !json && !report.damaged.is_empty() {
                println!(
                    "the control plane will not start on this journal: stop it (if it runs) and run `fastworker journal repair`"
                );
            } else if !json {
                println!(
                    "the control plane starts on this journal: it quarantines the undecodable records (their bytes are kept in quarantine/) and takes back the rest"
                );
            }
            Err(CliError::Exit(EXIT_FAILED))
        }
        (true, _, None) => {
            if !json {
                println!("nothing to repair");
            }
            Ok(())
        }
        (true, _, Some(_)) => {
            if !json {
                println!("repaired: the journal now holds every readable record");
            }
            Ok(())
        }
    }
}
