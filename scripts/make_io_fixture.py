#!/usr/bin/env python3
"""Checkpoint-I/O fixtures for model/tests/io_safetensors.rs, made by transformers itself.

  make_io_fixture.py            writes tiny checkpoints with `save_pretrained` into
                                model/tests/fixtures/io/ (small; committed).
  make_io_fixture.py --check DIR  loads a folder that realign saved with transformers and checks
                                that nothing is missing or unexpected and every tensor equals the
                                fixture it came from (run after `REALIGN_IO_SAVE_DIR=DIR cargo test
                                -p model --test io_safetensors`).

Needs torch + transformers + safetensors (not in CI; the outputs are committed).
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file

OUT = os.path.join(os.path.dirname(__file__), "..", "model", "tests", "fixtures", "io")


def tiny_models():
    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForSequenceClassification, MistralConfig, MistralForCausalLM)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        rope_theta=500.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=[2, 3]))
    qwen = Qwen2ForSequenceClassification(Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True, num_labels=1, pad_token_id=0))
    mistral = MistralForCausalLM(MistralConfig(
        vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
        sliding_window=32, tie_word_embeddings=True))
    # Biases are zero at init; make them non-zero so the test sees them.
    with torch.no_grad():
        for n, p in qwen.named_parameters():
            if n.endswith("bias"):
                p.normal_(0.0, 0.1)
    return {"llama_f32": (llama, torch.float32, None),
            "qwen2_score_bf16": (qwen.to(torch.bfloat16), torch.bfloat16, None),
            "mistral_sharded": (mistral, torch.float32, "8KB")}


def make():
    for name, (model, dtype, shard) in tiny_models().items():
        d = os.path.join(OUT, name)
        kwargs = {"max_shard_size": shard} if shard else {}
        model.save_pretrained(d, **kwargs)
        sums = {n: [float(p.float().sum()), float(p.float().abs().sum()), list(p.shape)]
                for n, p in model.state_dict().items()}
        if model.config.tie_word_embeddings and "lm_head.weight" in sums:
            del sums["lm_head.weight"]
        with open(os.path.join(d, "expected_sums.json"), "w") as f:
            json.dump(sums, f, indent=1, sort_keys=True)
        print("wrote", d, sorted(os.listdir(d)))


def check(folder):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    cfg = AutoConfig.from_pretrained(folder)
    arch = cfg.architectures[0]
    cls = AutoModelForSequenceClassification if "SequenceClassification" in arch else AutoModelForCausalLM
    model, info = cls.from_pretrained(folder, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        sys.exit(f"transformers reported loading problems for {folder}: {bad}")
    ours = load_file(os.path.join(folder, "model.safetensors"))
    state = model.state_dict()
    worst = 0.0
    for n, t in ours.items():
        worst = max(worst, float((state[n].float() - t.float()).abs().max()))
    ids = torch.tensor([[1, 5, 9, 13]])
    out = model(ids)
    print(f"{folder}: {arch} loaded by transformers, {len(ours)} tensors, max |diff| {worst}, "
          f"output shape {tuple(out.logits.shape)}")
    if worst != 0.0:
        sys.exit("tensors differ")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", nargs="*")
    a = ap.parse_args()
    if a.check:
        for folder in a.check:
            check(folder)
    else:
        make()
