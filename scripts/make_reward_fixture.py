#!/usr/bin/env python3
"""Reference scores for reward/'s model reward, from transformers' *ForSequenceClassification.

Writes tiny random-init reward models (float32 safetensors via `save_pretrained`, HF layout) and
`expected.json` beside each: the samples (prompt and response token ids) and the score
transformers gives each one, i.e. the scalar head on the LAST token of prompt + response.
The scores come from one right-padded batch with an attention mask (how HF reward models are run),
and the script checks that they equal one-sequence-at-a-time runs.

The first 6 samples are hand-picked lengths (one-token responses included); 90 more of random
lengths follow, so that the bf16 test can compare mean errors, which over 6 samples are dominated
by one or two (a bf16 forward's score errors are heavy-tailed on these models: mostly ~0.02, now
and then 0.1-0.3). `scores_hf_bf16` is what transformers' own bf16 forward gives for each sample
(the checkpoint loaded with dtype=torch.bfloat16 on the CPU, one sequence at a time): its error
against `scores` is the yardstick for our bf16 path.

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


EXTRA_SAMPLES = 90


def make_samples(gen, vocab):
    """Prompts and responses of assorted lengths (one-token responses included), ids in 1..vocab:
    6 fixed length pairs, then EXTRA_SAMPLES random ones (prompt 1-8, response 1-10 tokens)."""
    lengths = [(3, 5), (7, 1), (1, 9), (12, 4), (5, 5), (2, 14)]
    fixed = len(lengths)
    samples = []
    for i, (p, r) in enumerate(lengths):
        ids = torch.randint(1, vocab, (p + r,), generator=gen).tolist()
        samples.append({"prompt": f"prompt {i}", "prompt_tokens": ids[:p], "response": f"response {i}", "response_tokens": ids[p:]})
    # Drawn after the fixed ones, so those (and their scores) stay what they were.
    for i in range(fixed, fixed + EXTRA_SAMPLES):
        p = int(torch.randint(1, 9, (1,), generator=gen))
        r = int(torch.randint(1, 11, (1,), generator=gen))
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


def hf_bf16_scores(out_dir, model_cls, samples):
    """transformers' own bf16 forward of the saved checkpoint (CPU), one sequence at a time."""
    model = model_cls.from_pretrained(out_dir, dtype=torch.bfloat16, attn_implementation="eager").eval()
    with torch.no_grad():
        return [model(input_ids=torch.tensor([s["prompt_tokens"] + s["response_tokens"]])).logits[0, 0].float().item() for s in samples]


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
        "scores_hf_bf16": hf_bf16_scores(out_dir, model_cls, samples),
    }
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    err = [abs(a - b) for a, b in zip(expected["scores_hf_bf16"], scores)]
    print(f"{name}: scores {[round(s, 4) for s in scores[:6]]} ..., transformers bf16 error mean {sum(err) / len(err):.4f} max {max(err):.4f}")


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
