//! Tasks from Python task modules (`--task-modules`): every `@task`
//! function becomes a task run by the Python runner (the manifest's
//! `[runners.python]`, or the predefined one), with the manifest's
//! `[defaults]`, beside the manifest's own tasks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Cx, Options, RunnerDef, Spec};
use crate::manifest::error::Problem;
use crate::manifest::{HowToRun, Origin, TaskSpec};

/// The task modules to import, and where from (the working directory; and
/// `PYTHONPATH`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskModules {
    pub names: Vec<String>,
    pub root: PathBuf,
}

impl TaskModules {
    /// `names` (each may hold several, separated by commas or spaces),
    /// found from the working directory.
    pub fn new(names: &[String]) -> TaskModules {
        TaskModules {
            names: names
                .iter()
                .flat_map(|n| n.split([',', ' ']))
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect(),
            root: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        }
    }
}

impl Cx<'_> {
    pub(super) fn module_tasks(
        &mut self,
        modules: &TaskModules,
        defaults: &Options,
        runners: &BTreeMap<String, RunnerDef>,
        manifest_lines: &BTreeMap<String, usize>,
        tasks: &mut BTreeMap<String, Arc<TaskSpec>>,
    ) {
        let from = format!("--task-modules {}", modules.names.join(" "));
        let Some(runner) = runners.get("python") else {
            // The manifest's [runners.python] is wrong: reported there.
            return;
        };
        let (python, args) = match &runner.interpreter {
            Ok(found) => found.clone(),
            Err(e) => {
                self.loose(&from, format!("cannot import the task modules: {e}"));
                return;
            }
        };
        let found = match crate::runners::discover(&python, &args, &modules.root, &modules.names) {
            Ok(found) => found,
            Err(e) => {
                self.loose(&from, e);
                return;
            }
        };
        for error in &found.errors {
            let what = match &error.task {
                Some(task) => format!("task '{task}': {}", error.error),
                None => error.error.clone(),
            };
            self.loose(&format!("--task-modules {}", error.module), what);
        }
        for task in &found.tasks {
            let file = PathBuf::from(&task.file);
            let place = format!("{}:{}", shown_path(&file, &modules.root), task.line);
            if let Some(line) = manifest_lines.get(&task.name) {
                let message = format!(
                    "task '{}' is defined twice: here, and by @task in module {} ({place}); rename one",
                    task.name, task.module
                );
                self.problems.push(Problem {
                    file: self.loc.file.clone(),
                    line: *line,
                    column: 1,
                    table: Some(format!("tasks.{}", task.name)),
                    key: None,
                    message,
                });
                continue;
            }
            let schedule = match task.schedule.as_ref().map(super::schedule::from_decorator) {
                Some(Ok(s)) => Some(s),
                None => None,
                Some(Err(e)) => {
                    self.at(&file, task.line, format!("@task '{}': {e}", task.name));
                    continue;
                }
            };
            let options = runner.options.clone().or(defaults);
            let spec = self.spec(Spec {
                name: &task.name,
                description: task.doc.clone(),
                how: HowToRun::Runner {
                    runner: "python".to_owned(),
                    function: task.target.clone(),
                },
                runner: Some(runner),
                options,
                origin: Origin::Module {
                    module: task.module.clone(),
                    file,
                    line: task.line,
                },
                schedule,
                root: &modules.root,
            });
            tasks.insert(task.name.clone(), Arc::new(spec));
        }
    }

    /// A problem with no line in the manifest.
    fn loose(&mut self, what: &str, message: String) {
        self.problems.push(Problem {
            file: PathBuf::from(what),
            line: 0,
            column: 0,
            table: None,
            key: None,
            message,
        });
    }

    fn at(&mut self, file: &Path, line: usize, message: String) {
        self.problems.push(Problem {
            file: file.to_path_buf(),
            line,
            column: 1,
            table: None,
            key: None,
            message,
        });
    }
}

/// `path` relative to `root` when it is under it.
fn shown_path(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}
