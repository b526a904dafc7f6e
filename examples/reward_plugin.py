#!/usr/bin/env python3
"""A realign reward plugin: correctness of the final number, plus a format sub-score.

realign starts this program once and keeps it running. For every batch it writes ONE line of JSON
to our stdin and waits for ONE line of JSON on our stdout (protocol version 1, docs/rewards.md):

  request:  {"version": 1, "batch_id": 7, "samples": [{"prompt": "...", "prompt_tokens": [...],
             "response": "...", "response_tokens": [...], "finish_reason": "stop",
             "extra": {"answer": "42"}}, ...]}
  response: {"version": 1, "batch_id": 7, "scores": [1.0, ...],
             "sub_scores": {"correct": [1.0, ...], "formatted": [1.0, ...]}}

If a batch cannot be scored, answer {"version": 1, "batch_id": 7, "error": "why"}: the run stops with
that message instead of training on made-up scores. Print logs to stderr (realign forwards them to
its log), never to stdout. Standard library only.

Use it with:
  [reward]
  type = "external"
  command = ["python3", "examples/reward_plugin.py"]
  timeout_s = 30
"""

import json
import re
import sys

PROTOCOL_VERSION = 1

# The last number in a text: optional sign, thousands separators, decimals.
NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")


def final_number(text):
    """The number after the last '####' if there is one, else the last number in the text."""
    if "####" in text:
        text = text.rsplit("####", 1)[1]
        found = NUMBER.search(text)
    else:
        matches = NUMBER.findall(text)
        found = matches[-1] if matches else None
    if found is None:
        return None
    found = found if isinstance(found, str) else found.group(0)
    return float(found.replace(",", ""))


def score_sample(sample):
    """Returns (score, sub_scores) for one sample."""
    reference = sample["extra"].get("answer")
    if reference is None:
        raise ValueError("a sample has no 'answer' field in its dataset row")
    want = final_number(str(reference))
    got = final_number(sample["response"])
    correct = 1.0 if got is not None and want is not None and abs(got - want) < 1e-6 else 0.0
    formatted = 1.0 if re.search(r"####\s*-?\d", sample["response"]) else 0.0
    # Most of the reward for being right, a little for stating the answer the expected way.
    return correct + 0.1 * formatted, {"correct": correct, "formatted": formatted}


def handle(request):
    batch_id = request.get("batch_id")
    if request.get("version") != PROTOCOL_VERSION:
        return {"version": PROTOCOL_VERSION, "batch_id": batch_id,
                "error": f"this plugin speaks protocol version {PROTOCOL_VERSION}, got {request.get('version')}"}
    try:
        results = [score_sample(s) for s in request["samples"]]
    except Exception as e:  # report instead of crashing: the message reaches the user
        return {"version": PROTOCOL_VERSION, "batch_id": batch_id, "error": f"{type(e).__name__}: {e}"}
    names = sorted({name for _, subs in results for name in subs})
    return {
        "version": PROTOCOL_VERSION,
        "batch_id": batch_id,
        "scores": [score for score, _ in results],
        "sub_scores": {name: [subs[name] for _, subs in results] for name in names},
    }


def main():
    print("reward_plugin.py: ready", file=sys.stderr, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        response = handle(json.loads(line))
        sys.stdout.write(json.dumps(response) + "\n")
        sys.stdout.flush()  # realign waits for this line; never leave it in a buffer


if __name__ == "__main__":
    main()
