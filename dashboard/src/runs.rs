//! Finding run folders under the log directory, and turning a run name from a request into a path
//! that is guaranteed to lie inside it.
//!
//! A run folder is any directory under the log directory that holds a metrics.jsonl; its name is its
//! path relative to the log directory with '/' separators ("ppo/seed1"). docs/run-folder.md is the
//! contract for what a run folder holds.

use std::path::{Component, Path, PathBuf};
use thiserror::Error;

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const TIMELINE_FILE: &str = "timeline.jsonl";
pub const CONFIG_FILE: &str = "config.toml";
pub const SAMPLES_DIR: &str = "samples";

/// How deep below the log directory runs are looked for ("group/sweep/seed" is depth 3).
const MAX_DEPTH: usize = 6;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RunPathError {
    #[error("run name {0:?} is not a relative path inside the log directory")]
    Outside(String),
    #[error("no run named {0:?} in the log directory")]
    NotFound(String),
    #[error("{0:?} is a folder in the log directory but not a run (it has no metrics.jsonl)")]
    NotARun(String),
}

/// Resolves a run name to its folder. `logdir` must already be canonical.
///
/// Two layers: the name itself may only hold plain components (no "..", no root, no drive, no
/// backslash or NUL), and the canonical result (symlinks followed) must still start with `logdir`,
/// so a symlink inside the log directory cannot lead out of it either.
pub fn resolve_run(logdir: &Path, name: &str) -> Result<PathBuf, RunPathError> {
    let outside = || RunPathError::Outside(name.to_string());
    if name.is_empty() || name.contains(['\\', '\0']) {
        return Err(outside());
    }
    let rel = Path::new(name);
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(outside())
            }
        }
    }
    let canonical = logdir
        .join(rel)
        .canonicalize()
        .map_err(|_| RunPathError::NotFound(name.to_string()))?;
    if !canonical.starts_with(logdir) {
        return Err(outside());
    }
    if !canonical.join(METRICS_FILE).is_file() {
        return Err(RunPathError::NotARun(name.to_string()));
    }
    Ok(canonical)
}

/// Every run under `logdir` (canonical), by name, sorted. Runs do not nest: the walk does not go
/// into a run folder's own subfolders (checkpoints, tb, samples). Unreadable folders are skipped.
pub fn list_runs(logdir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(logdir, logdir, 0, &mut out);
    out.sort();
    out
}

fn walk(logdir: &Path, dir: &Path, depth: usize, out: &mut Vec<String>) {
    if dir.join(METRICS_FILE).is_file() {
        if let Some(name) = run_name(logdir, dir) {
            out.push(name);
        }
        return;
    }
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut subdirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    for sub in subdirs {
        // A symlink may point outside the log directory (or back up into it, looping): only
        // folders whose real path stays inside are listed, the same rule resolve_run applies.
        match sub.canonicalize() {
            Ok(real) if real.starts_with(logdir) && real != logdir => {
                walk(logdir, &sub, depth + 1, out)
            }
            _ => {}
        }
    }
}

fn run_name(logdir: &Path, dir: &Path) -> Option<String> {
    let rel = dir.strip_prefix(logdir).ok()?;
    if rel.as_os_str().is_empty() {
        // The log directory is itself a run folder (`realign dashboard --logdir runs/ppo`).
        return Some(".".to_string());
    }
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

/// The steps that have a samples/step_N.jsonl file, sorted.
pub fn sample_steps(run: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(run.join(SAMPLES_DIR)) else {
        return Vec::new();
    };
    let mut steps: Vec<u64> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            name.strip_prefix("step_")?
                .strip_suffix(".jsonl")?
                .parse()
                .ok()
        })
        .collect();
    steps.sort_unstable();
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn make_run(dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join(METRICS_FILE), "{\"step\":1}\n").unwrap();
    }

    #[test]
    fn lists_nested_runs_but_not_inside_a_run() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        make_run(&root.join("ppo/seed1"));
        make_run(&root.join("ppo/seed1/checkpoints/inner"));
        make_run(&root.join("grpo"));
        fs::create_dir_all(root.join("empty")).unwrap();
        assert_eq!(list_runs(&root), vec!["grpo", "ppo/seed1"]);
    }

    #[test]
    fn resolve_accepts_runs_and_rejects_escapes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("logs");
        make_run(&root.join("ppo/seed1"));
        make_run(&tmp.path().join("secret"));
        fs::create_dir_all(root.join("notarun")).unwrap();
        let root = root.canonicalize().unwrap();

        assert_eq!(
            resolve_run(&root, "ppo/seed1").unwrap(),
            root.join("ppo/seed1")
        );
        assert_eq!(
            resolve_run(&root, "./ppo/seed1").unwrap(),
            root.join("ppo/seed1")
        );
        for bad in [
            "../secret",
            "ppo/../../secret",
            "/etc",
            "..",
            "",
            "ppo\\..\\..\\secret",
            "a\0b",
        ] {
            assert_eq!(
                resolve_run(&root, bad),
                Err(RunPathError::Outside(bad.to_string())),
                "{bad:?}"
            );
        }
        assert_eq!(
            resolve_run(&root, "nope"),
            Err(RunPathError::NotFound("nope".into()))
        );
        assert_eq!(
            resolve_run(&root, "notarun"),
            Err(RunPathError::NotARun("notarun".into()))
        );
        // Still-encoded names are literal folder names, not escapes.
        assert_eq!(
            resolve_run(&root, "%2e%2e/secret"),
            Err(RunPathError::NotFound("%2e%2e/secret".into()))
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_out_of_the_log_directory_is_neither_listed_nor_served() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("logs");
        make_run(&root.join("ok"));
        make_run(&tmp.path().join("secret"));
        std::os::unix::fs::symlink(tmp.path().join("secret"), root.join("link")).unwrap();
        // A loop back to the log directory itself must not be walked forever.
        std::os::unix::fs::symlink(&root, root.join("ok_loop")).unwrap();
        let root = root.canonicalize().unwrap();
        assert_eq!(list_runs(&root), vec!["ok"]);
        assert_eq!(
            resolve_run(&root, "link"),
            Err(RunPathError::Outside("link".into()))
        );
    }

    #[test]
    fn sample_steps_are_numeric_and_sorted() {
        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path().join(SAMPLES_DIR);
        fs::create_dir_all(&s).unwrap();
        for f in ["step_10.jsonl", "step_2.jsonl", "step_x.jsonl", "notes.txt"] {
            fs::write(s.join(f), "").unwrap();
        }
        assert_eq!(sample_steps(tmp.path()), vec![2, 10]);
    }
}
