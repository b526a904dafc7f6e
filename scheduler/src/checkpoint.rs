//! Checkpoints: `checkpoints/step_N/` holds HF-layout exports of the trained models (policy,
//! critic, reward model), the optimiser states, and `state.json` (stage, step, data position, KL
//! controller, reward shaping, seed). A checkpoint is written into a hidden staging folder and
//! renamed into place only when complete ([`crate::atomic::publish_dir`]), so a process killed
//! while saving leaves the previous checkpoint as the newest complete one; stale staging folders
//! are ignored and removed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::Cursor;

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Index of the stage to run (stages before it are finished).
    pub stage: usize,
    /// Steps finished in that stage.
    pub stage_step: u64,
    /// Steps finished over all stages (the `step` of metrics.jsonl).
    pub global_step: u64,
    /// Position in the stage's dataset.
    pub cursor: Cursor,
    /// The KL coefficient (the adaptive controller's state; fixed runs keep the config's).
    pub kl_coef: Option<f64>,
    /// Running statistics of reward normalisation.
    pub shaping: Option<reward::ShapingState>,
    /// Every random draw is a function of (seed, stage, step): the seed is the whole RNG state.
    pub seed: u64,
}

pub const STATE_FILE: &str = "state.json";

fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Complete checkpoints, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = checkpoints_dir(run_dir);
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(step) = name
            .strip_prefix("step_")
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if e.path().join(STATE_FILE).is_file() {
            out.push((step, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint of a run folder.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list(run_dir)?.pop().map(|(_, p)| p))
}

/// Reads a checkpoint's `state.json`.
pub fn read_state(ckpt: &Path) -> Result<TrainState> {
    let p = ckpt.join(STATE_FILE);
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a valid state", p.display()))
}

/// Writes checkpoint `step_{state.global_step}`: `write(staging)` stores the tensors, then the
/// state, then the folder is published atomically and all but the `keep` newest are deleted
/// (keep = 0: keep all).
pub fn save(
    run_dir: &Path,
    state: &TrainState,
    keep: usize,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dir = checkpoints_dir(run_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = format!("step_{}", state.global_step);
    let staging = dir.join(format!(".staging-{name}-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    write(&staging).with_context(|| format!("cannot write checkpoint {name}"))?;
    crate::atomic::write_file(
        &staging.join(STATE_FILE),
        &serde_json::to_vec_pretty(state)?,
    )?;
    let target = dir.join(&name);
    crate::atomic::publish_dir(&staging, &target)?;
    if keep > 0 {
        let all = list(run_dir)?;
        for (_, p) in all.iter().take(all.len().saturating_sub(keep)) {
            std::fs::remove_dir_all(p).ok();
        }
    }
    tracing::info!(checkpoint = %target.display(), "saved checkpoint");
    Ok(target)
}

/// Removes staging folders left by a process that died while saving.
pub fn remove_stale_staging(run_dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(checkpoints_dir(run_dir)) else {
        return Ok(());
    };
    for e in entries {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with(".staging-") {
            tracing::warn!(folder = %e.path().display(), "removing an incomplete checkpoint");
            std::fs::remove_dir_all(e.path()).ok();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64) -> TrainState {
        TrainState {
            global_step: step,
            stage_step: step,
            ..Default::default()
        }
    }

    #[test]
    fn keeps_the_newest_and_ignores_partial_ones() {
        let dir = tempfile::tempdir().unwrap();
        for s in [2, 4, 6] {
            save(dir.path(), &state(s), 2, |d| {
                std::fs::write(d.join("w"), s.to_string())?;
                Ok(())
            })
            .unwrap();
        }
        let all = list(dir.path()).unwrap();
        assert_eq!(all.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [4, 6]);
        // A save killed half-way: a staging folder with tensors but no state, and a published
        // name without state.json (as if the disk lost it) are both not checkpoints.
        let ck = dir.path().join("checkpoints");
        std::fs::create_dir_all(ck.join(".staging-step_8-1")).unwrap();
        std::fs::write(ck.join(".staging-step_8-1/w"), "partial").unwrap();
        std::fs::create_dir_all(ck.join("step_9")).unwrap();
        let newest = latest(dir.path()).unwrap().unwrap();
        assert!(newest.ends_with("step_6"));
        assert_eq!(read_state(&newest).unwrap(), state(6));
        remove_stale_staging(dir.path()).unwrap();
        assert!(!ck.join(".staging-step_8-1").exists());
    }
}
