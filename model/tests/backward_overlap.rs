//! The decoder backward with its weight gradients on a side lane of the GPU
//! (`backward_with_overlap`, `REALIGN_TRAIN_OVERLAP`) gives the gradients of the in-place
//! backward: the same bits for the projection matrices when the lane's GEMMs plan for the whole
//! GPU (the same GEMMs, queued elsewhere), and the same up to f32 summation order when they plan
//! for fewer SMs (cuBLAS may pick a kernel that splits the sums differently). What a GPU sums with
//! atomics, whose order of additions differs from run to run, is compared to that tolerance
//! always: biases, norm weights, the embedding rows, and in f32 everything upstream of the
//! CUDA-core attention backward's dq (the bf16 tensor-core one writes dq without atomics). Both ways of storing, the first micro-batch
//! written over and a second added on top. On the CPU the overlap runs in place.

use kernels::ops::GradStore;
use kernels::testing::{randn_vec, rel_err, test_devices, test_dtypes};
use kernels::{ops, DType, Device, Tensor};
use model::llama::{backward_with_overlap, forward, Batch, Keep, Overlap};
use model::{Arch, ModelConfig, Params};

/// Qwen2-like, head dim 64, 3 layers (q/k/v biases included).
fn config() -> ModelConfig {
    let mut c = ModelConfig::new(Arch::Qwen2, 256, 256, 3, 4, 2, 512);
    c.initializer_range = 0.2;
    c
}

/// Every gradient after two micro-batches (written, then added), by name.
fn gradients(dev: &Device, dtype: DType, overlap: Overlap) -> Vec<(String, Vec<f32>)> {
    let cfg = config();
    let params = Params::init(&cfg, 5, dev, dtype).unwrap();
    let mut grads = params.zeros_like(DType::F32).unwrap();
    for (micro, store) in [(0u64, GradStore::Overwrite), (1, GradStore::Add)] {
        let seqs: Vec<Vec<u32>> = [37usize, 64, 20]
            .iter()
            .enumerate()
            .map(|(k, &len)| {
                (0..len)
                    .map(|i| ((i * 31 + k * 7 + micro as usize * 13) % 256) as u32)
                    .collect()
            })
            .collect();
        let batch = Batch::from_sequences(&seqs, dev).unwrap();
        let acts = forward(&params, &cfg, &batch, Keep::ForBackward).unwrap();
        let n = batch.num_tokens();
        let d_hidden = Tensor::from_f32(randn_vec(n * 256, 40 + micro), &[n, 256], dev).unwrap();
        let d_hidden = if dtype == DType::F32 {
            d_hidden
        } else {
            ops::cast(&d_hidden, dtype).unwrap()
        };
        backward_with_overlap(
            &params, &cfg, &batch, acts, &d_hidden, &mut grads, store, overlap,
        )
        .unwrap();
    }
    grads
        .tensors()
        .into_iter()
        .map(|(name, t)| (name, t.to_vec_f32().unwrap()))
        .collect()
}

#[test]
fn weight_gradients_on_a_side_lane_equal_the_in_place_ones() {
    for dev in test_devices() {
        for dtype in test_dtypes(&dev) {
            let want = gradients(&dev, dtype, Overlap::Off);
            let lane = gradients(&dev, dtype, Overlap::Lane { sms: None });
            let fewer = gradients(&dev, dtype, Overlap::Lane { sms: Some(32) });
            for ((name, w), ((_, a), (_, b))) in want.iter().zip(lane.iter().zip(&fewer)) {
                let what = format!("{dev} {dtype} {name}");
                assert!(w.iter().all(|v| v.is_finite()), "{what}");
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let deterministic = !dev.is_cuda() || dtype == DType::BF16;
                if deterministic && name.ends_with("_proj.weight") {
                    assert_eq!(bits(a), bits(w), "{what}: lane, whole GPU");
                } else {
                    let err = rel_err(a, w);
                    assert!(err <= 1e-5, "{what}: lane, whole GPU: rel err {err:.2e}");
                }
                let err = rel_err(b, w);
                assert!(err <= 1e-4, "{what}: lane, 32 SMs: rel err {err:.2e}");
            }
        }
    }
}
