#!/usr/bin/env python3
"""Reference fixture for the learner's PPO actor and critic steps, made with PyTorch/transformers.

Writes into learner/tests/fixtures/ppo/:
  actor/       a random-init Qwen2ForCausalLM (float32 safetensors + config.json, save_pretrained)
  critic/      a random-init Qwen2ForSequenceClassification (num_labels 1) of the same shape
  batch.json   3 sequences (token ids, prompt lengths) and, per response token, old / behaviour /
               reference log-probs, advantages, old values and returns; the loss settings
  outputs.safetensors
               `actor_grad.<HF name>` and `critic_grad.<HF name>`: the gradient of every parameter
               of the actor loss and of the critic loss; `actor_loss`, `critic_loss`, and the
               metrics `pg_clipfrac`, `pg_clipfrac_lower`, `ratio_mean`, `ppo_kl`, `vf_clipfrac`, `entropy`
  versions.json torch / transformers versions

The reference is an independent, direct PyTorch implementation of the losses (veRL semantics):
  ratio = exp(clamp(logp - logp_old, -20, 20)); pg = max(-A ratio, -A clamp(ratio, 1-e_lo, 1+e_hi));
  dual clip: pg = min(pg, -A c) where A < 0; TIS: pg *= min(exp(logp_old - logp_behaviour), cap);
  + kl_coef * k3(logp, logp_ref) - entropy_coef * entropy; seq-mean-token-mean aggregation.
  critic: 0.5 * max((V - R)^2, (V_old + clamp(V - V_old, -e_v, e_v) - R)^2), token-mean.
Log-probs are those of the next token under softmax(logits / T), T = 0.7 (row i predicts token
i+1; response token j of a sequence with prompt length p is predicted by row p - 1 + j). Each
sequence runs on its own (batch 1, no padding), which is what packed causal attention computes.

The math runs in float64 on the float32 weights that are saved, and the per-token inputs are saved
as float32 and read back before use, so the fixture is the exact answer for what the Rust test sees.

Run with: /work/pyenv/bin/python scripts/make_ppo_fixture.py   (CPU, a few seconds)
"""

import json
import os

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "learner", "tests", "fixtures", "ppo")
TEMPERATURE = 0.7
SEQS = [([3, 7, 1, 4, 9, 2, 2, 11, 5], 3), ([8, 8, 0, 13, 6, 1, 12], 2), ([5, 14, 2, 7, 3, 10, 4, 4, 1, 15, 6], 4)]
LOSS = dict(clip_low=0.2, clip_high=0.28, dual_clip=1.5, entropy_coef=0.01, kl_coef=0.05,
            kl_estimator="k3", tis_cap=2.0, agg="seq-mean-token-mean", vf_clip=0.2)


def config():
    # No pad token: HF gives the pad id's embedding row a zero gradient (nn.Embedding padding_idx),
    # which is not what a packed batch without padding computes.
    return Qwen2Config(vocab_size=16, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                       torch_dtype="float32", num_labels=1, pad_token_id=None)


