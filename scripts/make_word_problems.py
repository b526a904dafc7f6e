"""Arithmetic word problems with reference answers, for the SmolLM2 RL configs.

Writes data/word_problems/train.jsonl and data/word_problems/heldout.jsonl: one JSON object a line,
{"prompt": "...", "answer": "17"}. The prompt is the user turn; the configs render it through the
model's chat template (`data.chat_template = true`) and score the response with the
`numeric_match` rule, which reads the number after "####" (else after "answer is", else the last
number in the text). The instruction at the end of each prompt asks for that format.

Problems are one step (4 in 5) or two steps of +, -, x or exact division over small whole numbers
(answers 1..25), from a handful of sentence templates with varied names and objects. They are this
easy on purpose: SmolLM2-135M-Instruct, greedy, answered 5 of the first 24 held-out problems
(CPU f32, 64 new tokens, 2026-11-29) — it does small sums but often picks the wrong operation or
rambles past its answer — so RL has both signal and room. Deterministic: the same seed writes the same files. The held-out
set uses its own seed and never repeats a training problem's text.

Usage: python3 scripts/make_word_problems.py [--train 2000] [--heldout 200] [--seed 2026]
"""
import argparse
import json
import os
import random

NAMES = ["Tom", "Anna", "Maria", "Ben", "Lucy", "Sam", "Nina", "Omar", "Lena", "Jack", "Mia", "Raj"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "coins", "cards", "stamps",
         "shells", "balloons", "candies"]
CONTAINERS = ["boxes", "bags", "baskets", "jars", "packs", "shelves"]
INSTRUCTION = "Show the calculation, then write the final answer after ####."


def one_step(rng):
    """One operation; returns (text, answer)."""
    name, friend = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randint(1, 12), rng.randint(1, 9)
        return (f"{name} has {a} {item}. {friend} gives {name} {b} more {item}. "
                f"How many {item} does {name} have now?", a + b)
    if kind == 1:
        a = rng.randint(3, 15)
        b = rng.randint(1, a - 1)
        return (f"{name} had {a} {item} and gave {b} of them to {friend}. "
                f"How many {item} does {name} have left?", a - b)
    if kind == 2:
        a, b = rng.randint(2, 5), rng.randint(2, 5)
        box = rng.choice(CONTAINERS)
        return (f"There are {a} {box} with {b} {item} in each. "
                f"How many {item} are there in total?", a * b)
    a, b = rng.randint(2, 5), rng.randint(2, 4)
    return (f"{name} shares {a * b} {item} equally among {b} friends. "
            f"How many {item} does each friend get?", a)


def two_step(rng):
    """Two operations in one story; returns (text, answer)."""
    name, friend = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randint(2, 10), rng.randint(1, 6)
        c = rng.randint(1, a + b - 1)
        return (f"{name} has {a} {item}, buys {b} more, and then gives {c} to {friend}. "
                f"How many {item} does {name} have now?", a + b - c)
    if kind == 1:
        a, b = rng.randint(2, 4), rng.randint(2, 4)
        c = rng.randint(1, 6)
        box = rng.choice(CONTAINERS)
        return (f"{name} buys {a} {box} of {item} with {b} {item} in each, and already had {c} {item}. "
                f"How many {item} does {name} have now?", a * b + c)
    a, b = rng.randint(1, 10), rng.randint(1, 10)
    if (a + b) % 2:
        b += 1  # an even total splits into two equal piles
    return (f"{name} has {a} {item} and {friend} has {b} {item}. "
            f"They put them together and split them into two equal piles. "
            f"How many {item} are in each pile?", (a + b) // 2)


def problems(seed, n, exclude=frozenset()):
    rng = random.Random(seed)
    out, seen = [], set(exclude)
    while len(out) < n:
        text, answer = (two_step if rng.random() < 0.2 else one_step)(rng)
        if text in seen:
            continue
        seen.add(text)
        out.append({"prompt": f"{text} {INSTRUCTION}", "answer": str(answer)})
    return out, seen


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "data", "word_problems"))
    a = ap.parse_args()
    train, train_texts = problems(a.seed, a.train)
    heldout, _ = problems(a.seed + 1, a.heldout, exclude=frozenset(train_texts))
    os.makedirs(a.out, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("heldout.jsonl", heldout)):
        with open(os.path.join(a.out, name), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(f"wrote {len(rows)} problems to {os.path.join(a.out, name)}")


if __name__ == "__main__":
    main()
