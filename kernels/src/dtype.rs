//! Element types a tensor can hold.

/// Element type of a [`crate::Tensor`].
///
/// `F32` is the reference precision (CPU backend, master weights, optimiser state, losses);
/// `BF16` is the GPU working precision for weights and activations; `U32` holds token ids,
/// positions and sequence offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    U32,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::BF16 => 2,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::BF16)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::U32 => "u32",
        })
    }
}

impl std::str::FromStr for DType {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "f32" | "float32" => Ok(DType::F32),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            "u32" => Ok(DType::U32),
            other => Err(crate::Error::msg(format!(
                "unknown dtype `{other}` (expected f32 or bf16)"
            ))),
        }
    }
}
