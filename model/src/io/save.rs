//! Saving parameters as a Hugging Face checkpoint folder that `transformers` loads.
//!
//! Each file is written to a temporary name in the same folder, flushed to disk and renamed over
//! the final name, so a crash never leaves a half-written checkpoint under the real name.

use anyhow::{bail, Context, Result};
use kernels::{DType, Device, Storage, Tensor};
use safetensors::{Dtype, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use super::{CONFIG_FILE, WEIGHTS_FILE};
use crate::config::ModelConfig;
use crate::params::Params;

/// Writes `config.json` and `model.safetensors` into `dir` (created if needed). Tensors are saved
/// in their own dtype (f32 or bf16), bit-exactly; the config's `dtype` says which.
pub fn save_model(dir: &Path, cfg: &ModelConfig, params: &Params) -> Result<()> {
    params.check_against(cfg)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let mut views = Vec::new();
    for (name, t) in params.tensors() {
        views.push((
            name.clone(),
            HostView::new(t).with_context(|| format!("parameter {name}"))?,
        ));
    }
    // transformers refuses safetensors files without `format = pt` metadata.
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights = dir.join(WEIGHTS_FILE);
    write_atomically(&weights, |tmp| {
        Ok(safetensors::serialize_to_file(views, Some(metadata), tmp)?)
    })?;

    let mut cfg = cfg.clone();
    cfg.torch_dtype = Some(
        match params.embed.dtype() {
            DType::BF16 => "bfloat16",
            _ => "float32",
        }
        .to_string(),
    );
    let text = serde_json::to_string_pretty(&cfg.to_hf_json())? + "\n";
    write_atomically(&dir.join(CONFIG_FILE), |tmp| {
        Ok(std::fs::write(tmp, &text)?)
    })?;
    tracing::info!(dir = %dir.display(), params = params.numel(), "saved checkpoint");
    Ok(())
}

/// Lets `write` create a temporary file next to `path`, syncs it to disk and renames it into
/// place.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        write(&tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// A parameter's bytes on the host, as safetensors wants them (little-endian).
struct HostView {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl HostView {
    fn new(t: &Tensor) -> Result<HostView> {
        let host;
        let t = if t.device().is_cpu() {
            t
        } else {
            host = t.to_device(&Device::Cpu)?;
            &host
        };
        let (dtype, bytes) = match t.storage() {
            Storage::CpuF32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Storage::CpuBF16(v) => (
                Dtype::BF16,
                v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
            ),
            _ => bail!(
                "only f32 and bf16 parameters can be saved, got {}",
                t.dtype()
            ),
        };
        Ok(HostView {
            dtype,
            shape: t.shape().to_vec(),
            bytes,
        })
    }
}

impl View for HostView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}
