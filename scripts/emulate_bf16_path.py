#!/usr/bin/env python3
"""Emulates realign's CUDA bf16 forward on the committed transformers fixtures, to find where the
bf16 path loses precision.

Every op computes in f32 from bf16 inputs and rounds its output to bf16 exactly where our CUDA
kernels and model code do (kernels/cu/*.cu, kernels/src/cuda/*.rs, model/src/llama/*.rs):

  embedding gather      bf16 table rows (exact)
  rmsnorm               rstd in f32; y = bf16(w * bf16(x * rstd))              (rmsnorm.cu)
  linear (+bias)        y = bf16(x wᵀ + b), f32 accumulate, one rounding       (linear.rs: bias seeds
                        an f32 C, beta = 1, then a cast; before 2026-11-29 C was bf16 and cuBLAS
                        rounded x wᵀ before adding b, see scripts/check_bf16_ops.py)
  rope                  cos/sin correctly rounded f32; y = bf16(x1 c - x2 s)   (rope.cu)
  attention             f32 softmax, out = bf16(P V / l); with the tensor-core kernel P = bf16(exp(s - m))
                        before P V, l summed from the unrounded p               (attention_mma.cu)
  swiglu                bf16(silu(g) u) in f32                                  (swiglu.cu)
  residual adds         bf16(a + b)                                             (elementwise.cu)
  final norm            as rmsnorm
  LM head               logits = h Wᵀ kept in f32 (tied: the embedding)         (lm_head.rs via linear_out;
                        until 2026-11-29 they were rounded to bf16: the `logits` point below)
  log-softmax           f32 from the logits                                     (logsoftmax.cu)

Each rounding point can be switched off (kept in f32) by name, to see which one costs the error.
Prints, per fixture, the mean absolute log-prob / entropy error (temperature 1 and the fixture
temperature) against the float64 reference in outputs.safetensors, for: transformers' own bf16
forward, our emulated path, and our path with each rounding point removed in turn.

With --trials R it also draws R random batches of the fixture's shape per fixture and reports the
expected (average) error of each variant against an unrounded f32 run of the same weights, so that one
lucky or unlucky 24-token batch does not decide the comparison.

Run with: /work/pyenv/bin/python scripts/emulate_bf16_path.py [--mma] [--trials 30]   (CPU, ~1 min)
"""

import argparse
import json
import math
import os

import torch
from safetensors.torch import load_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model", "tests", "fixtures", "hf")
FIXTURES = ["llama_gqa", "qwen2_tied", "mistral"]
POINTS = ["qkv", "rope", "attn_out", "o_proj", "resid", "norm", "mlp_in", "swiglu", "down", "final_norm", "logits"]


def bf(x):
    return x.to(torch.bfloat16).to(torch.float32)


