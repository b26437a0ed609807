"""Activation-patching sweeps against TransformerLens's one-pass-per-site ``patching`` functions, in the same run.

For each organism, on the pair set that moves its answer (``cot-step`` for the CoT organisms, ``hint`` for
adder-hint, ``operand`` for adder-direct; 32 pairs from ``make_pairs``, as ``workbench patch`` builds them; the
prediction logit-difference metric keeps the pairs whose two runs predict different tokens), three sweeps:

========  =================================================  ===============================
sweep     ours (``workbench.patching``)                      attribution estimate
========  =================================================  ===============================
resid     ``resid_sweep``                                    ``attribution_patching``
heads     ``head_sweep``                                     ``attribution_heads``
head-pos  ``head_by_pos_sweep``                              ``attribution_head_by_pos``
========  =================================================  ===============================

against, as the named baseline, ``transformer_lens.patching.get_act_patch_resid_pre``,
``get_act_patch_attn_head_out_all_pos`` and ``get_act_patch_attn_head_out_by_pos``; the baseline's time includes
the clean run's ``run_with_cache`` it needs (ours makes its caches itself). Every round runs the three arms of
each sweep back to back (the baseline first in even rounds, ours first in odd ones), and the results of ours
are checked against the baseline's on every run (max absolute difference printed).

Per row: the kept pairs, their positions and our sweep's token budget per forward pass (``tokens_per_forward``);
the baseline's name, the median seconds of the baseline and of ours, the ratio baseline / ours (median over
rounds, and the min-max of the per-round ratios; the goal is >= 1.5x); attribution patching's median seconds
with its speed-up against both; the Spearman rank correlation of its estimate with our sweep's effects; and the
largest absolute difference between ours and the baseline over all rounds. Each thread count
(``torch.set_num_threads``) is one block of rows. Other processes slow runs down unevenly: run it on a quiet
machine, and read the medians and the spread.

    python bench/patching.py            # 4 organisms, 3 rounds, 1 and 2 threads (about 15 minutes)
    python bench/patching.py --quick    # adder-direct, 2 rounds: a smoke run (well under a minute)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import time

import torch
from transformer_lens import patching as tl_patching

from workbench.models.loader import load_model
from workbench.patching import (
    attribution_head_by_pos, attribution_heads, attribution_patching, head_by_pos_sweep, head_sweep,
    prediction_logit_diff, resid_sweep, spearman, tokens_per_forward,
)
from workbench.tasks.pairs import make_pairs

PAIRS = {"adder-direct": "operand", "adder-cot-faithful": "cot-step", "adder-cot-posthoc": "cot-step",
         "adder-hint": "hint"}
SWEEPS = {  # sweep: (baseline's name in transformer_lens.patching, ours, attribution estimate)
    "resid": ("get_act_patch_resid_pre", resid_sweep, attribution_patching),
    "heads": ("get_act_patch_attn_head_out_all_pos", head_sweep, attribution_heads),
    "head-pos": ("get_act_patch_attn_head_out_by_pos", head_by_pos_sweep, attribution_head_by_pos),
}
N_PAIRS = 32
GOAL = 1.5


def timed(fn):
    with contextlib.redirect_stderr(io.StringIO()):  # progress bars
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t


def pairs(model, kind: str):
    clean_t, corrupt_t = make_pairs(kind, N_PAIRS, 3, seed=0)
    clean = torch.cat([model.to_tokens(t) for t in clean_t])
    corrupt = torch.cat([model.to_tokens(t) for t in corrupt_t])
    metric, clean, corrupt, _ = prediction_logit_diff(model, clean, corrupt)
    return metric, clean, corrupt


def bench_organism(name: str, rounds: int) -> list[dict]:
    model = load_model(name)
    metric, clean, corrupt = pairs(model, PAIRS[name])
    arms = {}
    for sweep, (theirs, ours, attribution) in SWEEPS.items():
        def baseline(theirs=getattr(tl_patching, theirs)):
            _, cache = model.run_with_cache(clean)
            return theirs(model, corrupt, cache, metric)

        arms[sweep] = (baseline, lambda ours=ours: ours(model, clean, corrupt, metric),
                       lambda attribution=attribution: attribution(model, clean, corrupt, metric))
    for _, ours, attribution in arms.values():  # warm-up
        timed(ours)
        timed(attribution)
    times = {sweep: {"base": [], "ours": [], "attr": []} for sweep in arms}
    diff = {sweep: 0.0 for sweep in arms}
    rho = {}
    with torch.inference_mode():
        base = metric(model(corrupt)).item()
    for r in range(rounds):
        for sweep, (baseline, ours, attribution) in arms.items():
            order = [("base", baseline), ("ours", ours)]
            for arm, fn in (order if r % 2 == 0 else order[::-1]) + [("attr", attribution)]:
                out, seconds = timed(fn)
                times[sweep][arm].append(seconds)
                if arm == "base":
                    expected = out
                elif arm == "ours":
                    got = out
                else:
                    estimate = out
            diff[sweep] = max(diff[sweep], float((got - expected).abs().max()))
            assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5), (name, sweep)
            rho[sweep] = spearman(estimate, got - base)
    rows = []
    for sweep, t in times.items():
        med = {arm: statistics.median(v) for arm, v in t.items()}
        ratios = [b / o for b, o in zip(t["base"], t["ours"])]
        rows.append({"organism": name, "pairs": len(clean), "tokens": clean.shape[1], "sweep": sweep,
                     "baseline": SWEEPS[sweep][0], "base_s": med["base"], "ours_s": med["ours"],
                     "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "attr_s": med["attr"], "attr_vs_base": med["base"] / med["attr"],
                     "attr_vs_ours": med["ours"] / med["attr"], "max_abs_diff": diff[sweep], "spearman": rho[sweep],
                     "budget": tokens_per_forward(model, clean.shape[1])})
    return rows


def times(x: float) -> str:
    return f"{x:.1f}x" if x < 10 else f"{x:.0f}x"


COLUMNS = [  # header, width (negative: left-aligned), cell
    ("organism", -19, lambda r: r["organism"]), ("pairs", 6, lambda r: r["pairs"]), ("pos", 4, lambda r: r["tokens"]),
    ("tok/pass", 9, lambda r: r["budget"]), ("sweep", -9, lambda r: r["sweep"]),
    ("baseline", -37, lambda r: r["baseline"]), ("base s", 8, lambda r: f"{r['base_s']:.3f}"),
    ("ours s", 8, lambda r: f"{r['ours_s']:.3f}"), ("ratio", 7, lambda r: f"{r['ratio']:.2f}x"),
    ("[min-max]", 13, lambda r: f"[{r['ratio_min']:.2f}-{r['ratio_max']:.2f}]"),
    ("attr s", 8, lambda r: f"{r['attr_s']:.4f}"), ("attr/base", 10, lambda r: times(r["attr_vs_base"])),
    ("attr/ours", 10, lambda r: times(r["attr_vs_ours"])), ("rho", 6, lambda r: f"{r['spearman']:.2f}"),
    ("max|diff|", 10, lambda r: f"{r['max_abs_diff']:.1e}"),
]


def line(cells) -> str:
    return " ".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, (_, w, _) in zip(cells, COLUMNS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="adder-direct only, 2 rounds: a smoke run")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3, quick 2)")
    ap.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated (default 1,2)")
    ap.add_argument("--organisms", default=None, help="comma-separated (default: all four; quick: adder-direct)")
    args = ap.parse_args()
    rounds = args.rounds or (2 if args.quick else 3)
    names = args.organisms.split(",") if args.organisms else ["adder-direct"] if args.quick else list(PAIRS)
    print(f"activation patching, TransformerLens's per-site functions (baseline) vs workbench.patching (ours): "
          f"{N_PAIRS} pairs per organism, {rounds} interleaved rounds, medians. The machine should be quiet: "
          f"other processes slow runs down unevenly.")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        print(f"\ntorch threads: {torch.get_num_threads()} (load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} CPUs)")
        print(line(h for h, _, _ in COLUMNS))
        for name in names:
            for row in bench_organism(name, rounds):
                goal = "" if row["ratio"] >= GOAL else f"  (below the {GOAL}x goal)"
                print(line(cell(row) for _, _, cell in COLUMNS) + goal, flush=True)


if __name__ == "__main__":
    main()
