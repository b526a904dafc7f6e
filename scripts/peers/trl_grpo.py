"""Peer for the full-iteration benchmark: TRL GRPOTrainer, SmolLM2-135M shapes.

32 prompts × 8 samples = 256 completions per step, prompts of ~64 tokens, exactly 256 new tokens
(min_new_tokens), bf16, KL to a reference model (beta 0.04), one optimiser step per iteration.
Weights are random (shapes are what matter for speed); the tokenizer comes from --model-dir
(an HF folder, e.g. SmolLM2 imported by `realign import-gguf`). Prints one JSON line with the
median seconds per step after the first (warm-up) steps.

With --prompts-file (e.g. data/word_problems/train.jsonl, what configs/bench-grpo.toml reads) the
prompts are those rows' `prompt` as one user turn through the tokenizer's chat template, and the
reward is the numeric match of the number after "####" with the row's `answer`: the workload of
`realign train configs/bench-grpo.toml`. Without it, prompts are numbered arithmetic lines cut to
--prompt-len tokens and the reward is the share of digits.
Usage: python3 scripts/peers/trl_grpo.py --model-dir models/smollm2-135m-instruct [--steps 4]
           [--prompts-file data/word_problems/train.jsonl]
"""
import argparse
import json
import re
import time

import torch
from datasets import Dataset
from transformers import AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from common import SMOLLM2_135M, TINY, report, save_random_model


class StepTimer(TrainerCallback):
    def __init__(self):
        self.marks = []

    def on_step_begin(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.marks.append(("begin", time.perf_counter()))

    def on_step_end(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.marks.append(("end", time.perf_counter()))
        # One line per step as it ends, so a run stopped by a time limit still leaves its figures.
        secs = self.step_seconds()
        print(json.dumps({"trl_step": len(secs), "seconds": secs[-1]}), flush=True)

    def step_seconds(self):
        begins = [t for k, t in self.marks if k == "begin"]
        ends = [t for k, t in self.marks if k == "end"]
        return [e - b for b, e in zip(begins, ends)]


def digit_reward(completions, **kw):
    # Cheap rule reward: share of digits in the completion (the reward's cost is not the point).
    out = []
    for c in completions:
        text = completion_text(c)
        out.append(sum(ch.isdigit() for ch in text) / max(1, len(text)))
    return out


def completion_text(c):
    return c if isinstance(c, str) else c[-1]["content"]


def numeric_reward(completions, answer, **kw):
    # 1 when the number after the last "####" (else the last number) equals the reference.
    out = []
    for c, ref in zip(completions, answer):
        text = completion_text(c)
        tail = text[text.rfind("####") + 4:] if "####" in text else text
        nums = re.findall(r"-?\d+(?:\.\d+)?", tail.replace(",", ""))
        pick = nums[0] if "####" in text and nums else (nums[-1] if nums else None)
        out.append(float(pick is not None and float(pick) == float(ref)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--micro", type=int, default=64, help="completions per forward/backward")
    ap.add_argument("--prompts-file", help="JSONL rows {prompt, answer}, rendered as chat")
    ap.add_argument("--model-out", default="/tmp/trl_grpo_bench_model",
                    help="where the random model and tokenizer are saved (our bench loads it too)")
    ap.add_argument("--out")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes for a CPU smoke run")
    a = ap.parse_args()
    shapes = dict(SMOLLM2_135M)
    if a.tiny:
        shapes.update(TINY)
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    # TRL builds the reference model with from_pretrained, so the random model goes to a folder.
    model_path = a.model_out
    save_random_model(shapes, tok, model_path)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    rows = []
    if a.prompts_file:
        with open(a.prompts_file) as f:
            for line in f:
                r = json.loads(line)
                rows.append({"prompt": [{"role": "user", "content": r["prompt"]}],
                             "answer": r["answer"]})
        rows = rows[: a.prompts * (a.steps + 1)]
        reward = numeric_reward
        lens = [len(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                            return_dict=True)["input_ids"]) for r in rows]
        prompt_len = sum(lens) / len(lens)
    else:
        # Prompts of ~prompt_len tokens: numbered arithmetic lines.
        for i in range(a.prompts * (a.steps + 1)):
            text = " ".join(f"{i + j}+{j}=" for j in range(a.prompt_len // 4))
            ids = tok(text)["input_ids"][: a.prompt_len]
            rows.append({"prompt": tok.decode(ids)})
        reward = digit_reward
        prompt_len = a.prompt_len
    batch = a.prompts * a.samples
    accum = max(1, batch // a.micro)
    args = GRPOConfig(
        output_dir="/tmp/trl_grpo_bench", per_device_train_batch_size=batch // accum,
        gradient_accumulation_steps=accum, num_generations=a.samples, max_completion_length=a.new,
        generation_kwargs={"min_new_tokens": a.new}, beta=0.04, learning_rate=1e-6,
        max_steps=a.steps, logging_steps=1, report_to="none", save_strategy="no",
        bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(), seed=0,
        dataloader_num_workers=0, model_init_kwargs={"dtype": dtype},
    )
    timer = StepTimer()
    trainer = GRPOTrainer(model=model_path, reward_funcs=reward, args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=tok,
                          callbacks=[timer])
    trainer.train()
    secs = timer.step_seconds()
    steady = sorted(secs[1:]) or secs
    report("trl_grpo", dict(prompts=a.prompts, samples=a.samples, prompt_len=prompt_len,
                            new_tokens=a.new, steps=len(secs), step_seconds=secs,
                            median_step_s=steady[len(steady) // 2]), a.out)


if __name__ == "__main__":
    main()