class Emu:
    """Our bf16 forward; `f32` is the set of rounding points kept in f32 instead."""

    def __init__(self, cfg, w, f32=(), mma=False):
        self.cfg, self.f32, self.mma = cfg, set(f32), mma
        self.w = {k: bf(v.float()) for k, v in w.items()}  # weights cast f32 -> bf16, as the test does

    def r(self, point, x):
        return x if point in self.f32 else bf(x)

    def rmsnorm(self, x, w, point):
        eps = self.cfg["rms_norm_eps"]
        rstd = torch.rsqrt((x * x).mean(-1, keepdim=True) + eps)
        return self.r(point, w * self.r(point, x * rstd))

    def linear(self, x, name, point, bias=True):
        y = x.double() @ self.w[name + ".weight"].double().T  # f32 accumulate; f64 here is closer than bf16 noise
        b = self.w.get(name + ".bias") if bias else None
        if b is not None:
            y = y + b.double()
        return self.r(point, y.float())

    def rope(self, x, pos):
        d = x.shape[-1]
        half = d // 2
        theta = self.cfg["rope_parameters"]["rope_theta"] if "rope_parameters" in self.cfg else self.cfg["rope_theta"]
        i = torch.arange(half, dtype=torch.float32)
        inv_freq = (1.0 / torch.tensor(theta, dtype=torch.float64) ** ((2 * i).double() / d)).float()
        a = (pos.float()[:, None] * inv_freq[None, :]).double()  # f32 angle
        c, s = torch.cos(a).float()[:, None, :], torch.sin(a).float()[:, None, :]
        x1, x2 = x[..., :half], x[..., half:]
        return self.r("rope", torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1))

    def attention(self, q, k, v):
        # q [T,H,D], k/v [T,K,D], one sequence, causal.
        t, h, d = q.shape
        kh = k.shape[1]
        k = k.repeat_interleave(h // kh, dim=1)
        v = v.repeat_interleave(h // kh, dim=1)
        s = torch.einsum("thd,uhd->htu", q.double(), k.double()).float() * (1.0 / math.sqrt(d))
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        s = s.masked_fill(~mask, float("-inf"))
        m = s.max(-1, keepdim=True).values
        p = torch.exp(s - m)
        l = p.sum(-1, keepdim=True)
        pv = bf(p) if self.mma else p
        o = torch.einsum("htu,uhd->thd", pv.double(), v.double()).float() / l.permute(1, 0, 2)
        return self.r("attn_out", o)

    def forward(self, ids):
        cfg, w = self.cfg, self.w
        t = len(ids)
        h, kh = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        d = cfg.get("head_dim") or cfg["hidden_size"] // h
        pos = torch.arange(t)
        x = w["model.embed_tokens.weight"][torch.tensor(ids)]
        for layer in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{layer}."
            xn = self.rmsnorm(x, w[p + "input_layernorm.weight"], "norm")
            q = self.linear(xn, p + "self_attn.q_proj", "qkv").reshape(t, h, d)
            k = self.linear(xn, p + "self_attn.k_proj", "qkv").reshape(t, kh, d)
            v = self.linear(xn, p + "self_attn.v_proj", "qkv").reshape(t, kh, d)
            q, k = self.rope(q, pos), self.rope(k, pos)
            att = self.attention(q, k, v).reshape(t, h * d)
            x2 = self.r("resid", self.linear(att, p + "self_attn.o_proj", "o_proj") + x)
            xn2 = self.rmsnorm(x2, w[p + "post_attention_layernorm.weight"], "norm")
            g = self.linear(xn2, p + "mlp.gate_proj", "mlp_in")
            u = self.linear(xn2, p + "mlp.up_proj", "mlp_in")
            act = self.r("swiglu", g * torch.sigmoid(g) * u)
            x = self.r("resid", self.linear(act, p + "mlp.down_proj", "down") + x2)
        hid = self.rmsnorm(x, w["model.norm.weight"], "final_norm")
        head = "lm_head" if "lm_head.weight" in w else "model.embed_tokens"
        return self.linear(hid, head, "logits", bias=False)  # [T,V]


def per_position(logits, tokens, temperature):
    logp = torch.log_softmax(logits.double() / temperature, dim=-1)
    ent = -(logp.exp() * logp).sum(-1)
    lp = torch.zeros(len(tokens), dtype=torch.float64)
    lp[:-1] = logp[:-1].gather(1, torch.tensor(tokens[1:]).unsqueeze(1)).squeeze(1)
    return lp, ent


def errors(logits_fn, seqs, temperature, ref):
    out = {}
    for tag, temp in [("", 1.0), ("_t", temperature)]:
        lps, ents = [], []
        for s in seqs:
            lp, ent = per_position(logits_fn(s), s, temp)
            lps.append(lp)
            ents.append(ent)
        lp, ent = torch.cat(lps), torch.cat(ents)
        out["lp" + tag] = (lp - ref["logprobs" + tag].double()).abs().mean().item()
        out["ent" + tag] = (ent - ref["entropy" + tag].double()).abs().mean().item()
    return out


def hf_bf16(name):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(ROOT, name), dtype=torch.bfloat16, attn_implementation="eager")
    model.eval()

    def run(s):
        with torch.no_grad():
            return model(input_ids=torch.tensor([s])).logits[0].float()

    return run


def fmt(e):
    return f"lp {e['lp']:.4f} lp_T {e['lp_t']:.4f} ent {e['ent']:.4f} ent_T {e['ent_t']:.4f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mma", action="store_true", help="P rounded to bf16 before P V (tensor-core kernel)")
    ap.add_argument("--trials", type=int, default=0, help="random batches for the expected error")
    args = ap.parse_args()
    for name in FIXTURES:
        d = os.path.join(ROOT, name)
        cfg = json.load(open(os.path.join(d, "config.json")))
        w = load_file(os.path.join(d, "model.safetensors"))
        if cfg.get("tie_word_embeddings") and "lm_head.weight" in w:
            del w["lm_head.weight"]
        ref = load_file(os.path.join(d, "outputs.safetensors"))
        batch = json.load(open(os.path.join(d, "batch.json")))
        seqs, temp = batch["sequences"], batch["temperature"]
        print(f"== {name} (mean abs error vs the f64 reference)")
        print(f"  {'transformers bf16':28s} {fmt(errors(hf_bf16(name), seqs, temp, ref))}")
        print(f"  {'ours (emulated)':28s} {fmt(errors(Emu(cfg, w, ['logits'], mma=args.mma).forward, seqs, temp, ref))}")
        print(f"  {'ours with bf16 logits':28s} {fmt(errors(Emu(cfg, w, mma=args.mma).forward, seqs, temp, ref))}")
        print(f"  {'weights bf16, all else f32':28s} {fmt(errors(Emu(cfg, w, POINTS, mma=False).forward, seqs, temp, ref))}")
        for p in POINTS:
            e = errors(Emu(cfg, w, [p], mma=args.mma).forward, seqs, temp, ref)
            print(f"  {'without ' + p:28s} {fmt(e)}")
        for keep in [["logits"], ["resid", "logits"], ["resid", "final_norm", "logits"]]:
            e = errors(Emu(cfg, w, keep, mma=args.mma).forward, seqs, temp, ref)
            print(f"  {'f32 ' + '+'.join(keep):28s} {fmt(e)}")
        only = [p for p in POINTS if p != "logits"]
        e = errors(Emu(cfg, w, only, mma=False).forward, seqs, temp, ref)
        print(f"  {'only logits rounded':28s} {fmt(e)}")
        if args.trials:
            expected(name, cfg, w, args.trials)


