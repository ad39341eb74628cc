//! `fastworker init [DIR]`: a starter project (a commented `tasks.toml`, a
//! Python task module, a script, and the manifest's JSON Schema for the
//! editor), never over a file that exists; and `fastworker schema`.

use std::path::{Path, PathBuf};

use super::error::{CliError, CliResult};

/// The starter files, by name. `tasks.toml` has the shapes of
/// `tasks.toml.example` (a test keeps them in step).
pub const STARTER: [(&str, &str); 3] = [
    ("tasks.toml", include_str!("starter/tasks.toml")),
    ("tasks.py", include_str!("starter/tasks.py")),
    ("add.py", include_str!("starter/add.py")),
];

/// Where `tasks.toml`'s `#:schema` line points.
pub const SCHEMA_FILE: &str = "tasks.schema.json";

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The directory to write to (made if missing)
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

/// `fastworker schema`: the manifest's JSON Schema on stdout.
pub fn schema() -> CliResult {
    println!("{}", schema_text());
    Ok(())
}

fn schema_text() -> String {
    serde_json::to_string_pretty(&crate::manifest::schema::manifest_schema())
        .unwrap_or_else(|_| "{}".to_owned())
}

/// `fastworker init [DIR]`.
pub fn init(args: &InitArgs) -> CliResult {
    let dir = &args.dir;
    let files: Vec<(PathBuf, String)> = STARTER
        .iter()
        .map(|(name, text)| (dir.join(name), (*text).to_owned()))
        .chain(std::iter::once((
            dir.join(SCHEMA_FILE),
            schema_text() + "\n",
        )))
        .collect();
    let taken: Vec<String> = files
        .iter()
        .filter(|(path, _)| path.symlink_metadata().is_ok())
        .map(|(path, _)| {
            format!(
                "{} exists; init writes nothing over a file (move it, or init another directory)",
                path.display()
            )
        })
        .collect();
    if !taken.is_empty() {
        return Err(CliError::Problems {
            lines: taken,
            code: super::error::EXIT_UNUSABLE,
        });
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::Unusable(format!("cannot make {}: {e}", dir.display())))?;
    for (path, text) in &files {
        write_new(path, text)?;
        println!("wrote {}", path.display());
    }
    let cd = if dir == Path::new(".") {
        String::new()
    } else {
        format!("cd {} && ", shell_word(&dir.display().to_string()))
    };
    println!();
    println!("Next:");
    println!("  {cd}fastworker run add 5 3        # runs a task here and now: prints 8");
    println!(
        "  {cd}fastworker control-plane      # serves the tasks; then, elsewhere: fastworker submit add 5 3"
    );
    Ok(())
}

/// Writes a file that must not exist yet (a file made meanwhile is not
/// overwritten either).
fn write_new(path: &Path, text: &str) -> CliResult {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| CliError::Unusable(format!("cannot write {}: {e}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(|e| CliError::Unusable(format!("cannot write {}: {e}", path.display())))
}

/// `text` as one shell word.
fn shell_word(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./+:@".contains(c))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
