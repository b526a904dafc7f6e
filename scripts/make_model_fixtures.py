#!/usr/bin/env python3
"""Reference fixtures for the model crate, made with Hugging Face `transformers`.

Writes small random-init checkpoints (float32, `save_pretrained`, safetensors) into
model/tests/fixtures/hf/<name>/ together with what our forward/backward must reproduce:

  batch.json            the packed batch: token ids per sequence, the SFT loss mask, temperature,
                        and the per-position weights of the extra losses
  outputs.safetensors   per-position log-probs of the next token and entropies (at temperature 1
                        and at the fixture temperature), the SFT loss, and the gradient of every
                        parameter (HF names, prefixed `grad.`) of that loss; extra losses add their
                        own prefixed gradients (see below)
  versions.json         (in hf/) the torch / transformers versions that made the files

Conventions (the ones `realign score` and the model crate use):
  logprob[i] = log p(tokens[i+1] | tokens[..=i]); 0 at the last position of each sequence;
  entropy[i] = entropy of that same distribution, at every position (the last one included);
  logits are divided by the temperature before the softmax.

The reference math runs in float64 on the float32 weights that are saved, so the fixture is the exact
answer for those weights and our f32 implementation is measured against it, not against f32 noise.

For the bf16 tests the causal-LM fixtures also hold what transformers' own bf16 forward gives on the
same batch (`hf_bf16_logprobs`, `hf_bf16_entropy`, `hf_bf16_logprobs_t`, `hf_bf16_entropy_t`): the
saved checkpoint loaded with `dtype=torch.bfloat16` on the CPU, eager attention, its bf16 logits
widened and soft-maxed in float64 as the reference is. Its error against the float64 reference is
the yardstick for ours: a bf16 forward's log-prob error depends on the weights and the batch (the
logits' size, the temperature), so a fixed bound means little on its own.

A character-level tokenizer (tokenizer.json, one id per printable ASCII character) is saved with
llama_gqa so that text input can be tested end to end; batch.json then also holds a sentence, its
token ids as HF tokenizes it, and outputs.safetensors its log-probs and entropies
(`text_logprobs`, `text_entropy`, per-sequence convention above).

Extra losses:
  qwen2_tied: `pg`   loss = sum_i a_i * logprob_T[i] + b_i * entropy_T[i] with a, b in batch.json
              (exercises arbitrary d(logprob), d(entropy) and the temperature in the backward);
  llama_seqcls (a LlamaForSequenceClassification checkpoint with a scalar head `score.weight`):
              per-position values, the HF pooled score of each sequence (its last token), and the
              gradients (`value_grad.`) of loss = sum_i w_i * value[i].

Run with: /work/pyenv/bin/python scripts/make_model_fixtures.py  (CPU is enough; ~10 s)
"""

import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model", "tests", "fixtures", "hf")
TEMPERATURE = 0.7
# Sequence lengths of the fixed batch (packed back to back: N = 24 tokens, S = 3 sequences).
SEQ_LENS = [7, 12, 5]
# How many leading tokens of each sequence are "prompt"; the rest is the response the SFT loss sees.
PROMPT_LENS = [3, 4, 2]


