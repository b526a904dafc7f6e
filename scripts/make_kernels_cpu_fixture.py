#!/usr/bin/env python3
"""PyTorch / transformers reference values for the CPU ops, at the op level.

Writes kernels/tests/fixtures/ops_cpu_torch.txt, read by kernels/tests/ops_cpu_torch.rs. It pins the
conventions our ops promise to share with PyTorch and HF: LlamaRMSNorm, LlamaRotaryEmbedding +
apply_rotary_pos_emb (f32 inv_freq and angle, large positions, two rope_theta values), causal GQA
scaled_dot_product_attention per packed sequence, log_softmax with a temperature, SiLU * up, and
torch.optim.AdamW (single-tensor path) over five steps.

Format: one array per line, `name count v1 v2 ...`, float32 values printed exactly ('%.9g').
Run with: /work/pyenv/bin/python scripts/make_kernels_cpu_fixture.py  (CPU, ~2 s)
"""
import math
import os

import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

OUT = os.path.join(os.path.dirname(__file__), "..", "kernels", "tests", "fixtures", "ops_cpu_torch.txt")
torch.manual_seed(1234)
lines = [f"# torch {torch.__version__}, transformers {transformers.__version__}"]


def put(name, t):
    t = t.detach().reshape(-1).to(torch.float32)
    lines.append(f"{name} {t.numel()} " + " ".join("%.9g" % float(x) for x in t))


# rmsnorm: x[5,24], eps 1e-6
x, g = torch.randn(5, 24), torch.randn(24)
norm = LlamaRMSNorm(24, eps=1e-6)
norm.weight.data = g.clone()
put("rmsnorm.x", x)
put("rmsnorm.w", g)
put("rmsnorm.y", norm(x))

# rope: x[N=7, H=2, D=16] (our layout), positions up to 20000, theta 1e4 and 1e6
pos = torch.tensor([[0, 1, 7, 100, 4093, 8191, 20000]])
put("rope.pos", pos.float())
for theta in (10000, 1000000):
    cfg = LlamaConfig(hidden_size=32, num_attention_heads=2, head_dim=16, rope_theta=float(theta),
                      max_position_embeddings=32768)
    q = torch.randn(1, 2, 7, 16)  # HF layout [B, H, T, D]
    cos, sin = LlamaRotaryEmbedding(cfg)(q, pos)
    y, _ = apply_rotary_pos_emb(q, q, cos, sin)
    put(f"rope{theta}.x", q[0].transpose(0, 1))
    put(f"rope{theta}.y", y[0].transpose(0, 1))

# attention: packed sequences of lengths 4, 1, 6 (cu_seqlens 0,4,5,11), H=4, K=2, D=8, scale 1/sqrt(D)
cu, (H, K, D) = [0, 4, 5, 11], (4, 2, 8)
q, k, v = torch.randn(11, H, D), torch.randn(11, K, D), torch.randn(11, K, D)
o = torch.zeros(11, H, D)
for a, b in zip(cu[:-1], cu[1:]):
    per_seq = [t[a:b].transpose(0, 1)[None] for t in (q, k, v)]  # [1, heads, T, D]
    o[a:b] = F.scaled_dot_product_attention(*per_seq, is_causal=True, enable_gqa=True,
                                            scale=1 / math.sqrt(D))[0].transpose(0, 1)
for name, t in (("q", q), ("k", k), ("v", v), ("out", o)):
    put(f"attention.{name}", t)

# log-softmax at temperature 0.7: logits[5, 61]
logits, targets = torch.randn(5, 61) * 4, torch.randint(0, 61, (5,))
lp = torch.log_softmax(logits / 0.7, dim=-1)
put("logsoftmax.logits", logits)
put("logsoftmax.targets", targets.float())
put("logsoftmax.logprob", lp.gather(1, targets[:, None])[:, 0])
put("logsoftmax.entropy", -(lp.exp() * lp).sum(-1))

# swiglu: gate[5, 19], up[5, 19]
gate, up = torch.randn(5, 19) * 3, torch.randn(5, 19)
put("swiglu.gate", gate)
put("swiglu.up", up)
put("swiglu.h", F.silu(gate) * up)

# AdamW: 31 parameters, five steps, lr 3e-2, betas (0.9, 0.95), eps 1e-8, weight decay 0.1
p = torch.nn.Parameter(torch.randn(31))
put("adamw.p0", p)
opt = torch.optim.AdamW([p], lr=3e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=False)
for step in range(5):
    grad = torch.randn(31)
    put(f"adamw.grad{step}", grad)
    p.grad = grad.clone()
    opt.step()
put("adamw.p5", p)
put("adamw.m5", opt.state[p]["exp_avg"])
put("adamw.v5", opt.state[p]["exp_avg_sq"])

with open(OUT, "w") as f:
    f.write("\n".join(lines) + "\n")
print(f"wrote {os.path.normpath(OUT)}")
