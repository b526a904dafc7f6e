//! `CudaDevice::fork_lanes`: ops queued on the device's side streams (its lanes) between a fork and
//! a join give what the same ops give on the device's one stream, run op by op and captured into
//! a CUDA graph (where fork and join make parallel branches). Each lane writes its rows of one
//! output through `write_rows`; the work on a lane allocates and frees its temporaries there (GEMM
//! outputs, norm results), as the decode lanes of the actor do. With one side lane and with every
//! side lane there is; and with the SMs shared (`Lanes::share_sms`), where cuBLAS may pick other
//! kernels: then within bf16 rounding of one stream, and captured = op by op bit for bit. GPU only
//! (one test in this binary: a capture records whatever the thread queues on the device
//! meanwhile).

use kernels::cuda::{CudaDevice, MAX_SIDE_LANES};
use kernels::testing::{float_tensor, randn_vec, rel_err, test_devices};
use kernels::{ops, DType, Device, Tensor};

/// N rows per block, C in, O out.
const N: usize = 96;
const C: usize = 256;
const O: usize = 512;

fn t(seed: u64, shape: &[usize], dev: &Device) -> Tensor {
    let n = shape.iter().product();
    float_tensor(randn_vec(n, seed), shape, dev, DType::BF16)
}

/// One block's work: a product, then a norm of its rows (a GEMM on the lane's cuBLAS handle and a
/// row kernel), written into rows [row, row + N) of `out`.
fn block(x: &Tensor, w: &Tensor, g: &Tensor, out: &mut Tensor, row: usize) -> kernels::Result<()> {
    let y = ops::linear(x, w, None)?; // [N,O]
    let (yn, _) = ops::rmsnorm(&y, g, 1e-6)?; // [N,O]
    ops::write_rows(out, row, &yn)
}

/// Every block: block 0 on the device's stream, block i on side lane i - 1.
fn blocks_in_lanes(
    cuda: &CudaDevice,
    xs: &[Tensor],
    w: &Tensor,
    g: &Tensor,
    out: &mut Tensor,
    share_sms: bool,
) -> kernels::Result<()> {
    let fork = cuda.fork_lanes(xs.len() - 1)?;
    if share_sms {
        fork.share_sms();
    }
    for (i, x) in xs.iter().enumerate().skip(1) {
        fork.on(i - 1, || block(x, w, g, out, i * N))??;
    }
    block(&xs[0], w, g, out, 0)?;
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
    assert!(cuda.fork_lanes(MAX_SIDE_LANES + 1).is_err());
    let w = t(3, &[O, C], &dev);
    let g = t(4, &[O], &dev);
    for k in [2, 1 + MAX_SIDE_LANES] {
        let xs: Vec<Tensor> = (0..k).map(|i| t(10 + i as u64, &[N, C], &dev)).collect();
        let mut want = Tensor::zeros(&[k * N, O], DType::BF16, &dev).unwrap();
        for (i, x) in xs.iter().enumerate() {
            block(x, &w, &g, &mut want, i * N).unwrap();
        }
        for share in [false, true] {
            let what = format!("{k} blocks, SMs shared: {share}");
            let mut eager = Tensor::zeros(&[k * N, O], DType::BF16, &dev).unwrap();
            blocks_in_lanes(cuda, &xs, &w, &g, &mut eager, share).unwrap();
            if share {
                let err = rel_err(&eager.to_vec_f32().unwrap(), &want.to_vec_f32().unwrap());
                assert!(err < 1e-2, "{what}, op by op: rel err {err}");
            } else {
                assert_eq!(bits(&eager), bits(&want), "{what}, op by op");
            }

            let mut captured = Tensor::zeros(&[k * N, O], DType::BF16, &dev).unwrap();
            let graph = cuda
                .capture(|| blocks_in_lanes(cuda, &xs, &w, &g, &mut captured, share))
                .unwrap();
            // Recording ran nothing.
            assert!(bits(&captured).iter().all(|&b| b == 0), "{what}");
            for _ in 0..3 {
                graph.launch().unwrap();
            }
            assert_eq!(bits(&captured), bits(&eager), "{what}, captured, replayed");
        }
    }
}
