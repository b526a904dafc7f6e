#!/usr/bin/env python3
"""Checks `realign import-gguf` against transformers' own GGUF loading.

  check_import_against_transformers.py GGUF OURS_DIR [--write-fixture] [--tokenizer-only]

- weights: every tensor of OURS_DIR/model.safetensors against the state dict transformers builds
  from the GGUF (`from_pretrained(dir, gguf_file=...)`), max |diff| per tensor;
- logits: transformers run on OURS_DIR vs on the GGUF, on a few sentences;
- tokenizer: OURS_DIR's tokenizer (loaded by transformers from our tokenizer.json) vs the GGUF
  tokenizer transformers builds, on varied text (digits, unicode, whitespace runs, special tokens),
  and the chat template rendered by both.
With --write-fixture, the expected ids and chat renders are written to
model/tests/fixtures/io/smollm2_tokens.json for model/tests/io_smollm2.rs.
Needs torch + transformers + gguf (not in CI).
"""
import json
import os
import sys

import regex
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXTS = [
    "Hello, world!",
    "The year 2024 had 366 days; 3.14159 is pi and 1,000,000 is a million.",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\n\nand   runs    of     spaces",
    "Ünïcödé: café, naïve, 日本語のテキスト, emoji 🙂👍🏽, Ελληνικά, русский",
    "superscripts x² and x³, fractions ½, Roman Ⅻ, Arabic-Indic ٣٤٥",
    "<|im_start|>user\nWhat is 12+7?<|im_end|>\n<|im_start|>assistant\n",
    "def f(x):\n    return x ** 2  # square\n",
    "",
    "a",
    "   ",
    "email@example.com https://example.org/path?q=1&r=2",
    "I'm can't won't they'll we've",
]
CHATS = [
    ([{"role": "user", "content": "What is the capital of France?"}], True),
    ([{"role": "system", "content": "You are terse."},
      {"role": "user", "content": "Count: 1 2 3"},
      {"role": "assistant", "content": "4 5 6"},
      {"role": "user", "content": "Thanks!"}], False),
    ([{"role": "user", "content": "Ünïcödé   spaces\n\nand lines"}], True),
]


def llamacpp_smollm_ids(tok, text):
    """Token ids by llama.cpp's `smollm` pre-tokenizer: special tokens first, then a first regex pass
    that isolates every Unicode number (\\p{N}) and the GPT-2 pass on each remaining fragment; BPE
    per fragment by `tok` (whose byte-level regex leaves a single fragment's split unchanged)."""
    specials = sorted(tok.all_special_tokens, key=len, reverse=True)
    parts = regex.split("(" + "|".join(regex.escape(s) for s in specials) + ")", text)
    ids = []
    for part in parts:
        if not part:
            continue
        if part in specials:
            ids.append(tok.convert_tokens_to_ids(part))
            continue
        for frag in regex.split(r"(\p{N})", part):
            if frag:
                ids += tok(frag, add_special_tokens=False).input_ids
    return ids


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    gguf_path, ours = sys.argv[1], sys.argv[2]
    write_fixture = "--write-fixture" in sys.argv
    gdir, gfile = os.path.dirname(os.path.abspath(gguf_path)), os.path.basename(gguf_path)

    tok_ref = AutoTokenizer.from_pretrained(gdir, gguf_file=gfile)
    tok_ours = AutoTokenizer.from_pretrained(ours)
    if "--tokenizer-only" in sys.argv:
        sys.exit(0 if check_tokenizer(tok_ours, tok_ref, write_fixture) else 1)

    # Weights.
    ref = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gfile, dtype=torch.float32)
    ref_state = ref.state_dict()
    ours_state = load_file(os.path.join(ours, "model.safetensors"))
    worst, rows = 0.0, []
    for name, t in sorted(ours_state.items()):
        r = ref_state[name].float()
        d = float((t.float() - r).abs().max())
        rows.append((d, name, float(r.abs().max())))
        worst = max(worst, d)
    missing = sorted(set(ref_state) - set(ours_state) - {"lm_head.weight"})
    print(f"weights: {len(ours_state)} tensors compared, max |diff| over all = {worst:.3e}; "
          f"tensors transformers has and we lack: {missing}")
    for d, name, scale in sorted(rows, reverse=True)[:5]:
        print(f"  {name}: max |diff| {d:.3e} (max |w| {scale:.3f})")

    # Logits of the same model loaded two ways.
    mine = AutoModelForCausalLM.from_pretrained(ours, dtype=torch.float32)
    worst_logit = 0.0
    for text in TEXTS[:3] + TEXTS[6:8]:
        ids = torch.tensor([tok_ref(text).input_ids])
        with torch.no_grad():
            a, b = mine(ids).logits, ref(ids).logits
        worst_logit = max(worst_logit, float((a - b).abs().max()))
    print(f"logits: transformers on our folder vs on the GGUF, max |diff| = {worst_logit:.3e}")

    ok = check_tokenizer(tok_ours, tok_ref, write_fixture)
    sys.exit(0 if ok and worst == 0.0 else 1)


def check_tokenizer(tok_ours, tok_ref, write_fixture):
    # transformers builds the GGUF tokenizer with a plain byte-level pre-tokenizer, without the
    # digit/number isolation llama.cpp's `smollm` pre-tokenizer (and the original SmolLM2
    # tokenizer) does first. So the reference ids are transformers' BPE applied to the fragments of
    # that first pass; where plain transformers differs, we say so.
    agree, agree_plain = 0, 0
    cases = []
    for text in TEXTS:
        a = tok_ours(text).input_ids
        plain = tok_ref(text).input_ids
        b = llamacpp_smollm_ids(tok_ref, text)
        agree += a == b
        agree_plain += a == plain
        if a != b:
            print(f"  MISMATCH on {text!r}:\n    ours {a}\n    ref  {b}")
        if plain != b:
            print(f"  transformers' own GGUF tokenizer splits {text!r} differently (no number "
                  f"isolation):\n    plain {plain}\n    rule  {b}")
        cases.append({"text": text, "ids": b, "transformers_gguf_ids": plain})
        assert tok_ours.decode(a) == text
    chats = []
    chat_agree = 0
    for messages, gen in CHATS:
        a = tok_ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        b = tok_ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        chat_agree += a == b
        ids = tok_ref(b, add_special_tokens=False).input_ids
        chats.append({"messages": messages, "add_generation_prompt": gen, "text": b, "ids": ids})
    print(f"tokenizer: {agree}/{len(TEXTS)} texts give ids identical to llama.cpp's smollm rule "
          f"(and {agree_plain}/{len(TEXTS)} identical to transformers' plain GGUF tokenizer); chat template: "
          f"{chat_agree}/{len(CHATS)} renders identical; special tokens ours "
          f"{tok_ours.special_tokens_map} ref {tok_ref.special_tokens_map}")
    if write_fixture:
        out = os.path.join(os.path.dirname(__file__), "..", "model", "tests", "fixtures", "io",
                           "smollm2_tokens.json")
        with open(out, "w") as f:
            json.dump({"source": "SmolLM2-135M-Instruct.Q4_1.gguf via transformers' GGUF tokenizer, "
                   "numbers isolated first as llama.cpp's smollm pre-tokenizer does "
                   "(scripts/check_import_against_transformers.py)",
                       "texts": cases, "chats": chats}, f, indent=1, ensure_ascii=False)
        print("wrote", out)
    return agree == len(TEXTS) and chat_agree == len(CHATS)


if __name__ == "__main__":
    main()
