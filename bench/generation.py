"""Batched generation: the workbench's loop (``workbench.generation.complete``) against TransformerLens's
``generate`` on the same batches, in the same run.

Both arms get the same token batches (``complete``'s own grouping, 512 prompts a batch) and return the same tokens
(greedy tokens and seeded samples are asserted equal here, as in ``tests/unit/test_generation.py``); the
workbench's loop drops a row from the batch when it ends and embeds only the new token each step, where
TransformerLens runs every row to the longest one's end and re-embeds the whole sequence.

Settings, each on its organism's own prompts:

* ``cot-greedy``: ``adder-cot-faithful`` on test-split 1-3 digit problems, greedy, 64 new tokens;
* ``cot-sampled``: the same prompts sampled at temperature 1 (as the resampling test does), left-padded;
* ``story-greedy``: ``story-cot-faithful`` on word-problem stories of many token lengths, left-padded, 96 new tokens.

    python bench/generation.py              # 1024 prompts a setting, 5 rounds
    python bench/generation.py --quick      # 256 prompts, 3 rounds

Arms alternate within each round (TransformerLens first in even rounds, ours first in odd ones); the ratio is
TransformerLens's median seconds over ours, and "spread" is the range of the per-round ratios. Prints one JSON
object on stdout and a summary on stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from workbench.generation import _batches, generate_batch, transformer_lens_batch
from workbench.models.loader import load_model
from workbench.models.tokenizer import tokenize_prompts


def _prompts(setting: str, n: int) -> tuple[str, list[str], int, float, str]:
    if setting.startswith("story"):
        from workbench.tasks import wordproblems as wp

        problems = wp.sample_problems(n, "test", 4)
        prompts = [(wp.hint_line(wp.HINT_KINDS[i % 5], 50 + i % 20) if i % 2 else "") + wp.prompt(p)
                   for i, p in enumerate(problems)]
        return "story-cot-faithful", prompts, 96, 0.0, "left"
    from workbench.tasks import formats
    from workbench.tasks.addition import sample_problems

    prompts = [formats.problem_prompt(p) for p in sample_problems(n, (1, 2, 3), "test", seed=0)]
    sampled = setting == "cot-sampled"
    return "adder-cot-faithful", prompts, 64, 1.0 if sampled else 0.0, "left" if sampled else "none"


@torch.inference_mode()
def _run(arm, model, batches, max_new_tokens, temperature, seed=0):
    torch.manual_seed(seed)
    eos = model.tokenizer.eos_token_id
    start = time.perf_counter()
    out = []
    for batch, padded in batches:
        if arm == "transformer_lens":
            out.append(transformer_lens_batch(model, batch, max_new_tokens, temperature, padded))
        else:
            out.append(generate_batch(model, batch, max_new_tokens, temperature, eos, padded))
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeats = 256, 3
    torch.set_num_threads(args.threads)
    results = {}
    for setting in ("cot-greedy", "cot-sampled", "story-greedy"):
        name, prompts, max_new, temperature, padding = _prompts(setting, args.n)
        model = load_model(name)
        tokens = tokenize_prompts(model, prompts, reserve=max_new)
        batches = [(b, len({len(tokens[i]) for i in chunk}) > 1) for chunk, b in _batches(model, tokens, 512, padding)]
        _run("ours", model, batches[:1], 4, temperature)  # warm-up
        times = {"transformer_lens": [], "ours": []}
        for r in range(args.repeats):
            order = ("transformer_lens", "ours") if r % 2 == 0 else ("ours", "transformer_lens")
            outs = {}
            for arm in order:
                t, outs[arm] = _run(arm, model, batches, max_new, temperature)
                times[arm].append(t)
            for ref, ours in zip(outs["transformer_lens"], outs["ours"]):
                assert torch.equal(ours[:, : ref.shape[1]], ref), f"{setting}: the two loops' tokens differ"
        per_round = [a / b for a, b in zip(times["transformer_lens"], times["ours"])]
        results[setting] = {
            "model": name, "prompts": len(prompts), "max_new_tokens": max_new, "temperature": temperature,
            "padding": padding, "seconds": times,
            "median_s": {k: statistics.median(v) for k, v in times.items()},
            "ratio": statistics.median(times["transformer_lens"]) / statistics.median(times["ours"]),
            "spread": [min(per_round), max(per_round)],
        }
        r = results[setting]
        print(f"{setting}: ours {r['ratio']:.2f}x TransformerLens generate (median {r['median_s']['ours']:.2f} s vs "
              f"{r['median_s']['transformer_lens']:.2f} s, {len(prompts)} prompts, {args.threads} thread(s); "
              f"per-round {r['spread'][0]:.2f}-{r['spread'][1]:.2f}x)", file=sys.stderr)
    json.dump({"threads": args.threads, "baseline": "TransformerLens HookedTransformer.generate", "results": results},
              sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