def reinit(model, gen, embed_std):
    """Replaces HF's tiny default init (std 0.02 gives near-uniform logits and vanishing gradients)
    by weights that make every path matter: O(1) activations, peaked-but-not-degenerate softmaxes,
    non-trivial norm weights and biases."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(embed_std * torch.randn(p.shape, generator=gen))
            elif name == "lm_head.weight":
                p.copy_(2.0 / p.shape[1] ** 0.5 * torch.randn(p.shape, generator=gen))
            else:
                # Linear [out, in]: fan-in scaling keeps the residual stream O(1).
                p.copy_(1.0 / p.shape[1] ** 0.5 * torch.randn(p.shape, generator=gen))


def make_batch(gen, vocab):
    seqs = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in SEQ_LENS]
    # loss_mask[i] = 1 when position i predicts a response token (tokens[i+1] is past the prompt).
    masks = [[1 if (i + 1) >= p and i + 1 < n else 0 for i in range(n)] for n, p in zip(SEQ_LENS, PROMPT_LENS)]
    return seqs, masks


def per_position(logits, tokens, temperature):
    """logits [T, V] float64 -> (logprob [T] with 0 at the last position, entropy [T])."""
    logp = torch.log_softmax(logits / temperature, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    target_lp = torch.zeros(len(tokens), dtype=logits.dtype)
    target_lp[:-1] = logp[:-1].gather(1, torch.tensor(tokens[1:]).unsqueeze(1)).squeeze(1)
    return target_lp, entropy


def hf_bf16_outputs(out_dir, seqs, temperature):
    """transformers' own bf16 forward of the saved checkpoint (CPU): per-position log-probs and
    entropies at temperature 1 and T, computed in float64 from its bf16 logits."""
    model = transformers.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16, attn_implementation="eager")
    model.eval()
    outputs = {}
    for tag, temp in [("", 1.0), ("_t", temperature)]:
        lps, ents = [], []
        for s in seqs:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([s])).logits[0].double()  # [T, V] bf16 values
            lp, ent = per_position(logits, s, temp)
            lps.append(lp)
            ents.append(ent)
        outputs["hf_bf16_logprobs" + tag] = torch.cat(lps)
        outputs["hf_bf16_entropy" + tag] = torch.cat(ents)
    return outputs


def grads_of(model, loss, prefix):
    model.zero_grad()
    loss.backward()
    return {f"{prefix}.{n}": p.grad.detach().to(torch.float32).contiguous() for n, p in model.named_parameters()}


TEXT = "Hi there, 12 tokens!"


def char_tokenizer(vocab_size):
    """One id per printable ASCII character (id 0 is <unk>), padded with unused entries."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0}
    for i in range(32, 127):
        vocab[chr(i)] = len(vocab)
    while len(vocab) < vocab_size:
        vocab[f"<extra_{len(vocab)}>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def causal_lm_fixture(name, cls, config, embed_std, seed, pg=False, text=False):
    out_dir = os.path.join(ROOT, name)
    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    model = cls(config).to(torch.float32)
    reinit(model, gen, embed_std)
    model.save_pretrained(out_dir, safe_serialization=True)

    seqs, masks = make_batch(gen, config.vocab_size)
    ref = model.to(torch.float64)
    ref.eval()

    def run(temperature):
        lps, ents = [], []
        for s in seqs:
            logits = ref(input_ids=torch.tensor([s])).logits[0]  # [T, V]
            lp, ent = per_position(logits, s, temperature)
            lps.append(lp)
            ents.append(ent)
        return torch.cat(lps), torch.cat(ents)  # [N], [N]

    lp1, ent1 = run(1.0)
    lpt, entt = run(TEMPERATURE)
    mask = torch.tensor([m for ms in masks for m in ms], dtype=torch.float64)
    sft_loss = -(lp1 * mask).sum() / mask.sum()
    outputs = {
        "logprobs": lp1.detach(),
        "entropy": ent1.detach(),
        "logprobs_t": lpt.detach(),
        "entropy_t": entt.detach(),
        "sft_loss": sft_loss.detach().reshape(1),
    }
    outputs.update(grads_of(ref, sft_loss, "grad"))

    batch = {"sequences": seqs, "loss_mask": masks, "temperature": TEMPERATURE}
    if pg:
        n = sum(SEQ_LENS)
        a = torch.randn(n, generator=gen, dtype=torch.float64)
        ends = torch.tensor(SEQ_LENS).cumsum(0) - 1
        a[ends] = 0.0  # no target at the last position of a sequence
        b = 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
        lpt, entt = run(TEMPERATURE)
        pg_loss = (a * lpt).sum() + (b * entt).sum()
        outputs["pg_loss"] = pg_loss.detach().reshape(1)
        outputs.update(grads_of(ref, pg_loss, "pg_grad"))
        batch["pg_logprob_weights"] = a.tolist()
        batch["pg_entropy_weights"] = b.tolist()
    if text:
        tokenizer = char_tokenizer(config.vocab_size)
        tokenizer.save_pretrained(out_dir)
        ids = tokenizer(TEXT, add_special_tokens=True)["input_ids"]
        logits = ref(input_ids=torch.tensor([ids])).logits[0]
        lp, ent = per_position(logits, ids, 1.0)
        outputs["text_logprobs"] = lp[:-1].detach()
        outputs["text_entropy"] = ent[:-1].detach()
        batch["text"] = TEXT
        batch["text_tokens"] = ids
    outputs.update(hf_bf16_outputs(out_dir, seqs, TEMPERATURE))

    save_file({k: v.to(torch.float32).contiguous() for k, v in outputs.items()}, os.path.join(out_dir, "outputs.safetensors"))
    with open(os.path.join(out_dir, "batch.json"), "w") as f:
        json.dump(batch, f)
    hf_err = {k: (outputs["hf_bf16_" + k] - outputs[k]).abs().mean().item() for k in ["logprobs", "logprobs_t"]}
    print(
        f"{name}: sft_loss {sft_loss.item():.6f}, mean entropy {ent1.mean().item():.4f}, transformers bf16 mean abs "
        f"log-prob error {hf_err['logprobs']:.4f} (T=1), {hf_err['logprobs_t']:.4f} (T={TEMPERATURE})"
    )


def seqcls_fixture(name, config, seed):
    out_dir = os.path.join(ROOT, name)
    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    model = LlamaForSequenceClassification(config).to(torch.float32)
    reinit(model, gen, 1.0)
    model.save_pretrained(out_dir, safe_serialization=True)

    seqs, masks = make_batch(gen, config.vocab_size)
    ref = model.to(torch.float64)
    ref.eval()
    values, pooled = [], []
    for s in seqs:
        ids = torch.tensor([s])
        # Per-position values: the score head on every final hidden state (what a critic needs).
        hidden = ref.model(input_ids=ids).last_hidden_state
        values.append(ref.score(hidden)[0, :, 0])
        # HF's own pooled output: the score of the last token (batch of one, no padding).
        pooled.append(ref(input_ids=ids).logits[0, 0])
    value = torch.cat(values)  # [N]
    w = torch.randn(value.shape[0], generator=gen, dtype=torch.float64)
    loss = (w * value).sum()
    outputs = {"value": value.detach(), "score_last": torch.stack(pooled).detach(), "value_loss": loss.detach().reshape(1)}
    outputs.update(grads_of(ref, loss, "value_grad"))
    save_file({k: v.to(torch.float32).contiguous() for k, v in outputs.items()}, os.path.join(out_dir, "outputs.safetensors"))
    with open(os.path.join(out_dir, "batch.json"), "w") as f:
        json.dump({"sequences": seqs, "loss_mask": masks, "value_weights": w.tolist()}, f)
    print(f"{name}: scores {[round(p.item(), 4) for p in pooled]}")


def main():
    torch.manual_seed(0)
    common = dict(vocab_size=128, max_position_embeddings=64, attn_implementation="eager", bos_token_id=None, eos_token_id=None)
    # Llama with grouped-query attention (H=4 query heads share K=2 kv heads) and an explicit head_dim
    # (D=16) that differs from hidden / heads, untied lm_head.
    llama = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False, **common,
    )
    causal_lm_fixture("llama_gqa", LlamaForCausalLM, llama, 1.0, seed=1, text=True)
    # Qwen2: q/k/v biases, tied embeddings (the embedding gradient gets both contributions).
    qwen2 = Qwen2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True, use_sliding_window=False, **common,
    )
    causal_lm_fixture("qwen2_tied", Qwen2ForCausalLM, qwen2, 0.5, seed=2, pg=True)
    # Mistral: multi-query attention (K=1), head_dim 16 with hidden 32 / 4 heads, no sliding window.
    mistral = MistralConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        sliding_window=None, tie_word_embeddings=False, **common,
    )
    causal_lm_fixture("mistral", MistralForCausalLM, mistral, 1.0, seed=3)
    # Scalar-head (critic / reward model) variant: LlamaForSequenceClassification, one label.
    seqcls = LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False, num_labels=1, **common,
    )
    seqcls_fixture("llama_seqcls", seqcls, seed=4)

    with open(os.path.join(ROOT, "versions.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0]}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
