//! CPU ops against PyTorch / transformers at the op level: the fixture made by
//! scripts/make_kernels_cpu_fixture.py pins the conventions we share with them (LlamaRMSNorm,
//! HF rotary embedding with its f32 angle, causal GQA SDPA per packed sequence, log-softmax with a
//! temperature, SiLU·up, torch.optim.AdamW). Both sides run in f32, so the agreement is to f32
//! rounding; 1e-6 relative leaves room only for summation-order differences.

use std::collections::HashMap;

use kernels::testing::{max_abs_diff, rel_err};
use kernels::{ops, DType, Device, Tensor};

const CPU: Device = Device::Cpu;
const TOL: f64 = 1e-6;

fn fixture() -> HashMap<String, Vec<f32>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ops_cpu_torch.txt"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|line| {
            let mut fields = line.split(' ');
            let name = fields.next().unwrap().to_string();
            let count: usize = fields.next().unwrap().parse().unwrap();
            let values: Vec<f32> = fields.map(|x| x.parse().unwrap()).collect();
            assert_eq!(values.len(), count, "fixture array {name}");
            (name, values)
        })
        .collect()
}

fn tensor(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_f32(v.to_vec(), shape, &CPU).unwrap()
}

fn ids(v: &[f32]) -> Tensor {
    Tensor::from_u32(v.iter().map(|&x| x as u32).collect(), &[v.len()], &CPU).unwrap()
}

fn check(name: &str, got: &Tensor, want: &[f32]) {
    let got = got.to_vec_f32().unwrap();
    let (rel, abs) = (rel_err(&got, want), max_abs_diff(&got, want));
    eprintln!("{name} vs torch: rel_err {rel:.3e}, max_abs_diff {abs:.3e}");
    assert!(
        rel <= TOL,
        "{name}: relative error {rel:.3e} vs torch exceeds {TOL:.0e}"
    );
}

#[test]
fn ops_match_pytorch_and_transformers() {
    let f = fixture();

    let (y, _) = ops::rmsnorm(
        &tensor(&f["rmsnorm.x"], &[5, 24]),
        &tensor(&f["rmsnorm.w"], &[24]),
        1e-6,
    )
    .unwrap();
    check("rmsnorm", &y, &f["rmsnorm.y"]);

    let pos = ids(&f["rope.pos"]);
    for theta in [10000u32, 1000000] {
        let x = tensor(&f[&format!("rope{theta}.x")], &[7, 2, 16]);
        let y = ops::rope(&x, &pos, theta as f32).unwrap();
        check(
            &format!("rope theta={theta}"),
            &y,
            &f[&format!("rope{theta}.y")],
        );
    }

    let cu = Tensor::from_u32(vec![0, 4, 5, 11], &[4], &CPU).unwrap();
    let (out, _) = ops::attention(
        &tensor(&f["attention.q"], &[11, 4, 8]),
        &tensor(&f["attention.k"], &[11, 2, 8]),
        &tensor(&f["attention.v"], &[11, 2, 8]),
        &cu,
        1.0 / 8f32.sqrt(),
    )
    .unwrap();
    check("attention", &out, &f["attention.out"]);

    let (logprob, entropy, _) = ops::logsoftmax_gather(
        &tensor(&f["logsoftmax.logits"], &[5, 61]),
        &ids(&f["logsoftmax.targets"]),
        1.0 / 0.7,
    )
    .unwrap();
    check(
        "logsoftmax_gather logprob",
        &logprob,
        &f["logsoftmax.logprob"],
    );
    check(
        "logsoftmax_gather entropy",
        &entropy,
        &f["logsoftmax.entropy"],
    );

    let h = ops::swiglu(
        &tensor(&f["swiglu.gate"], &[5, 19]),
        &tensor(&f["swiglu.up"], &[5, 19]),
    )
    .unwrap();
    check("swiglu", &h, &f["swiglu.h"]);

    let mut p = tensor(&f["adamw.p0"], &[31]);
    let mut m = Tensor::zeros(&[31], DType::F32, &CPU).unwrap();
    let mut v = Tensor::zeros(&[31], DType::F32, &CPU).unwrap();
    for step in 0..5u64 {
        let params = ops::AdamWParams {
            lr: 3e-2,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            step: step + 1,
        };
        let grad = tensor(&f[&format!("adamw.grad{step}")], &[31]);
        ops::adamw_step(&mut p, &grad, &mut m, &mut v, &params, None).unwrap();
    }
    check("adamw master after 5 steps", &p, &f["adamw.p5"]);
    check("adamw m after 5 steps", &m, &f["adamw.m5"]);
    check("adamw v after 5 steps", &v, &f["adamw.v5"]);
}
