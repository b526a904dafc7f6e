#!/usr/bin/env python3
"""Op-by-op check of a bf16 forward recorded on the GPU against the rounding model of
scripts/emulate_bf16_path.py: each op is fed the GPU's own recorded input and its emulated output is
compared with the GPU's recorded output, so a deviation points at one op instead of being smeared
over the whole forward.

Record on the GPU machine (model/examples/dump_activations.rs), for each fixture of
model/tests/fixtures/hf:
  dump_activations model/tests/fixtures/hf/qwen2_tied DUMP_DIR/qwen2_tied.bf16.safetensors --device cuda --dtype bf16
then here:
  /work/pyenv/bin/python scripts/check_bf16_ops.py DUMP_DIR qwen2_tied llama_gqa mistral

Per op it prints the fraction of elements that differ, the largest difference in bf16 ulps of the
emulated value, and the norm-relative difference. A correct op differs in a few elements by one
ulp at most (ties that another f32 summation order tips); more means the op rounds differently.
Seen on the H200 (2026-11-29): every op bit-exact (attention: 1 ulp in 0.1% of elements) except
q/k/v with a bias, which were bf16(bf16(x wᵀ) + b) (cuBLAS with a bf16 C and beta = 1), up to 62
ulps off; kernels/src/cuda/linear.rs now adds the bias in f32 and rounds once.
"""

import json
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emulate_bf16_path import ROOT, Emu  # noqa: E402


def compare(name, got, want):
    got, want = got.float(), want.float()
    d = (got - want).abs()
    ulp = 2.0 ** (torch.floor(torch.log2(want.abs().clamp_min(1e-30))) - 7)
    print(f"  {name:10s} differ {float((d > 0).float().mean()):.3f}  max ulps {float((d / ulp).max()):6.1f}  "
          f"rel {float(d.norm() / want.norm().clamp_min(1e-30)):.2e}")


def check(dump_dir, fx):
    d = os.path.join(ROOT, fx)
    cfg = json.load(open(os.path.join(d, "config.json")))
    w = load_file(os.path.join(d, "model.safetensors"))
    if cfg.get("tie_word_embeddings") and "lm_head.weight" in w:
        del w["lm_head.weight"]
    g = load_file(os.path.join(dump_dir, f"{fx}.bf16.safetensors"))
    seqs = json.load(open(os.path.join(d, "batch.json")))["sequences"]
    e = Emu(cfg, w, ["logits"], mma=True)
    h, kh = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    dh = cfg.get("head_dim") or cfg["hidden_size"] // h
    pos = torch.cat([torch.arange(len(s)) for s in seqs])
    n = len(pos)
    print(f"== {fx}")
    for layer in range(cfg["num_hidden_layers"]):
        p, L = f"model.layers.{layer}.", f"layers.{layer}."
        print(f" layer {layer}")
        x = g[L + "x"]
        compare("xn", g[L + "xn"], e.rmsnorm(x, e.w[p + "input_layernorm.weight"], "norm"))
        xn = g[L + "xn"]
        q = e.linear(xn, p + "self_attn.q_proj", "qkv").reshape(n, h, dh)
        k = e.linear(xn, p + "self_attn.k_proj", "qkv").reshape(n, kh, dh)
        compare("q+rope", g[L + "q"], e.rope(q, pos))
        compare("k+rope", g[L + "k"], e.rope(k, pos))
        compare("v", g[L + "v"], e.linear(xn, p + "self_attn.v_proj", "qkv").reshape(n, kh, dh))
        outs, s0 = [], 0
        for s in seqs:  # attention per packed sequence, from the GPU's q, k, v
            outs.append(e.attention(g[L + "q"][s0:s0 + len(s)], g[L + "k"][s0:s0 + len(s)], g[L + "v"][s0:s0 + len(s)]))
            s0 += len(s)
        compare("attention", g[L + "att"], torch.cat(outs))
        att = g[L + "att"].reshape(n, h * dh)  # [N,H,D] -> [N,H*D]
        compare("o+resid", g[L + "x2"], e.r("resid", e.linear(att, p + "self_attn.o_proj", "o_proj") + x))
        compare("mlp norm", g[L + "xn2"], e.rmsnorm(g[L + "x2"], e.w[p + "post_attention_layernorm.weight"], "norm"))
        compare("gate", g[L + "gate"], e.linear(g[L + "xn2"], p + "mlp.gate_proj", "mlp_in"))
        compare("up", g[L + "up"], e.linear(g[L + "xn2"], p + "mlp.up_proj", "mlp_in"))
        act = e.r("swiglu", g[L + "gate"] * torch.sigmoid(g[L + "gate"]) * g[L + "up"])
        nxt = g[f"layers.{layer + 1}.x"] if layer + 1 < cfg["num_hidden_layers"] else g["final_in"]
        compare("down+resid", nxt, e.r("resid", e.linear(act, p + "mlp.down_proj", "down") + g[L + "x2"]))
    compare("final norm", g["hidden"], e.rmsnorm(g["final_in"], e.w["model.norm.weight"], "final_norm"))


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: check_bf16_ops.py DUMP_DIR FIXTURE [FIXTURE ...]")
    for fx in sys.argv[2:]:
        check(sys.argv[1], fx)


if __name__ == "__main__":
    main()
