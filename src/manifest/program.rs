//! Finding programs and interpreters once, at load time.
//!
//! A bare name (`python3`) is looked up on `PATH`; a name with a slash is taken
//! relative to the manifest directory. Python gets one more step: on machines
//! with pyenv, `python3` on `PATH` is a shell shim that costs 100–250 ms per
//! start, so when the file found is not a native executable we ask it once for
//! `sys.executable` and run that instead (about 25 ms a start).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the one-time `sys.executable` probe may take (a cold pyenv shim
/// has been seen to take a quarter of a second).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves program names, remembering each answer.
#[derive(Debug)]
pub struct Resolver {
    dir: PathBuf,
    cache: HashMap<String, Result<PathBuf, String>>,
    python3: Option<Result<PathBuf, String>>,
}

impl Resolver {
    pub fn new(dir: &Path) -> Self {
        Resolver {
            dir: dir.to_path_buf(),
            cache: HashMap::new(),
            python3: None,
        }
    }

    /// The file to exec for `name`.
    pub fn program(&mut self, name: &str) -> Result<PathBuf, String> {
        if let Some(found) = self.cache.get(name) {
            return found.clone();
        }
        let found = self.lookup(name);
        self.cache.insert(name.to_owned(), found.clone());
        found
    }

    /// The first Python 3 on `PATH` (`python3`, then `python`), for the built-in runner.
    pub fn first_python3(&mut self) -> Result<PathBuf, String> {
        if let Some(found) = &self.python3 {
            return found.clone();
        }
        let found = ["python3", "python"]
            .iter()
            .find_map(|name| {
                let path = self.program(name).ok()?;
                probe_python(&path, &self.dir)
                    .ok()
                    .filter(|probe| probe.major == 3)
                    .map(|probe| probe.executable)
            })
            .ok_or_else(|| {
                "no Python 3 interpreter found on PATH (looked for python3 and python)".to_owned()
            });
        self.python3 = Some(found.clone());
        found
    }

    fn lookup(&self, name: &str) -> Result<PathBuf, String> {
        let path = if name.contains('/') {
            let path = self.dir.join(name);
            if !path.exists() {
                return Err(format!("program not found: {}", path.display()));
            }
            path
        } else {
            let search = std::env::var_os("PATH").unwrap_or_default();
            which::which_in(name, Some(search), &self.dir)
                .map_err(|_| format!("program '{name}' not found on PATH"))?
        };
        if is_python_name(name) && !is_native_executable(&path) {
            return probe_python(&path, &self.dir).map(|probe| probe.executable);
        }
        Ok(path)
    }
}

fn is_python_name(name: &str) -> bool {
    Path::new(name)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("python"))
}

/// True for an ELF binary; false for a script (such as a pyenv shim).
fn is_native_executable(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == b"\x7fELF")
}

#[derive(Debug)]
struct PythonProbe {
    executable: PathBuf,
    major: u32,
}

/// Runs `path` once to learn the real interpreter behind it and its version.
fn probe_python(path: &Path, dir: &Path) -> Result<PythonProbe, String> {
    const SCRIPT: &str = "import sys; print(sys.executable); print(sys.version_info[0])";
    let mut child = Command::new(path)
        .args(["-c", SCRIPT])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not answer within {}s",
                    path.display(),
                    PROBE_TIMEOUT.as_secs()
                ));
            }
        }
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    let mut lines = out.lines();
    let executable = lines.next().filter(|l| !l.is_empty());
    let major = lines.next().and_then(|l| l.trim().parse().ok());
    match (executable, major) {
        (Some(exe), Some(major)) => Ok(PythonProbe {
            executable: PathBuf::from(exe),
            major,
        }),
        _ => Err(format!(
            "{} is not a working Python interpreter",
            path.display()
        )),
    }
}
