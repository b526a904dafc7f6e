#!/usr/bin/env python3
"""How far PyTorch's own bf16 training step lands from its f32 step, on the learner's bf16 test case.

learner/tests/device_parity.rs (`bf16_gpu_step_agrees_with_cpu_f32_step`) runs one PPO actor step on
the fixture learner/tests/fixtures/ppo/actor (Qwen2, 2 layers, C 32, V 16) twice: CPU f32 and CUDA
bf16, and compares the two. What "within bf16 tolerance" means is measured here: the same model,
batch and step in PyTorch, once in f32 and once in bf16, and the bf16-vs-f32 differences of
  - the loss (pg_loss + entropy_loss),
  - every parameter's gradient, relative by norm: |g_bf16 - g_f32| / |g_f32|,
  - the first AdamW update Δ of the f32 master weights (after global grad-norm clipping at 1.0),
    relative by norm over all parameters together: |Δ_bf16 - Δ_f32| / |Δ_f32| (per tensor too, for
    reading only: AdamW's first step is about lr · sign(g), so per tensor this counts the few
    elements whose tiny gradient flips sign, 0 or 0.2-0.7 on tensors of 32 elements).
The test then asks ours to be within a small multiple of PyTorch's (see the test for the factor).

The step (what the Rust test's `step()` and `on_policy()` set up):
  3 sequences (tokens, prompt length) below; response token j of a sequence with prompt length p is
  predicted by row p - 1 + j; log-probs and entropies of softmax(logits / 0.7);
  π_old = the f32 model's log-probs (rounded to f32); advantages A_j = ((7 j mod 5) - 2) / 2;
  per token l = max(-A ρ, -A clip(ρ, 0.8, 1.2)) - 0.01 H with ρ = exp(logp - logp_old);
  loss = mean of l over all response tokens (token-mean);
  AdamW lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0, grad-norm clip 1.0.

The two precisions:
  f32   the checkpoint's float32 weights, float32 compute (CPU: no TF32).
  bf16  `model.to(torch.bfloat16)`: bf16 weights and activations, which is our GPU bf16 path
        (bf16 working weights, bf16 activations, f32 accumulation inside each op). The logits are
        widened to f32 before the log-softmax (ours keep them f32 from the LM-head GEMM). The
        gradients come out in bf16 (ours accumulate in f32); the optimiser runs on f32 master
        copies of the bf16 weights, as ours does.
  autocast (reported, not used by the test): f32 weights under torch.autocast(bfloat16): matmuls
        in bf16, norms and the residual stream in f32; a more precise mix than ours.

Writes learner/tests/fixtures/bf16_step/reference.json.

Run with: /work/pyenv/bin/python scripts/make_bf16_step_reference.py   (CPU, a few seconds)
"""

import json
import os

import torch
import transformers
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "learner", "tests", "fixtures")
MODEL = os.path.join(ROOT, "ppo", "actor")
OUT = os.path.join(ROOT, "bf16_step", "reference.json")
TEMPERATURE = 0.7
SEQS = [([3, 7, 1, 4, 9, 2, 2, 11, 5], 3), ([8, 8, 0, 13, 6, 1, 12], 2), ([5, 14, 2, 7, 3, 10, 4, 4, 1, 15, 6], 4)]
CLIP = 0.2
ENTROPY_COEF = 0.01
LR = 1e-3


def advantages(n):
    return torch.tensor([((j * 7 % 5) - 2.0) * 0.5 for j in range(n)], dtype=torch.float32)


def terms(model, tokens, p):
    """Response-token log-probs and entropies (f32) of one sequence at TEMPERATURE."""
    logits = model(input_ids=torch.tensor([tokens])).logits[0].float() / TEMPERATURE  # [L, V]
    logp = torch.log_softmax(logits, dim=-1)
    rows = torch.arange(p - 1, len(tokens) - 1)
    lp = logp[rows, torch.tensor(tokens[p:])]
    ent = -(logp[rows].exp() * logp[rows]).sum(-1)
    return lp, ent


def loss_of(model, old):
    per_token = []
    for (tokens, p), lp_old in zip(SEQS, old):
        lp, ent = terms(model, tokens, p)
        a = advantages(len(lp))
        ratio = torch.exp(torch.clamp(lp - lp_old, -20.0, 20.0))
        pg = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1 - CLIP, 1 + CLIP))
        per_token.append(pg - ENTROPY_COEF * ent)
    return torch.cat(per_token).mean()


def step(model, old, autocast=False):
    """Loss, f32 gradients and the first AdamW update of f32 master copies, per HF name."""
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = loss_of(model, old)
    loss.backward()
    names = [n for n, _ in model.named_parameters()]
    grads = [p.grad.detach().float().clone() for _, p in model.named_parameters()]
    masters = [torch.nn.Parameter(p.detach().float().clone()) for _, p in model.named_parameters()]
    for m, g in zip(masters, grads):
        m.grad = g.clone()
    before = [m.detach().clone() for m in masters]
    torch.nn.utils.clip_grad_norm_(masters, 1.0)
    opt = torch.optim.AdamW(masters, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    opt.step()
    updates = [m.detach() - b for m, b in zip(masters, before)]
    return loss.item(), dict(zip(names, grads)), dict(zip(names, updates))


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def flat(tensors):
    return torch.cat([t.flatten() for t in tensors.values()])


def main():
    torch.manual_seed(0)
    f32 = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        old = [terms(f32, t, p)[0].detach() for t, p in SEQS]
    loss32, g32, u32 = step(f32, old)
    bf16 = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.bfloat16, attn_implementation="eager").eval()
    loss16, g16, u16 = step(bf16, old)
    ac = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager").eval()
    loss_ac, g_ac, u_ac = step(ac, old, autocast=True)

    out = {
        "made_by": "scripts/make_bf16_step_reference.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "loss_f32": loss32,
        "loss_bf16": loss16,
        "loss_abs_err_bf16": abs(loss16 - loss32),
        "loss_abs_err_autocast": abs(loss_ac - loss32),
        "grad_rel_err_bf16": {n: rel(g16[n], g32[n]) for n in g32},
        "grad_rel_err_autocast": {n: rel(g_ac[n], g32[n]) for n in g32},
        "update_rel_err_bf16_all": rel(flat(u16), flat(u32)),
        "update_rel_err_autocast_all": rel(flat(u_ac), flat(u32)),
        "update_rel_err_bf16": {n: rel(u16[n], u32[n]) for n in u32},
        "update_rel_err_autocast": {n: rel(u_ac[n], u32[n]) for n in u32},
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"loss f32 {loss32:.6f} bf16 {loss16:.6f} (|Δ| {abs(loss16 - loss32):.2e}; autocast {abs(loss_ac - loss32):.2e})")
    print(f"AdamW update, all parameters: bf16 {out['update_rel_err_bf16_all']:.3f}, autocast {out['update_rel_err_autocast_all']:.3f}")
    print(f"{'tensor':45s} {'grad bf16':>10s} {'grad ac':>10s} {'upd bf16':>10s} {'upd ac':>10s}")
    for n in g32:
        print(f"{n:45s} {out['grad_rel_err_bf16'][n]:10.2e} {out['grad_rel_err_autocast'][n]:10.2e} "
              f"{out['update_rel_err_bf16'][n]:10.2e} {out['update_rel_err_autocast'][n]:10.2e}")


if __name__ == "__main__":
    main()
