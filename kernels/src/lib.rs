//! realign compute layer.
//!
//! One [`Tensor`] type over a [`Device`] (CPU or CUDA). Tensors are dense, contiguous and row-major;
//! there are no strides and no autograd tape. Ops are coarse and fused (llm.c style) and each op that
//! training needs has an explicit backward in the same file.
//!
//! Layout of this crate:
//! - `tensor.rs`, `device.rs`, `dtype.rs`: the data types.
//! - `ops/<op>.rs`: the public op, its shapes, and the dispatch to a backend.
//! - `cpu/<op>.rs`: the CPU f32 reference for that op.
//! - `cuda/<op>.rs` + `cu/<op>.cu`: the CUDA implementation (NVRTC-compiled at run time).

pub mod cpu;
pub mod cuda;
mod device;
mod dtype;
mod error;
pub mod ops;
mod tensor;
pub mod testing;

pub use device::Device;
pub use dtype::DType;
pub use error::{Error, Result};
pub use tensor::{Storage, Tensor};
