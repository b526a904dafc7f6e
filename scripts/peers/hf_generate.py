"""Peer for the rollout benchmark: HF transformers `generate`, Qwen2.5-0.5B shapes, random weights.

Batch B prompts of P random tokens, exactly N new tokens each (EOS ignored), bf16, greedy.
Prints one JSON line with tokens/s (new tokens only).
Usage: python3 scripts/peers/hf_generate.py [--batch 256 --prompt 128 --new 256 --out results.jsonl]
"""
import argparse

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from common import QWEN25_05B, report, timed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--iters", type=int, default=2)
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
    model = Qwen2ForCausalLM(cfg).to(dev, torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.prompt), device=dev)
    mask = torch.ones_like(ids)

    def run():
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.new,
                                 min_new_tokens=a.new, do_sample=False, pad_token_id=0,
                                 eos_token_id=None)
        assert out.shape == (a.batch, a.prompt + a.new), out.shape

    secs = timed(run, warmup=1, iters=a.iters)
    report("hf_generate", dict(batch=a.batch, prompt=a.prompt, new_tokens=a.new, seconds=secs,
                               tokens_per_s=a.batch * a.new / secs), a.out)


if __name__ == "__main__":
    main()
