//! `CudaDevice::fork_lane`: ops queued on the device's second stream (its lane) between a fork and
//! a join give what the same ops give on the device's one stream, run op by op and captured into
//! a CUDA graph (where fork and join make two branches). Each lane writes its rows of one output
//! through `write_rows`; the work on the lane allocates and frees its temporaries there (GEMM
//! outputs, norm results), as the decode lanes of the actor do. GPU only (one test in this binary:
//! a capture records whatever the thread queues on the device meanwhile).

use kernels::cuda::CudaDevice;
use kernels::testing::{float_tensor, randn_vec, test_devices};
use kernels::{ops, DType, Device, Tensor};

/// N rows per half, C in, O out.
const N: usize = 96;
const C: usize = 256;
const O: usize = 512;

fn t(seed: u64, shape: &[usize], dev: &Device) -> Tensor {
    let n = shape.iter().product();
    float_tensor(randn_vec(n, seed), shape, dev, DType::BF16)
}

/// One half's work: a product, then a norm of its rows (a GEMM on the lane's cuBLAS handle and a
/// row kernel), written into rows [row, row + N) of `out`.
fn half(x: &Tensor, w: &Tensor, g: &Tensor, out: &mut Tensor, row: usize) -> kernels::Result<()> {
    let y = ops::linear(x, w, None)?; // [N,O]
    let (yn, _) = ops::rmsnorm(&y, g, 1e-6)?; // [N,O]
    ops::write_rows(out, row, &yn)
}

/// Both halves: the second on the lane, the first on the device's stream.
fn both_in_lanes(
    cuda: &CudaDevice,
    xs: &[Tensor; 2],
    w: &Tensor,
    g: &Tensor,
    out: &mut Tensor,
) -> kernels::Result<()> {
    let fork = cuda.fork_lane()?;
    fork.on_lane(|| half(&xs[1], w, g, out, N))?;
    half(&xs[0], w, g, out, 0)?;
    fork.join()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec_f32()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn lane_work_gives_what_one_stream_gives_op_by_op_and_captured() {
    let Some(dev) = test_devices().into_iter().find(|d| d.is_cuda()) else {
        return;
    };
    let Device::Cuda(cuda) = &dev else {
        unreachable!()
    };
    let xs = [t(1, &[N, C], &dev), t(2, &[N, C], &dev)];
    let w = t(3, &[O, C], &dev);
    let g = t(4, &[O], &dev);

    let mut want = Tensor::zeros(&[2 * N, O], DType::BF16, &dev).unwrap();
    half(&xs[0], &w, &g, &mut want, 0).unwrap();
    half(&xs[1], &w, &g, &mut want, N).unwrap();

    let mut eager = Tensor::zeros(&[2 * N, O], DType::BF16, &dev).unwrap();
    both_in_lanes(cuda, &xs, &w, &g, &mut eager).unwrap();
    assert_eq!(bits(&eager), bits(&want), "op by op");

    let mut captured = Tensor::zeros(&[2 * N, O], DType::BF16, &dev).unwrap();
    let graph = cuda
        .capture(|| both_in_lanes(cuda, &xs, &w, &g, &mut captured))
        .unwrap();
    // Recording ran nothing.
    assert!(bits(&captured).iter().all(|&b| b == 0));
    for _ in 0..3 {
        graph.launch().unwrap();
    }
    assert_eq!(bits(&captured), bits(&want), "captured, replayed");
}
