//! The compute layer's error type.

use crate::{DType, Device};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("{op} does not support dtype {dtype}")]
    DType { op: &'static str, dtype: DType },
    #[error("{op}: tensors are on different devices ({a} vs {b})")]
    DeviceMismatch {
        op: &'static str,
        a: String,
        b: String,
    },
    #[error("{op} is not implemented on {device}")]
    Unsupported { op: &'static str, device: String },
    #[error("CUDA: {0}")]
    Cuda(String),
    #[error("{0}")]
    Msg(String),
}

impl Error {
    pub fn msg(s: impl Into<String>) -> Self {
        Error::Msg(s.into())
    }
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }
    pub fn unsupported(op: &'static str, device: &Device) -> Self {
        Error::Unsupported {
            op,
            device: device.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