def expected(name, cfg, w, trials):
    """Average error over random batches (lengths 7, 12, 5 as the fixture), against the same forward
    with f32 weights and no rounding (f32 compute: its own error is ~1e-6)."""
    exact = Emu(cfg, w, POINTS)
    exact.w = {k: v.float() for k, v in w.items()}
    variants = {
        "transformers bf16": hf_bf16(name),
        "ours (CUDA-core attention)": Emu(cfg, w, ["logits"]).forward,
        "ours (tensor-core attention)": Emu(cfg, w, ["logits"], mma=True).forward,
        "ours, bf16 logits (before)": Emu(cfg, w, mma=True).forward,
        "f32 logits": Emu(cfg, w, ["logits"]).forward,
        "f32 resid+logits": Emu(cfg, w, ["resid", "logits"]).forward,
        "f32 resid+final_norm+logits": Emu(cfg, w, ["resid", "final_norm", "logits"]).forward,
        "weights bf16, all else f32": Emu(cfg, w, POINTS).forward,
    }
    gen = torch.Generator().manual_seed(0)
    acc = {k: {"lp": 0.0, "lp_t": 0.0, "ent": 0.0, "ent_t": 0.0} for k in variants}
    for _ in range(trials):
        seqs = [torch.randint(0, cfg["vocab_size"], (n,), generator=gen).tolist() for n in (7, 12, 5)]
        ref = {}
        for tag, temp in [("", 1.0), ("_t", 0.7)]:
            pp = [per_position(exact.forward(s), s, temp) for s in seqs]
            ref["logprobs" + tag] = torch.cat([p[0] for p in pp])
            ref["entropy" + tag] = torch.cat([p[1] for p in pp])
        for k, f in variants.items():
            for m, v in errors(f, seqs, 0.7, ref).items():
                acc[k][m] += v / trials
    print(f"  expected over {trials} random batches:")
    for k, e in acc.items():
        print(f"    {k:30s} {fmt(e)}")


if __name__ == "__main__":
    main()
