"""Peer for the training benchmark: a plain PyTorch train step, Qwen2.5-0.5B shapes.

bf16 autocast over f32 master weights, fused AdamW, B sequences × T tokens, loss = next-token NLL.
Prints one JSON line with tokens/s and MFU (6·params·tokens + attention FLOPs over 989 TFLOP/s).
Usage: python3 scripts/peers/torch_train_step.py [--batch 8 --seq 1024 --out results.jsonl]
"""
import argparse

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from common import PEAK_BF16_FLOPS, QWEN25_05B, report, timed


def train_flops(cfg, batch, seq, n_params):
    # Matmul FLOPs: 6 per parameter per token (fwd 2 + bwd 4), plus causal attention
    # (QK^T and PV: 2·2·T²·H·D per sequence per layer, halved by causality, ×3 for fwd+bwd).
    d = cfg.hidden_size // cfg.num_attention_heads
    attn = 3 * 2 * 2 * seq * seq * cfg.num_attention_heads * d * cfg.num_hidden_layers * batch / 2
    return 6 * n_params * batch * seq + attn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes for a CPU smoke run")
    a = ap.parse_args()
    shapes = dict(QWEN25_05B)
    if a.tiny:
        shapes.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=1000)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    cfg = Qwen2Config(**shapes)
    cfg._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=dev == "cuda")
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device=dev)

    def step():
        with torch.autocast(dev, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    secs = timed(step, warmup=2, iters=a.iters)
    n_params = sum(p.numel() for p in model.parameters())
    flops = train_flops(cfg, a.batch, a.seq, n_params)
    report("torch_train_step", dict(batch=a.batch, seq=a.seq, params=n_params, seconds=secs,
                                    tokens_per_s=a.batch * a.seq / secs,
                                    mfu=flops / secs / PEAK_BF16_FLOPS), a.out)


if __name__ == "__main__":
    main()
