"""Reference for actor/tests/generate_smollm2.rs: transformers' greedy `generate` on the real
SmolLM2-135M-Instruct (the PyPI GGUF, dequantised by transformers' own GGUF loader, f32) for a chat
prompt rendered with its chat template.

  /work/pyenv/bin/python scripts/make_smollm2_generate_fixture.py PATH/SmolLM2-135M-Instruct.Q4_1.gguf

Writes actor/tests/fixtures/smollm2_chat_greedy.json: the prompt ids, the greedy response ids and the
smallest top-2 logit gap over the generated steps. Needs torch + transformers + gguf (not in CI).
"""
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
MAX_NEW = 32


def main():
    gguf = os.path.abspath(sys.argv[1])
    d, f = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    model.eval()
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    input_ids = ids["input_ids"]
    with torch.no_grad():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=MAX_NEW,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=tok.eos_token_id,
        )
    new = out.sequences[0, input_ids.shape[1]:].tolist()
    gaps = [float(torch.topk(s[0], 2).values[0] - torch.topk(s[0], 2).values[1]) for s in out.scores]
    print(repr(tok.decode(new)), "min gap", min(gaps))
    path = os.path.join(os.path.dirname(__file__), "..", "actor", "tests", "fixtures", "smollm2_chat_greedy.json")
    with open(path, "w") as fh:
        json.dump(
            {
                "messages": MESSAGES,
                "prompt_ids": input_ids[0].tolist(),
                "greedy": new,
                "text": tok.decode(new, skip_special_tokens=True),
                "min_top2_gap": min(gaps),
                "eos_token_id": tok.eos_token_id,
                "max_new_tokens": MAX_NEW,
                "transformers": transformers.__version__,
            },
            fh,
            indent=1,
        )


if __name__ == "__main__":
    main()
