"""Shared helpers for the peer benchmarks: model shapes and CUDA-event timing."""
import json
import time

import torch

# Qwen2.5-0.5B shapes (random weights): the shapes design.md's targets are stated at.
QWEN25_05B = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
    rms_norm_eps=1e-6, tie_word_embeddings=True,
)
# SmolLM2-135M shapes (Llama, tied embeddings).
SMOLLM2_135M = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
    rms_norm_eps=1e-5, tie_word_embeddings=True,
)
# Small shapes for CPU smoke runs of the peers (vocab and the rest from the shapes above).
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)

# Dense bf16 peak of an H100/H200 SXM (datasheet), the denominator of MFU.
PEAK_BF16_FLOPS = 989e12


def save_random_model(shapes, tok, path, seed=0):
    """A random-weight Llama of `shapes` (vocab grown to the tokenizer's) and the tokenizer, saved
    as an HF folder at `path`: the model both RL-iteration benchmarks (TRL and realign) start from."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(**shapes)
    cfg.vocab_size = max(cfg.vocab_size, len(tok))
    cfg.eos_token_id = tok.eos_token_id
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)


def timed(fn, warmup=1, iters=3):
    """Median wall time of fn() in seconds, synchronising the GPU around each run."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def report(name, result, out=None):
    result = dict(result, benchmark=name, torch=torch.__version__,
                  device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    line = json.dumps(result)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
