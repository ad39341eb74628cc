//! Checking that the Python functions a manifest names can be imported,
//! with the interpreter that will run them (`fastworker check`, and every
//! reload).

use super::{HowToRun, Manifest};

impl Manifest {
    /// The Python runner tasks' `module:function`s, imported with the
    /// interpreter that will run them: problems, one a line.
    pub fn import_problems(&self) -> Vec<String> {
        let manifest = self;
        use std::collections::BTreeMap;
        // (interpreter, its args, root) → [(task, function)]
        type Key = (std::path::PathBuf, Vec<String>, std::path::PathBuf);
        let mut groups: BTreeMap<Key, Vec<(&super::TaskSpec, &str)>> = BTreeMap::new();
        for task in manifest.tasks.values() {
            let (HowToRun::Runner { function, .. }, Ok(program)) =
                (&task.how, &task.launch.program)
            else {
                continue;
            };
            // Only the built-in Python runner: `… -c <runner> … --root DIR`.
            let args: Vec<String> = task
                .launch
                .args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let Some(c) = args.iter().position(|a| a == "-c") else {
                continue;
            };
            if args.get(c + 1).map(String::as_str) != Some(crate::runners::PYTHON_RUNNER) {
                continue;
            }
            let Some(root) = args
                .iter()
                .position(|a| a == "--root")
                .and_then(|i| args.get(i + 1))
            else {
                continue;
            };
            if matches!(task.origin, super::Origin::Module { .. }) {
                continue; // imported when the modules were read
            }
            groups
                .entry((program.clone(), args[..c].to_vec(), root.into()))
                .or_default()
                .push((task, function));
        }
        let mut problems = Vec::new();
        for ((python, args, root), tasks) in groups {
            let functions: Vec<&str> = tasks.iter().map(|(_, f)| *f).collect();
            match crate::runners::check_functions(&python, &args, &root, &functions) {
                Ok(checks) => {
                    for ((task, _), check) in tasks.iter().zip(checks) {
                        if let (false, Some(error)) = (check.ok, check.error) {
                            problems.push(format!(
                                "{}: [tasks.{}] key `function`: {error}",
                                task.origin.describe(&manifest.path),
                                task.name
                            ));
                        }
                    }
                }
                Err(e) => problems.push(format!("cannot check the Python functions: {e}")),
            }
        }
        problems
    }
}
