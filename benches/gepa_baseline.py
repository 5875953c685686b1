"""GEPA on the Whetstone APO benchmark world, under a hard cap on LLM calls.

The Rust bench `benches/apo_vs_gepa.rs` starts the world's OpenAI-compatible
server and runs this script once per (budget, seed) against it; run it
through `benches/apo_vs_gepa.sh`, which installs the pinned `gepa` package
in a virtual environment outside the repository.

GEPA (`gepa.optimize`, package defaults unless said here; --merge adds
the merge proposer) drives the same
three models Whetstone does, through litellm (`gepa.lm.LM`) pointed at the
server:
- the task model replays each example with the candidate as its system
  prompt and the messages Whetstone's replay sends;
- the judge grades the answer with Whetstone's rubric (prompts/apo_judge.txt);
  its `SCORE: n` is the metric and its reasoning the feedback GEPA reflects
  on, shown with the reference answer;
- the rewriter is GEPA's reflection model.

Every call of every role goes through one ledger. Once `--budget` calls are
spent, a further call raises `BudgetExhausted`: GEPA drops the iteration it
was in (`raise_on_exception=False`) and its stopper ends the run, so GEPA
never spends more than the budget and never scores a half-evaluated
candidate. The validation set is a fixed stratified subset (--split
stratified: six examples covering every hidden instruction) or, with
--split all, every example.

Output (--out): JSON with the best candidate's prompt, its validation score,
calls by role and the number of candidates.
"""

import argparse
import json
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

# litellm fetches its model price list from the internet on import unless
# told to use the copy it ships; the bench talks to the loopback only.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import gepa  # noqa: E402
import litellm  # noqa: E402
from gepa.core.adapter import EvaluationBatch  # noqa: E402
from gepa.lm import LM  # noqa: E402

# Example ids (trace order) of the stratified validation set: together they
# need every hidden instruction and the baseline's secrecy rule.
STRATIFIED_VALIDATION = [1, 4, 5, 6, 12, 14]


class BudgetExhausted(Exception):
    """The call budget is spent."""


class Ledger:
    """Counts calls by role and refuses calls past the budget."""

    def __init__(self, budget):
        self.budget = budget
        self.by_role = {"task": 0, "judge": 0, "rewriter": 0}
        self.lock = threading.Lock()

    def used(self):
        with self.lock:
            return sum(self.by_role.values())

    def take(self, role):
        with self.lock:
            if sum(self.by_role.values()) >= self.budget:
                raise BudgetExhausted(f"{self.budget} LLM calls spent")
            self.by_role[role] += 1


class Model:
    """One role's model on the world server, through the ledger."""

    def __init__(self, base_url, name, role, ledger):
        self.lm = LM(
            f"openai/{name}",
            temperature=0.0,
            num_retries=0,
            api_base=base_url,
            api_key="world-has-no-key",
        )
        self.role = role
        self.ledger = ledger

    def __call__(self, prompt):
        self.ledger.take(self.role)
        return self.lm(prompt)


class FileLogger:
    """GEPA's log, kept out of the bench's output."""

    def __init__(self, path):
        self.file = open(path, "w")

    def log(self, message):
        print(message, file=self.file, flush=True)


def parse_score(verdict):
    """`SCORE: n` (0-10, the last one wins) as [0, 1], or None."""
    found = re.findall(r"score\W*(\d+(?:\.\d+)?)", verdict.lower())
    if not found:
        return None
    value = float(found[-1])
    return value / 10.0 if 0.0 <= value <= 10.0 else None


class WorldAdapter:
    """Replays examples with a candidate prompt and has the judge grade them."""

    propose_new_texts = None

    def __init__(self, task, judge, rubric, workers):
        self.task = task
        self.judge = judge
        self.rubric = rubric
        self.pool = ThreadPoolExecutor(max_workers=workers)

    def run_one(self, prompt, example):
        answer = self.task([{"role": "system", "content": prompt}] + example["messages"])
        verdict = self.judge(
            self.rubric.replace("{{input}}", example["input"])
            .replace("{{reference}}", example["reference"])
            .replace("{{response}}", answer)
        )
        score = parse_score(verdict)
        feedback = verdict.split("SCORE")[0].strip()
        return answer, (0.0 if score is None else score), feedback

    def evaluate(self, batch, candidate, capture_traces=False):
        prompt = candidate["system_prompt"]
        results = list(self.pool.map(lambda example: self.run_one(prompt, example), batch))
        trajectories = [
            {
                "input": example["input"],
                "answer": answer,
                "score": score,
                "feedback": feedback,
                "reference": example["reference"],
            }
            for example, (answer, score, feedback) in zip(batch, results)
        ]
        return EvaluationBatch(
            outputs=[{"answer": answer} for answer, _, _ in results],
            scores=[score for _, score, _ in results],
            trajectories=trajectories if capture_traces else None,
        )

    def make_reflective_dataset(self, candidate, eval_batch, components_to_update):
        records = [
            {
                "Inputs": t["input"],
                "Generated Outputs": t["answer"],
                "Feedback": f"Score {t['score']:.1f} of 1. {t['feedback']} "
                f"Reference answer: {t['reference']}",
            }
            for t in eval_batch.trajectories
        ]
        return {component: records for component in components_to_update}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--data", required=True, help="examples JSON the Rust bench wrote")
    parser.add_argument("--rubric", required=True)
    parser.add_argument("--budget", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--split", choices=["stratified", "all"], default="stratified")
    parser.add_argument("--merge", action="store_true", help="also use GEPA's merge proposer")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    # litellm prints a banner on stderr whenever it cannot price a model.
    litellm.suppress_debug_info = True

    with open(args.data) as f:
        data = json.load(f)
    with open(args.rubric) as f:
        rubric = f.read()
    examples = data["examples"]
    if args.split == "all":
        trainset, valset = examples, examples
    else:
        valset = [examples[i] for i in STRATIFIED_VALIDATION]
        trainset = [e for i, e in enumerate(examples) if i not in STRATIFIED_VALIDATION]

    ledger = Ledger(args.budget)
    adapter = WorldAdapter(
        Model(args.base_url, "task-model", "task", ledger),
        Model(args.base_url, "judge-model", "judge", ledger),
        rubric,
        args.workers,
    )
    result = gepa.optimize(
        seed_candidate={"system_prompt": data["baseline"]},
        trainset=trainset,
        valset=valset,
        adapter=adapter,
        reflection_lm=Model(args.base_url, "rewriter-model", "rewriter", ledger),
        stop_callbacks=[lambda state: ledger.used() >= args.budget],
        raise_on_exception=False,
        seed=args.seed,
        use_merge=args.merge,
        display_progress_bar=False,
        logger=FileLogger(args.out + ".log"),
    )
    best = result.best_candidate["system_prompt"]
    with open(args.out, "w") as f:
        json.dump(
            {
                "best_prompt": best,
                "best_validation_score": result.val_aggregate_scores[result.best_idx],
                "candidates": len(result.candidates),
                "calls": ledger.by_role,
            },
            f,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
