//! The datasets of a run (RL prompts, held-out prompts, SFT pairs, preference pairs), from the
//! synthetic task or JSONL files, and the resumable position in each.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{Config, DataConfig};
use crate::synthetic::arithmetic;

/// One RL prompt; `extra` holds the row's other fields (e.g. `answer`) for rule rewards.
#[derive(Clone, Debug)]
pub struct PromptRow {
    pub prompt: String,
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug)]
pub struct SftRow {
    pub prompt: String,
    pub response: String,
}

#[derive(Clone, Debug)]
pub struct PrefRow {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

/// Everything a run reads, loaded once (the files are small next to the model).
#[derive(Default)]
pub struct Datasets {
    pub prompts: Vec<PromptRow>,
    pub eval_prompts: Vec<PromptRow>,
    pub sft: Vec<SftRow>,
    pub preferences: Vec<PrefRow>,
}

/// Seeds of the synthetic splits: one per split, so the sets are independent.
const SEED_EVAL: u64 = 0x0e7a_1000;
const SEED_PREFS: u64 = 0x9ef5_2000;

impl Datasets {
    pub fn load(cfg: &Config) -> Result<Datasets> {
        let d = &cfg.data;
        let mut out = Datasets::default();
        if let Some(s) = &d.synthetic {
            let seed = cfg.run.seed;
            let train = arithmetic::problems(seed, s.train_size, s.max_operand);
            out.prompts = train
                .iter()
                .map(|p| PromptRow {
                    prompt: apply_template(d, &p.prompt),
                    extra: answer_extra(d, &p.answer),
                })
                .collect();
            out.sft = train
                .iter()
                .map(|p| SftRow {
                    prompt: apply_template(d, &p.prompt),
                    response: p.answer.clone(),
                })
                .collect();
            out.eval_prompts = arithmetic::problems(seed ^ SEED_EVAL, s.eval_size, s.max_operand)
                .iter()
                .map(|p| PromptRow {
                    prompt: apply_template(d, &p.prompt),
                    extra: answer_extra(d, &p.answer),
                })
                .collect();
            out.preferences =
                arithmetic::preference_pairs(seed ^ SEED_PREFS, s.train_size, s.max_operand)
                    .into_iter()
                    .map(|(prompt, chosen, rejected)| PrefRow {
                        prompt: apply_template(d, &prompt),
                        chosen,
                        rejected,
                    })
                    .collect();
        }
        if let Some(p) = &d.prompts {
            out.prompts = read_prompts(p, d, "data.prompts")?;
        }
        if let Some(p) = &d.eval_prompts {
            out.eval_prompts = read_prompts(p, d, "data.eval_prompts")?;
        }
        if let Some(p) = &d.sft {
            out.sft = read_jsonl(p, "data.sft")?
                .into_iter()
                .enumerate()
                .map(|(i, mut row)| {
                    Ok(SftRow {
                        prompt: apply_template(d, &take_str(&mut row, "prompt", p, i)?),
                        response: take_str(&mut row, "response", p, i)?,
                    })
                })
                .collect::<Result<_>>()?;
        }
        if let Some(p) = &d.preferences {
            out.preferences = read_jsonl(p, "data.preferences")?
                .into_iter()
                .enumerate()
                .map(|(i, mut row)| {
                    Ok(PrefRow {
                        prompt: apply_template(d, &take_str(&mut row, "prompt", p, i)?),
                        chosen: take_str(&mut row, "chosen", p, i)?,
                        rejected: take_str(&mut row, "rejected", p, i)?,
                    })
                })
                .collect::<Result<_>>()?;
        }
        Ok(out)
    }
}

fn answer_extra(d: &DataConfig, answer: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(d.answer_key.clone(), Value::String(answer.to_string()));
    m
}

fn apply_template(d: &DataConfig, prompt: &str) -> String {
    match &d.prompt_template {
        Some(t) => t.replace("{prompt}", prompt),
        None => prompt.to_string(),
    }
}

fn read_jsonl(path: &Path, key: &str) -> Result<Vec<Map<String, Value>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("`{key}`: cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).with_context(|| {
            format!(
                "`{key}`: line {} of {} is not valid JSON",
                i + 1,
                path.display()
            )
        })?;
        match v {
            Value::Object(m) => rows.push(m),
            _ => bail!(
                "`{key}`: line {} of {} is not a JSON object",
                i + 1,
                path.display()
            ),
        }
    }
    if rows.is_empty() {
        bail!("`{key}`: {} has no rows", path.display());
    }
    Ok(rows)
}

fn take_str(row: &mut Map<String, Value>, field: &str, path: &Path, i: usize) -> Result<String> {
    match row.remove(field) {
        Some(Value::String(s)) => Ok(s),
        _ => bail!(
            "row {} of {} has no string field `{field}`",
            i + 1,
            path.display()
        ),
    }
}

fn read_prompts(path: &Path, d: &DataConfig, key: &str) -> Result<Vec<PromptRow>> {
    read_jsonl(path, key)?
        .into_iter()
        .enumerate()
        .map(|(i, mut row)| {
            if row.contains_key("messages") {
                bail!("`{key}`: row {} of {} has `messages`, which is not supported yet; give `prompt` text (with `data.chat_template = true` it becomes one user message)", i + 1, path.display());
            }
            let prompt = take_str(&mut row, "prompt", path, i)?;
            Ok(PromptRow {
                prompt: apply_template(d, &prompt),
                extra: row,
            })
        })
        .collect()
}

/// Where a stage is in its dataset: a fresh seeded permutation per epoch, so that the order is a
/// function of (seed, epoch) and a resumed run draws exactly the rows the uninterrupted run would.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    pub index: usize,
}

impl Cursor {
    /// The next `n` row indices of a dataset of `len` rows (wrapping into new epochs).
    pub fn take(&mut self, n: usize, len: usize, seed: u64) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        let mut perm = permutation(seed, self.epoch, len);
        while out.len() < n {
            if self.index >= len {
                self.epoch += 1;
                self.index = 0;
                perm = permutation(seed, self.epoch, len);
            }
            out.push(perm[self.index]);
            self.index += 1;
        }
        out
    }
}

fn permutation(seed: u64, epoch: u64, len: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..len).collect();
    let mut rng = StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    idx.shuffle(&mut rng);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_resumes_the_same_order() {
        let mut a = Cursor::default();
        let straight: Vec<usize> = (0..5).flat_map(|_| a.take(3, 7, 11)).collect();
        let mut b = Cursor::default();
        let mut resumed: Vec<usize> = (0..2).flat_map(|_| b.take(3, 7, 11)).collect();
        let saved = serde_json::to_string(&b).unwrap();
        let mut c: Cursor = serde_json::from_str(&saved).unwrap();
        resumed.extend((0..3).flat_map(|_| c.take(3, 7, 11)));
        assert_eq!(straight, resumed);
        // Every epoch is a permutation of all rows.
        let mut first: Vec<usize> = straight[..7].to_vec();
        first.sort();
        assert_eq!(first, (0..7).collect::<Vec<_>>());
    }
}
