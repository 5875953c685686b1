#!/usr/bin/env python3
"""Contextual-bandit baseline for benches/rl_vs_bandit.rs: Vowpal Wabbit's
--cb_explore_adf on the same logged decisions Whetstone's learner trains on.

Usage: vw_cb_baseline.py TRAIN HELDOUT [--passes N] [--vw-args ARGS]

TRAIN is VW cb_adf text: one multiline example per logged decision (a
`shared |s ... |p ...` line with the task words and the previous tool,
outcome and step, one `|a NAME` line per action, the chosen one labelled
`0:cost:probability`), examples separated by a blank line. HELDOUT is JSON
lines {"shared": str, "actions": [str]}.

Learns online over TRAIN (`--passes` times, in file order), then prints one
JSON object with VW's pmf over the actions for every held-out state
(`pmfs`, in HELDOUT order; the bench scores them against the known
optimum) and the training time. Exits with status 3 and a message when the
vowpalwabbit package is missing.
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

DEFAULT_ARGS = "--cb_explore_adf --epsilon 0.05 -q sa -q pa --cubic spa --ngram s2 --quiet"


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

    pmfs = []
    for state in heldout:
        pmfs.append(vw.predict([state["shared"]] + state["actions"]))
    vw.finish()

    print(
        json.dumps(
            {
                "vowpalwabbit_version": vowpalwabbit.__version__,
                "vw_args": args.vw_args,
                "passes": args.passes,
                "train_examples": len(examples),
                "train_secs": train_secs,
                "pmfs": pmfs,
            }
        )
    )


if __name__ == "__main__":
    main()
