//! Crash-safe writes: a file or folder appears complete or not at all.
//!
//! Write to a temporary name in the same folder, flush to disk, then rename over the target. Rename
//! within one filesystem is atomic, so a reader (or a resumed run after a kill) sees either the old
//! content or the new, never a mix.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `bytes` to `path` atomically.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create folder {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} into place", path.display()))?;
    sync_dir(dir);
    Ok(())
}

/// Makes a completed folder visible under `target` atomically: `staging` (fully written and synced by
/// the caller) is renamed to `target`; an existing `target` is first moved aside and removed after.
pub fn publish_dir(staging: &Path, target: &Path) -> Result<()> {
    let parent = target.parent().unwrap_or(Path::new("."));
    let old = parent.join(format!(
        ".{}.old-{}",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let had_old = target.exists();
    if had_old {
        std::fs::rename(target, &old)
            .with_context(|| format!("cannot move aside {}", target.display()))?;
    }
    std::fs::rename(staging, target)
        .with_context(|| format!("cannot publish {}", target.display()))?;
    sync_dir(parent);
    if had_old {
        std::fs::remove_dir_all(&old).ok();
    }
    Ok(())
}

/// Flushes a folder's entries (the rename itself) to disk; best effort on platforms without it.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        d.sync_all().ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_file_replaces_content_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_file(&p, b"one").unwrap();
        write_file(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn publish_dir_swaps_folders() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("ckpt");
        for content in ["first", "second"] {
            let staging = dir.path().join(".staging");
            std::fs::create_dir_all(&staging).unwrap();
            std::fs::write(staging.join("f"), content).unwrap();
            publish_dir(&staging, &target).unwrap();
        }
        assert_eq!(std::fs::read_to_string(target.join("f")).unwrap(), "second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
