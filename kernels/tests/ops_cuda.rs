//! CUDA ops against the CPU reference on random inputs, forward and backward.
//!
//! Without a GPU every test prints "skipped: no GPU" and passes; with `REALIGN_REQUIRE_GPU=1` a
//! missing GPU fails. The NVRTC test needs only the NVRTC library (no GPU): it compiles every
//! kernel source for sm_90, so compile errors show up on machines without a GPU too.

use kernels::cuda::{launch, nvrtc};

/// Every `.cu` file compiles with NVRTC for sm_90 (attention at several head dims and tiles).
#[test]
fn nvrtc_compiles_every_kernel() {
    if !nvrtc::is_available() {
        eprintln!("skipped: no NVRTC library");
        return;
    }
    for src in launch::all_sources() {
        let text = launch::full_source(&src);
        let define_sets: Vec<Vec<String>> = if src.name == "attention" {
            [(64, 64), (128, 64), (128, 32), (24, 64), (256, 32)]
                .iter()
                .map(|(d, b)| vec![format!("-DHEAD_DIM={d}"), format!("-DBLOCK={b}")])
                .collect()
        } else {
            vec![vec![]]
        };
        for defs in define_sets {
            let cubin = nvrtc::compile_cubin(src.name, &text, "sm_90", &defs)
                .unwrap_or_else(|e| panic!("{}.cu {defs:?}: {e}", src.name));
            assert!(!cubin.is_empty());
        }
    }
}
