//! Loading a Hugging Face checkpoint folder.
//!
//! The safetensors files are memory-mapped, so only the tensors we convert are paged in, and each
//! tensor is converted straight from the mapped bytes into the requested dtype (f32 / bf16 / f16
//! on disk; f32 or bf16 in memory) before it is moved to the device.

use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use kernels::{DType, Device, Storage, Tensor};
use memmap2::Mmap;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use super::{CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE};
use crate::config::{Head, ModelConfig};
use crate::params::{param_specs, Params};

/// Reads `config.json` and the weights of the folder `dir`.
pub fn load_model(dir: &Path, device: &Device, dtype: DType) -> Result<(ModelConfig, Params)> {
    let cfg = ModelConfig::from_file(&dir.join(CONFIG_FILE))?;
    let params = load_params(dir, &cfg, device, dtype)?;
    Ok((cfg, params))
}

/// Reads the weights of the folder `dir` for the model `cfg`, converting every tensor to `dtype`
/// on `device`. Missing, unexpected and mis-shaped tensors are errors naming the tensor.
pub fn load_params(dir: &Path, cfg: &ModelConfig, device: &Device, dtype: DType) -> Result<Params> {
    if !dtype.is_float() {
        bail!("weights can be loaded as f32 or bf16, not {dtype}");
    }
    let files = weight_files(dir)?;
    let maps = files
        .iter()
        .map(|p| map_file(p))
        .collect::<Result<Vec<Mmap>>>()?;
    let tables = maps
        .iter()
        .zip(&files)
        .map(|(m, p)| {
            SafeTensors::deserialize(m)
                .with_context(|| format!("{} is not a valid safetensors file", p.display()))
        })
        .collect::<Result<Vec<SafeTensors>>>()?;

    // Where each stored tensor lives.
    let mut location: BTreeMap<String, usize> = BTreeMap::new();
    for (i, t) in tables.iter().enumerate() {
        for name in t.names() {
            location.insert(name.to_string(), i);
        }
    }

    let specs = param_specs(cfg);
    let wanted: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let unexpected: Vec<&String> = location
        .keys()
        .filter(|n| !wanted.contains(n.as_str()) && !ignorable(n, cfg))
        .collect();
    if !unexpected.is_empty() {
        bail!(
            "{} holds {} tensor(s) the config does not describe, e.g. {:?} (is config.json the right one for these weights?)",
            dir.display(),
            unexpected.len(),
            unexpected.iter().take(5).collect::<Vec<_>>()
        );
    }

    let params = Params::build(cfg, |spec| {
        let &i = location.get(&spec.name).with_context(|| {
            format!(
                "tensor {} is missing from the checkpoint in {}",
                spec.name,
                dir.display()
            )
        })?;
        let view = tables[i].tensor(&spec.name)?;
        if view.shape() != spec.shape.as_slice() {
            bail!(
                "tensor {} in {} has shape {:?}, but the config implies {:?}",
                spec.name,
                files[i].display(),
                view.shape(),
                spec.shape
            );
        }
        let host = view_to_tensor(&view, dtype)
            .with_context(|| format!("tensor {} in {}", spec.name, files[i].display()))?;
        Ok(host.to_device(device)?)
    })?;
    tracing::debug!(
        dir = %dir.display(),
        tensors = specs.len(),
        params = params.numel(),
        "loaded checkpoint"
    );
    Ok(params)
}

/// Stored tensors that transformers itself ignores when loading: rotary caches written by old
/// versions, and an lm_head saved next to tied embeddings.
fn ignorable(name: &str, cfg: &ModelConfig) -> bool {
    name.ends_with("rotary_emb.inv_freq")
        || (name == "lm_head.weight" && cfg.tie_word_embeddings && cfg.head == Head::CausalLm)
}

/// The safetensors files of a folder: the single file, or every shard the index names.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(WEIGHTS_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join(WEIGHTS_INDEX_FILE);
    if !index.exists() {
        bail!(
            "{} has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE}",
            dir.display()
        );
    }
    let text = std::fs::read_to_string(&index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{} has no `weight_map` object", index.display()))?;
    let mut shards = BTreeSet::new();
    for (name, file) in map {
        let file = file.as_str().with_context(|| {
            format!(
                "weight_map entry {name} in {} is not a file name",
                index.display()
            )
        })?;
        if file.contains('/') || file.contains("..") {
            bail!("weight_map entry {name} names a file outside the folder: {file}");
        }
        shards.insert(file.to_string());
    }
    Ok(shards.into_iter().map(|f| dir.join(f)).collect())
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the mapping is read-only and lives while we read from it; a checkpoint rewritten
    // underneath a running load is outside what we guard against (as in every mmap loader).
    unsafe { Mmap::map(&file) }.with_context(|| format!("cannot memory-map {}", path.display()))
}

/// Converts one stored tensor into a CPU tensor of `dtype`.
fn view_to_tensor(view: &TensorView, dtype: DType) -> Result<Tensor> {
    let bytes = view.data();
    let storage = match (view.dtype(), dtype) {
        // Same type: a bit-exact copy.
        (Dtype::F32, DType::F32) => Storage::CpuF32(le_words(bytes, f32::from_le_bytes)),
        (Dtype::BF16, DType::BF16) => Storage::CpuBF16(le_halves(bytes, bf16::from_bits)),
        // Widening: exact.
        (Dtype::BF16, DType::F32) => {
            Storage::CpuF32(le_halves(bytes, |b| bf16::from_bits(b).to_f32()))
        }
        (Dtype::F16, DType::F32) => {
            Storage::CpuF32(le_halves(bytes, |b| f16::from_bits(b).to_f32()))
        }
        // Narrowing: round to nearest even.
        (Dtype::F32, DType::BF16) => Storage::CpuBF16(
            le_words(bytes, f32::from_le_bytes)
                .into_iter()
                .map(bf16::from_f32)
                .collect(),
        ),
        (Dtype::F16, DType::BF16) => Storage::CpuBF16(le_halves(bytes, |b| {
            bf16::from_f32(f16::from_bits(b).to_f32())
        })),
        (other, _) => bail!("stored dtype {other:?} is not supported (expected F32, BF16 or F16)"),
    };
    Ok(Tensor::from_storage(storage, view.shape(), Device::Cpu)?)
}

fn le_words<T>(bytes: &[u8], f: impl Fn([u8; 4]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(4)
        .map(|c| f([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn le_halves<T>(bytes: &[u8], f: impl Fn(u16) -> T) -> Vec<T> {
    bytes
        .chunks_exact(2)
        .map(|c| f(u16::from_le_bytes([c[0], c[1]])))
        .collect()
}
