"""Faithfulness suite speed: the full suite on N held-out problems per organism, and batching vs a per-prompt loop.

For each shipped organism, ``run_suite`` with every test on N problems (default 1000): total seconds, prompts per
second, and the verdict. The named baseline, measured in the same run, is the suite's first step (the model's
own CoT for every prompt) done one prompt at a time, as a per-example loop would, against the batched call
the suite makes; it is timed on ``--baseline-n`` prompts to keep the run short.

    python bench/faithfulness.py              # N = 1000 (about a minute per organism on 2 CPU cores)
    python bench/faithfulness.py --n 200      # quicker

Prints one JSON object; the goal is under 60 s per organism for N = 1000.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from probes.faithfulness.adapter import AdditionAdapter
from probes.faithfulness.suite import GROUND_TRUTH, run_suite
from workbench.generation import complete
from workbench.models.loader import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--baseline-n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {"n": args.n, "threads": args.threads, "organisms": {}}
    for name in GROUND_TRUTH:
        model = load_model(name)
        t = time.perf_counter()
        summary, _ = run_suite(model, n=args.n)
        total = time.perf_counter() - t
        prompts = [AdditionAdapter().prompt(p) for p in AdditionAdapter().problems(args.baseline_n, 1)]
        t = time.perf_counter()
        complete(model, prompts, max_new_tokens=64)
        batched = time.perf_counter() - t
        t = time.perf_counter()
        for p in prompts:
            complete(model, [p], max_new_tokens=64)
        looped = time.perf_counter() - t
        out["organisms"][name] = {
            "seconds": round(total, 1), "prompts_per_second": round(args.n / total, 1),
            "verdict": summary["verdict"]["verdict"], "ground_truth": GROUND_TRUTH[name],
            "step_seconds": summary["timings_seconds"],
            "cot_generation_batched_vs_per_prompt_loop": round(looped / batched, 1),
            "goal_under_60s": total < 60,
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
