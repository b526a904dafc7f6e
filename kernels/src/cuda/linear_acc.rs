//! `linear_backward_acc` on the GPU: the two cuBLAS GEMMs of `linear_backward` with beta = 1 for
//! dx as well as dw, and linear.cu's bias-gradient kernel. Layouts as in `linear.rs`.

use super::blas::Gemm;
use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, ptr, suffix};
use crate::{DType, Error, Result, Tensor};

const SRC: KernelSource = kernel_source!("linear");

fn u32_dim(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: dimension {v} exceeds u32")))
}

pub fn linear_backward_acc(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    dw: &mut Tensor,
    db: Option<&mut Tensor>,
    dx_acc: &mut Tensor,
) -> Result<()> {
    const OP: &str = "linear_backward_acc";
    let dev = device_of(x, OP)?;
    let (n, i) = x.dims2(OP)?;
    let (o, _) = w.dims2(OP)?;
    let dtype = x.dtype();
    // dx(I×N) += w(I×O) · dy(O×N), column-major.
    Gemm {
        trans_a: false,
        trans_b: false,
        m: i,
        n,
        k: o,
        a: ptr(w, &dev, OP)?,
        lda: i,
        b: ptr(dy, &dev, OP)?,
        ldb: o,
        c: ptr(dx_acc, &dev, OP)?,
        ldc: i,
        alpha: 1.0,
        beta: 1.0,
        ab: dtype,
        c_type: dtype,
    }
    .run(&dev)?;
    // dw(I×O) += x(I×N) · dyᵀ(N×O), f32 C.
    Gemm {
        trans_a: false,
        trans_b: true,
        m: i,
        n: o,
        k: n,
        a: ptr(x, &dev, OP)?,
        lda: i,
        b: ptr(dy, &dev, OP)?,
        ldb: o,
        c: ptr(dw, &dev, OP)?,
        ldc: i,
        alpha: 1.0,
        beta: 1.0,
        ab: dtype,
        c_type: DType::F32,
    }
    .run(&dev)?;
    if let Some(db) = db {
        // Row chunks of 64, as `linear_backward`.
        const CHUNK: usize = 64;
        let threads = 256u32;
        let g = Grid {
            grid: (
                o.div_ceil(threads as usize).max(1) as u32,
                n.div_ceil(CHUNK).clamp(1, 65535) as u32,
                1,
            ),
            block: (threads, 1, 1),
            smem: 0,
        };
        let chunk = n.div_ceil(g.grid.1 as usize).max(1);
        let args = Args::new()
            .ptr(dy, &dev, OP)?
            .ptr(db, &dev, OP)?
            .u32(u32_dim(OP, n)?)
            .u32(u32_dim(OP, o)?)
            .u32(u32_dim(OP, chunk)?);
        let func = format!("bias_grad_{}", suffix(dtype, OP)?);
        run(&dev, &SRC, &[], &func, g, args)?;
    }
    Ok(())
}