def reinit(model, gen):
    """O(1) activations and peaked-but-not-degenerate softmaxes so every path carries gradient."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(1.5 / p.shape[1] ** 0.5 * torch.randn(p.shape, generator=gen))


def f32(x):
    """Round to float32 (what the Rust side reads) and back to float64."""
    return torch.tensor(np.asarray(x, dtype=np.float32), dtype=torch.float64)


def policy_terms(model, tokens, p):
    """Response-token log-probs and entropies of one sequence at TEMPERATURE."""
    ids = torch.tensor([tokens])
    logits = model(input_ids=ids).logits[0].double() / TEMPERATURE  # [L, V]
    logp_all = torch.log_softmax(logits, dim=-1)
    rows = torch.arange(p - 1, len(tokens) - 1)
    lp = logp_all[rows, torch.tensor(tokens[p:])]
    ent = -(logp_all[rows].exp() * logp_all[rows]).sum(-1)
    return lp, ent


def values_of(critic, tokens, p):
    ids = torch.tensor([tokens])
    h = critic.model(input_ids=ids).last_hidden_state[0]
    v = critic.score(h)[:, 0].double()  # [L]
    return v[p - 1:len(tokens) - 1]


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    actor = Qwen2ForCausalLM(config())
    reinit(actor, gen)
    critic = Qwen2ForSequenceClassification(config())
    reinit(critic, gen)
    os.makedirs(OUT, exist_ok=True)
    actor.save_pretrained(os.path.join(OUT, "actor"), safe_serialization=True)
    critic.save_pretrained(os.path.join(OUT, "critic"), safe_serialization=True)
    actor = actor.double()
    critic = critic.double()

    rng = np.random.default_rng(5)
    batch = {"temperature": TEMPERATURE, "loss": LOSS, "sequences": []}
    with torch.no_grad():
        for tokens, p in SEQS:
            lp, _ = policy_terms(actor, tokens, p)
            v = values_of(critic, tokens, p)
            n = len(tokens) - p
            old = lp.numpy() + rng.normal(0, 0.5, n)
            batch["sequences"].append({
                "tokens": tokens,
                "prompt_len": p,
                "old_logprob": np.float32(old).tolist(),
                "behaviour_logprob": np.float32(old + rng.normal(0, 0.5, n)).tolist(),
                "ref_logprob": np.float32(lp.numpy() + rng.normal(0, 0.3, n)).tolist(),
                "advantages": np.float32(rng.normal(0, 1, n)).tolist(),
                "old_values": np.float32(v.numpy() + rng.normal(0, 0.3, n)).tolist(),
                "returns": np.float32(rng.normal(0, 1, n)).tolist(),
            })

    # Actor loss.
    L = LOSS
    seq_losses, clipped, ratios, kls, ents, ntok = [], 0.0, 0.0, 0.0, 0.0, 0
    dual, capped = 0.0, 0.0
    for s in batch["sequences"]:
        lp, ent = policy_terms(actor, s["tokens"], s["prompt_len"])
        old, beh, ref, adv = (f32(s[k]) for k in ("old_logprob", "behaviour_logprob", "ref_logprob", "advantages"))
        log_ratio = torch.clamp(lp - old, -20.0, 20.0)
        ratio = torch.exp(log_ratio)
        pg1 = -adv * ratio
        pg2 = -adv * torch.clamp(ratio, 1 - L["clip_low"], 1 + L["clip_high"])
        pg = torch.maximum(pg1, pg2)
        pg = torch.where(adv < 0, torch.minimum(pg, -adv * L["dual_clip"]), pg)
        pg = pg * torch.clamp(torch.exp(old - beh), max=L["tis_cap"])
        d = ref - lp
        k3 = torch.exp(d) - d - 1
        tok = pg + L["kl_coef"] * k3 - L["entropy_coef"] * ent
        seq_losses.append(tok.mean())
        dual += float(((adv < 0) & (torch.maximum(pg1, pg2) > -adv * L["dual_clip"])).double().sum())
        capped += float((torch.exp(old - beh) > L["tis_cap"]).double().sum())
        clipped += float((pg2 > pg1).double().sum())
        ratios += float(ratio.detach().sum())
        kls += float((-(lp - old)).detach().sum())
        ents += float(ent.detach().sum())
        ntok += len(lp)
    actor_loss = torch.stack(seq_losses).mean()
    actor_loss.backward()

    # Critic loss.
    errs = []
    vf_clipped = 0.0
    for s in batch["sequences"]:
        v = values_of(critic, s["tokens"], s["prompt_len"])
        vo, ret = f32(s["old_values"]), f32(s["returns"])
        vc = vo + torch.clamp(v - vo, -L["vf_clip"], L["vf_clip"])
        e1, e2 = (v - ret) ** 2, (vc - ret) ** 2
        errs.append(0.5 * torch.maximum(e1, e2))
        vf_clipped += float((e2 > e1).double().sum())
    critic_loss = torch.cat(errs).mean()
    critic_loss.backward()

    out = {}
    for prefix, m in (("actor_grad.", actor), ("critic_grad.", critic)):
        for name, p in m.named_parameters():
            out[prefix + name] = p.grad.float().contiguous()
    out["actor_loss"] = actor_loss.detach().float().reshape(1)
    out["critic_loss"] = critic_loss.detach().float().reshape(1)
    out["pg_clipfrac"] = torch.tensor([clipped / ntok], dtype=torch.float32)
    out["ratio_mean"] = torch.tensor([ratios / ntok], dtype=torch.float32)
    out["ppo_kl"] = torch.tensor([kls / ntok], dtype=torch.float32)
    out["entropy"] = torch.tensor([ents / ntok], dtype=torch.float32)
    out["vf_clipfrac"] = torch.tensor([vf_clipped / ntok], dtype=torch.float32)
    out["pg_clipfrac_lower"] = torch.tensor([dual / ntok], dtype=torch.float32)
    save_file(out, os.path.join(OUT, "outputs.safetensors"))
    with open(os.path.join(OUT, "batch.json"), "w") as f:
        json.dump(batch, f, indent=1)
    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__}, f)
    print(f"actor loss {actor_loss.item():.6f}, clipfrac {clipped / ntok:.3f}, "
          f"dual-clipped {dual:.0f}, TIS-capped {capped:.0f}, "
          f"critic loss {critic_loss.item():.6f}, vf_clipfrac {vf_clipped / ntok:.3f}, {ntok} tokens")


if __name__ == "__main__":
    main()
