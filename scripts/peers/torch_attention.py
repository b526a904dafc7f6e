"""Peer for the attention kernels: PyTorch SDPA forward and backward at the training shapes.

Qwen2.5-0.5B: B = 8 sequences × T = 1024 tokens, H = 14 query heads, K = 2 kv heads, D = 64,
causal, bf16. The kv heads are repeated to H (GQA costs the same FLOPs). Times each SDPA backend
that accepts the call with CUDA events (median of 20 after 3 warm-ups) and prints TFLOP/s
counting causal FLOPs like kernels/examples/cuda_bench.rs: 4·H·D·B·T(T+1)/2 forward, 2.5× that
backward.
Usage: python3 scripts/peers/torch_attention.py
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_ms(fn, warm=3, runs=20):
    for _ in range(warm):
        fn()
    times = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    b, t, h, kh, d = 8, 1024, 14, 2, 64
    flops = 4.0 * h * d * b * t * (t + 1) / 2
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    k = torch.randn(b, kh, t, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(b, kh, t, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k = k.repeat_interleave(h // kh, dim=1).requires_grad_()
    v = v.repeat_interleave(h // kh, dim=1).requires_grad_()
    dout = torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16, generator=g)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        try:
            with sdpa_kernel(backend):
                fwd = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                bwd = median_ms(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))
        except RuntimeError as e:
            print(f"peer sdpa {name}: not available ({str(e).splitlines()[0]})")
            continue
        print(f"peer sdpa {name} fwd {fwd:.3f} ms {flops / fwd / 1e9:.1f} TFLOP/s; "
              f"bwd {bwd:.3f} ms {2.5 * flops / bwd / 1e9:.1f} TFLOP/s")


if __name__ == "__main__":
    main()
