#!/usr/bin/env python3
"""`realign score` on CPU against transformers on the same imported SmolLM2 folder.

  check_smollm2_score.py MODEL_DIR [--realign PATH] [--device cpu|cuda] [--dtype f32|bf16]

MODEL_DIR is the folder `realign import-gguf` wrote (scripts/fetch_smollm2.sh). A few sentences are
scored twice by realign: as text (our tokenizer) and as token ids (transformers' tokenizer), so a
tokenizer difference and a model difference are reported separately. transformers runs the same
folder in float32 (eager attention) and the log-probs / entropies are compared per token:
mean and max absolute difference. Passes when the mean absolute log-prob difference is <= 1e-3
(issue 2; for --dtype bf16 the bound is 2e-2). Needs torch + transformers (not in CI).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

SENTENCES = [
    "The capital of France is Paris, and the capital of Germany is Berlin.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "In 1969, 3 astronauts flew 384,400 km to the Moon.",
    "<|im_start|>user\nWhat is 12+7?<|im_end|>\n<|im_start|>assistant\n12 + 7 = 19.<|im_end|>\n",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--realign", default=os.environ.get("REALIGN", "target/release/realign"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32")
    args = ap.parse_args()

    tok = AutoTokenizer.from_pretrained(args.model_dir)
    hf_ids = [tok(s, add_special_tokens=True)["input_ids"] for s in SENTENCES]

    with tempfile.TemporaryDirectory() as tmp:
        inp, out = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")
        with open(inp, "w") as f:
            for s in SENTENCES:
                f.write(json.dumps({"text": s}) + "\n")
            for ids in hf_ids:
                f.write(json.dumps({"tokens": ids}) + "\n")
        cmd = [args.realign, "score", "--model", args.model_dir, "--input", inp, "--output", out,
               "--device", args.device, "--dtype", args.dtype]
        subprocess.run(cmd, check=True)
        with open(out) as f:
            lines = [json.loads(l) for l in f]
    text_lines, token_lines = lines[: len(SENTENCES)], lines[len(SENTENCES):]

    tokenizer_mismatches = sum(l["tokens"] != ids for l, ids in zip(text_lines, hf_ids))
    print(f"tokenizer: {len(SENTENCES) - tokenizer_mismatches}/{len(SENTENCES)} sentences tokenized exactly as transformers")

    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    lp_diffs, ent_diffs = [], []
    with torch.no_grad():
        for ids, ours in zip(hf_ids, token_lines):
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()  # [T, V]
            logp = torch.log_softmax(logits, dim=-1)
            ref_lp = logp[:-1].gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
            ref_ent = -(logp.exp() * logp).sum(-1)[:-1]
            lp_diffs += (torch.tensor(ours["logprobs"], dtype=torch.float64) - ref_lp).abs().tolist()
            ent_diffs += (torch.tensor(ours["entropy"], dtype=torch.float64) - ref_ent).abs().tolist()
    n = len(lp_diffs)
    mean_lp, max_lp = sum(lp_diffs) / n, max(lp_diffs)
    mean_ent, max_ent = sum(ent_diffs) / n, max(ent_diffs)
    print(f"{n} tokens over {len(SENTENCES)} sentences, realign {args.device} {args.dtype} vs transformers f32:")
    print(f"  logprob |diff|: mean {mean_lp:.3e}, max {max_lp:.3e}")
    print(f"  entropy |diff|: mean {mean_ent:.3e}, max {max_ent:.3e}")
    bound = 1e-3 if args.dtype == "f32" else 2e-2
    ok = mean_lp <= bound and tokenizer_mismatches == 0
    print("PASS" if ok else f"FAIL (bound {bound:g} on the mean log-prob difference, and exact tokenization)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
