#!/usr/bin/env python3
"""Reference scores for reward/'s model reward, from transformers' *ForSequenceClassification.

Writes tiny random-init reward models (float32 safetensors via `save_pretrained`, HF layout) and
`expected.json` beside each: the samples (prompt and response token ids) and the score
transformers gives each one, i.e. the scalar head on the LAST token of prompt + response.
The scores come from one right-padded batch with an attention mask (how HF reward models are run),
and the script checks that they equal one-sequence-at-a-time runs.

  reward/tests/fixtures/tiny_llama_rm   LlamaForSequenceClassification: GQA (H=4, K=2), 2 layers
  reward/tests/fixtures/tiny_qwen2_rm   Qwen2ForSequenceClassification: q/k/v biases, tied embeddings

Run with the project's Python (PyTorch + transformers), from the repo root:
  /work/pyenv/bin/python scripts/make_reward_fixture.py
"""

import json
import os

import torch
import transformers
from transformers import LlamaConfig, LlamaForSequenceClassification, Qwen2Config, Qwen2ForSequenceClassification

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reward", "tests", "fixtures")
PAD = 0  # never used inside a sample, so HF's "last non-pad token" is the last real token


def reinit(model, gen, std):
    """Re-draw every weight with a larger std than HF's 0.02 so attention and MLPs visibly matter;
    norm weights stay near 1."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))


def make_samples(gen, vocab):
    """Prompts and responses of assorted lengths (one-token responses included), ids in 1..vocab."""
    lengths = [(3, 5), (7, 1), (1, 9), (12, 4), (5, 5), (2, 14)]
    samples = []
    for i, (p, r) in enumerate(lengths):
        ids = torch.randint(1, vocab, (p + r,), generator=gen).tolist()
        samples.append({"prompt": f"prompt {i}", "prompt_tokens": ids[:p], "response": f"response {i}", "response_tokens": ids[p:]})
    return samples


def hf_scores(model, samples):
    """Scores from one right-padded batch, checked against one-by-one runs."""
    seqs = [s["prompt_tokens"] + s["response_tokens"] for s in samples]
    longest = max(len(s) for s in seqs)
    ids = torch.tensor([s + [PAD] * (longest - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (longest - len(s)) for s in seqs])
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits[:, 0]
        single = torch.stack([model(input_ids=torch.tensor([s])).logits[0, 0] for s in seqs])
    assert torch.allclose(batched, single, atol=1e-5), (batched, single)
    return batched.tolist()


def fixture(name, model_cls, config, seed):
    out_dir = os.path.join(ROOT, name)
    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    model = model_cls(config).to(torch.float32).eval()
    reinit(model, gen, 0.3)
    model.save_pretrained(out_dir, safe_serialization=True)
    samples = make_samples(gen, config.vocab_size)
    scores = hf_scores(model, samples)
    expected = {
        "made_by": "scripts/make_reward_fixture.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "samples": samples,
        "scores": scores,
    }
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print(f"{name}: scores {[round(s, 4) for s in scores]}")


def main():
    common = dict(
        vocab_size=96, max_position_embeddings=64, num_labels=1, pad_token_id=PAD, bos_token_id=None,
        eos_token_id=None, attn_implementation="eager",
    )
    llama = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
        **common,
    )
    fixture("tiny_llama_rm", LlamaForSequenceClassification, llama, seed=11)
    qwen2 = Qwen2Config(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=True,
        use_sliding_window=False, **common,
    )
    fixture("tiny_qwen2_rm", Qwen2ForSequenceClassification, qwen2, seed=12)


if __name__ == "__main__":
    main()
