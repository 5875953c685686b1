#!/usr/bin/env python3
"""Contextual-bandit baseline for benches/rl_vs_bandit.rs: Vowpal Wabbit's
--cb_explore_adf on the same logged data the PPO policy trains on.

Usage: vw_cb_baseline.py TRAIN HELDOUT [--passes N] [--vw-args ARGS]

TRAIN is VW cb_adf text: one multiline example per logged decision (a
`shared |s ...` line with the task-text words, one `|a NAME` line per action,
the chosen one labelled `0:cost:probability`), examples separated by a blank
line. HELDOUT is JSON lines {"input_words": str, "actions": [str], "best": int}.

Learns online over TRAIN (`--passes` times, in file order), then scores every
held-out state and prints one JSON object: greedy accuracy (argmax of VW's
pmf is the best action; with reward 1 for the best action and 0 otherwise
this is also the greedy policy's true value) and the stochastic policy's true
value (mean pmf mass on the best action). Exits with status 3 and a message
when the vowpalwabbit package is missing.
"""

import argparse
import json
import sys
import time

try:
    import vowpalwabbit
except ImportError:
    print("VW baseline skipped: pip install vowpalwabbit", file=sys.stderr)
    sys.exit(3)

DEFAULT_ARGS = "--cb_explore_adf --epsilon 0.05 -q sa --ngram s2 --quiet"


def read_examples(path):
    """Multiline examples of a cb_adf text file, as lists of lines."""
    examples, current = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                current.append(line)
            elif current:
                examples.append(current)
                current = []
    if current:
        examples.append(current)
    return examples


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("train")
    parser.add_argument("heldout")
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--vw-args", default=DEFAULT_ARGS)
    args = parser.parse_args()

    examples = read_examples(args.train)
    with open(args.heldout, encoding="utf-8") as f:
        heldout = [json.loads(line) for line in f if line.strip()]

    start = time.perf_counter()
    vw = vowpalwabbit.Workspace(args.vw_args)
    for _ in range(args.passes):
        for example in examples:
            vw.learn(example)
    train_secs = time.perf_counter() - start

    correct, value = 0, 0.0
    for state in heldout:
        lines = ["shared |s " + state["input_words"]]
        lines += ["|a " + a for a in state["actions"]]
        pmf = vw.predict(lines)
        greedy = max(range(len(pmf)), key=lambda i: pmf[i])
        correct += greedy == state["best"]
        value += pmf[state["best"]]
    vw.finish()

    n = len(heldout)
    print(
        json.dumps(
            {
                "vowpalwabbit_version": vowpalwabbit.__version__,
                "vw_args": args.vw_args,
                "passes": args.passes,
                "train_examples": len(examples),
                "train_secs": train_secs,
                "held_out_states": n,
                "greedy_accuracy": correct / n,
                "stochastic_value": value / n,
            }
        )
    )


if __name__ == "__main__":
    main()
