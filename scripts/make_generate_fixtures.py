"""Reference fixtures for actor's generation tests: tiny random-init Llama (GQA) and Qwen2 (qkv bias,
tied embeddings) saved with save_pretrained, plus transformers' greedy `generate` output for a few
prompts of different lengths (each prompt generated alone, so no padding is involved).

Run: /work/pyenv/bin/python scripts/make_generate_fixtures.py
Writes actor/tests/fixtures/generate/<name>/{config.json, generation_config.json, model.safetensors,
greedy.json}. greedy.json also records, per prompt, the smallest gap between the top two logits
over the generated steps, so that a test failure can be told apart from a near tie.
"""

import json
import os

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "..", "actor", "tests", "fixtures", "generate")
MAX_NEW = 24


def common():
    return dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=2,
    )


def models():
    yield "llama_gqa", LlamaForCausalLM(LlamaConfig(**common(), tie_word_embeddings=False, head_dim=16))
    yield "qwen2_tied", Qwen2ForCausalLM(Qwen2Config(**common(), tie_word_embeddings=True, use_sliding_window=False))


def prompts():
    g = torch.Generator().manual_seed(7)
    lens = [1, 5, 17, 40, 9]
    # Ids 3.. so that no prompt contains BOS/EOS by accident.
    return [torch.randint(3, 256, (n,), generator=g).tolist() for n in lens]


def main():
    torch.manual_seed(0)
    for name, model in models():
        model.eval()
        model.generation_config.pad_token_id = 0
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True)
        cases = []
        for p in prompts():
            ids = torch.tensor([p])
            with torch.no_grad():
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=MAX_NEW,
                    output_scores=True,
                    return_dict_in_generate=True,
                )
            new = out.sequences[0, len(p):].tolist()
            margin = min(
                float(torch.topk(s[0].float(), 2).values[0] - torch.topk(s[0].float(), 2).values[1])
                for s in out.scores
            )
            # Log-softmax (temperature 1) of each chosen token: what greedy reports as its log-prob.
            logprobs = [float(torch.log_softmax(s[0].float(), -1)[t]) for s, t in zip(out.scores, new)]
            cases.append({"prompt": p, "greedy": new, "logprobs": logprobs, "min_top2_gap": margin})
            print(name, len(p), "->", len(new), "tokens, min top-2 gap", round(margin, 5))
        with open(os.path.join(d, "greedy.json"), "w") as f:
            json.dump(
                {
                    "max_new_tokens": MAX_NEW,
                    "eos_token_id": 2,
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "cases": cases,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
