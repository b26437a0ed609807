"""Activation caching to disk: ``write_cache`` against a plain forward pass and a naive loop, in the same run.

On the organism ``adder-cot-faithful``, for the CoT texts of test-split 2- and 3-digit problems, every arm caches
``blocks.*.hook_resid_post`` (all layers) in two settings:

* ``last_token``: prompts of mixed token lengths, ``positions=-1``;
* ``all_positions``: prompts of one token length, ``positions=None`` (every position; about 40x the bytes).

Arms, each timed from the prompt strings:

* plain forward: the floor any cache writer pays. The prompts are tokenized by one batched call of the fast
  tokenizer, grouped by token length and cut into batches exactly as ``write_cache`` does, and run through
  ``model(tokens)`` with no hooks under ``torch.inference_mode``. Also reported with the token ids given
  (the forward passes alone);
* ours: ``write_cache`` into a fresh temporary directory (shards of ``--shard-size``);
* naive: one ``run_with_cache(prompt)`` per prompt with no ``names_filter`` (every hook cached) under
  ``torch.no_grad``, then ``torch.save`` of the selected activations of the cached hooks (cloned, so only those
  bytes are written) to one ``.pt`` file per prompt. A loop over single prompts runs at the same prompts/s
  whatever their number, so it runs on the first ``--naive-n`` prompts only.

Memory: ``write_cache`` and a naive accumulating pattern (``run_with_cache`` with ``names_filter`` over batches,
every batch's cache kept in a list, concatenated and ``torch.save``-d at the end) each run in a fresh subprocess
for N and 10N prompts of one length at all positions; the peak resident set size of the subprocess (``VmHWM``)
is reported, with its resident size before the work starts (interpreter, torch and model).

    python bench/caching.py            # 2000 prompts (naive loop: 500), memory at 1000 and 10000 prompts
    python bench/caching.py --quick    # 300 prompts (naive loop: 100), memory at 300 and 3000 (about a minute)

Every arm runs once on a few prompts first (warm-up), then all arms are timed ``--repeats`` rounds, interleaved
(plain, plain with token ids, ours, naive in each round, each after an untimed ``os.sync`` and ``--settle`` seconds'
pause, so that no arm is timed while the files of the arm before it are written back), and each arm's median over the rounds is reported, with
every run's seconds. The ratio ours/plain is the plain arm's median time over ours; "spread" is the range of the
same ratio within each round (the two arms ran back to back), which is what load from other processes on a shared
machine moves. All arms, subprocesses included, use ``--threads`` torch threads. Prints one JSON object on
stdout, and a summary (ratios, baseline, threads, spread) on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformer_lens import HookedTransformer

from workbench.cache_store import CacheReader, write_cache
from workbench.caching import resolve_hooks
from workbench.models.loader import load_model
from workbench.tasks import formats
from workbench.tasks.addition import sample_problems

MODEL = "adder-cot-faithful"
HOOKS = "blocks.*.hook_resid_post"
SEED = 0
WARMUP = 64
BASELINE = ("plain forward: the fast tokenizer's batched call, then model(tokens) with no hooks under "
            "torch.inference_mode, batched as write_cache batches")


def cot_texts(n: int, same_length: bool) -> list[str]:
    """``n`` CoT texts of test-split 2- and 3-digit problems; with ``same_length``, only those of the most common
    length (the tokenizer is one token per character plus BOS, so one character length is one token length)."""
    if not same_length:
        return [formats.cot(p).text for p in sample_problems(n, (2, 3), "test", SEED)]
    k = 3 * n
    while True:
        texts = [formats.cot(p).text for p in sample_problems(k, (2, 3), "test", SEED)]
        counts: dict[int, int] = defaultdict(int)
        for t in texts:
            counts[len(t)] += 1
        length = max(counts, key=counts.__getitem__)
        same = [t for t in texts if len(t) == length]
        if len(same) >= n:
            return same[:n]
        k *= 2


def length_batches(ids: list[list[int]], batch_size: int) -> list[torch.Tensor]:
    """Token batches grouped by length, shortest first, ``batch_size`` at most: the grouping ``write_cache`` uses."""
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(ids):
        by_len[len(t)].append(i)
    return [torch.tensor([ids[i] for i in idx[s : s + batch_size]])
            for _, idx in sorted(by_len.items()) for s in range(0, len(idx), batch_size)]


@torch.inference_mode()
def forward_only(model: HookedTransformer, batches: list[torch.Tensor]) -> float:
    t0 = time.perf_counter()
    for batch in batches:
        model(batch)
    return time.perf_counter() - t0


def plain_forward(model: HookedTransformer, texts: list[str], batch_size: int) -> float:
    """Seconds to tokenize ``texts`` (one batched call of the fast tokenizer) and run the plain forward passes."""
    t0 = time.perf_counter()
    batches = length_batches(model.tokenizer(texts)["input_ids"], batch_size)
    return time.perf_counter() - t0 + forward_only(model, batches)


def ours(model: HookedTransformer, texts: list[str], positions, batch_size: int, shard_size: int, out: Path) -> float:
    t0 = time.perf_counter()
    write_cache(model, MODEL, texts, HOOKS, out, positions=positions, shard_size=shard_size, batch_size=batch_size,
                progress=False)
    return time.perf_counter() - t0


@torch.no_grad()
def naive_per_prompt(model: HookedTransformer, texts: list[str], names: list[str], positions, out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    idx = slice(None) if positions is None else positions
    t0 = time.perf_counter()
    for i, text in enumerate(texts):
        _, cache = model.run_with_cache(text)
        # clone: torch.save of a view would write the whole [1, pos, d] storage behind it
        torch.save({name: cache[name][0, idx].clone() for name in names}, out / f"{i:06d}.pt")
    return time.perf_counter() - t0


def settle(seconds: float) -> None:
    """Untimed, before each arm: write back the files of the arm before (os.sync), then wait ``seconds``. On a
    virtual machine the host goes on writing them after the guest's sync returns, and on shared cores that slows
    whichever arm comes next (measured here with os.sync alone: the plain forward, timed after the naive loop's
    500 files, took a median 1.53 s, and the same passes with the tokens given, one arm later, 0.95 s)."""
    os.sync()
    time.sleep(seconds)


def rate(seconds: float, n: int, runs: list[float] | None = None) -> dict:
    """``seconds`` (the median run) and prompts per second, with every run's seconds."""
    out = {"seconds": round(seconds, 3), "prompts_per_s": round(n / seconds, 1)}
    return out | ({"seconds_each_run": [round(t, 3) for t in runs]} if runs and len(runs) > 1 else {})


def throughput(model: HookedTransformer, names: list[str], n: int, same_length: bool, args) -> dict:
    texts = cot_texts(n, same_length)
    positions = None if same_length else -1
    ids = model.tokenizer(texts)["input_ids"]
    batches = length_batches(ids, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = iter(range(10**6))  # a fresh directory per write_cache run: a second run would resume, not write

        def run_ours(prompts: list[str]) -> float:
            return ours(model, prompts, positions, args.batch_size, args.shard_size, root / f"ours-{next(runs)}")

        # Warm-up: every arm once on a few prompts (allocator, kernels, imports done lazily).
        plain_forward(model, texts[:WARMUP], args.batch_size)
        run_ours(texts[:WARMUP])
        naive_per_prompt(model, texts[:WARMUP], names, positions, root / "naive-warmup")

        # Repeats interleave the arms, so a burst of load from other processes slows all of them alike.
        naive_n = min(n, args.naive_n)
        times = defaultdict(list)
        for _ in range(args.repeats):
            settle(args.settle)
            times["plain"].append(plain_forward(model, texts, args.batch_size))
            settle(args.settle)
            times["plain_ids"].append(forward_only(model, batches))
            settle(args.settle)
            times["ours"].append(run_ours(texts))
            settle(args.settle)
            times["naive"].append(naive_per_prompt(model, texts[:naive_n], names, positions, root / "naive"))
        plain, plain_ids, new, ref = (statistics.median(times[k]) for k in ("plain", "plain_ids", "ours", "naive"))
        per_round = [p / o for p, o in zip(times["plain"], times["ours"])]
        per_round_ids = [p / o for p, o in zip(times["plain_ids"], times["ours"])]

        # The arms must cache the same numbers, or the comparison means nothing.
        last = naive_n - 1
        reader, saved = CacheReader(root / "ours-1"), torch.load(root / "naive" / f"{last:06d}.pt")
        match = all(torch.allclose(reader[name, last], saved[name], atol=1e-5) for name in names)
    # ... and the plain forward must see the tokens that write_cache and run_with_cache see.
    same_tokens = all(model.to_tokens(texts[i])[0].tolist() == ids[i] for i in (0, n - 1))
    return {
        "n_prompts": n,
        "positions": "all" if positions is None else positions,
        "token_lengths": sorted({len(t) for t in ids}),
        "plain_forward": rate(plain, n, times["plain"]),
        "plain_forward_tokens_given": rate(plain_ids, n, times["plain_ids"]),
        "ours_write_cache": rate(new, n, times["ours"]),
        "naive_run_with_cache_per_prompt": {"n_prompts": naive_n, **rate(ref, naive_n, times["naive"])},
        "ours_over_plain": round(plain / new, 3),
        "ours_over_plain_per_round": [round(x, 3) for x in per_round],
        "ours_over_plain_spread": [round(min(per_round), 3), round(max(per_round), 3)],
        "ours_over_plain_tokens_given": round(plain_ids / new, 3),
        "ours_over_plain_tokens_given_spread": [round(min(per_round_ids), 3), round(max(per_round_ids), 3)],
        "ours_over_naive": round((n / new) / (naive_n / ref), 2),
        "same_activations": match,
        "same_tokens": same_tokens,
    }


def rss_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MiB.

    Not ``getrusage().ru_maxrss``: Linux carries it over from the parent through fork and exec, so a child would
    report the parent's peak whenever that is higher.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status (the memory figures need Linux)")


def child(arm: str, n: int, args) -> None:
    """One memory measurement in this (fresh) process: prints ``{"before_mb", "peak_rss_mb"}``."""
    torch.set_num_threads(args.threads)
    model = load_model(MODEL)
    names = resolve_hooks(model, HOOKS)
    texts = cot_texts(n, same_length=True)
    before = rss_mb("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        if arm == "ours":
            ours(model, texts, None, args.batch_size, args.shard_size, Path(tmp) / "cache")
        else:  # the naive accumulating pattern: keep every batch's cache, save everything at the end
            caches = []
            with torch.no_grad():
                for s in range(0, n, args.batch_size):
                    _, cache = model.run_with_cache(texts[s : s + args.batch_size], names_filter=names)
                    caches.append(cache)
            torch.save({name: torch.cat([c[name] for c in caches]) for name in names}, Path(tmp) / "cache.pt")
    print(json.dumps({"before_mb": round(before, 1), "peak_rss_mb": round(rss_mb("VmHWM"), 1)}))


def memory(arm: str, ns: list[int], args) -> dict:
    runs = []
    for n in ns:
        cmd = [sys.executable, __file__, "--child", arm, str(n), "--threads", str(args.threads),
               "--batch-size", str(args.batch_size), "--shard-size", str(args.shard_size)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    peaks = [r["peak_rss_mb"] for r in runs]
    growth = [round(r["peak_rss_mb"] - r["before_mb"], 1) for r in runs]
    return {"rss_before_work_mb": [r["before_mb"] for r in runs], "peak_rss_mb": peaks,
            "peak_above_before_mb": growth, "peak_ratio": round(peaks[1] / peaks[0], 3),
            "peak_above_before_ratio": round(growth[1] / growth[0], 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 prompts, memory at 1000 and 4000 prompts")
    ap.add_argument("--n", type=int, default=None, help="prompts per throughput arm (default 2000, quick 300)")
    ap.add_argument("--naive-n", type=int, default=None, help="prompts for the naive loop (default 500, quick 100)")
    ap.add_argument("--memory-n", type=int, default=None,
                    help="N for the memory runs at N and 10N (default 1000, quick 300)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--shard-size", type=int, default=None, help="prompts per shard (default 1000, quick 250)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved timed rounds (default 5, quick 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds to wait (untimed, after os.sync) before each timed arm")
    ap.add_argument("--child", nargs=2, metavar=("ARM", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.shard_size = args.shard_size or (250 if args.quick else 1000)
    if args.child:
        child(args.child[0], int(args.child[1]), args)
        return 0
    n = args.n or (300 if args.quick else 2000)
    mem_n = args.memory_n or (300 if args.quick else 1000)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.naive_n = args.naive_n or (100 if args.quick else 500)

    torch.set_num_threads(args.threads)
    model = load_model(MODEL)
    names = resolve_hooks(model, HOOKS)
    last = throughput(model, names, n, same_length=False, args=args)
    every = throughput(model, names, n, same_length=True, args=args)
    mem_ours = memory("ours", [mem_n, 10 * mem_n], args)
    mem_naive = memory("naive", [mem_n, 10 * mem_n], args)
    result = {
        "model": MODEL,
        "hooks": names,
        "prompts": "formats.cot texts of sample_problems(n, (2, 3), 'test', 0)",
        "baseline": BASELINE,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "repeats": args.repeats, "settle_s": args.settle,
        "throughput": {"last_token": last, "all_positions": every},
        "memory": {
            "n_prompts": [mem_n, 10 * mem_n],
            "setting": "prompts of one token length, all positions",
            "ours_write_cache": mem_ours,
            "naive_accumulate_then_save": mem_naive,
        },
        "goals": {
            "ours_at_least_0.9x_plain": min(last["ours_over_plain"], every["ours_over_plain"]) >= 0.9,
            "ours_faster_than_naive": min(last["ours_over_naive"], every["ours_over_naive"]) > 1.0,
            "ours_peak_rss_flat_within_10pct": mem_ours["peak_ratio"] <= 1.1,
            "naive_peak_rss_grows_20pct_or_more": mem_naive["peak_ratio"] >= 1.2,
        },
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    print(f"baseline: {BASELINE}; torch threads {args.threads}; {args.repeats} interleaved rounds, medians; "
          f"{n} prompts, shards of {args.shard_size}, batches of {args.batch_size}", file=sys.stderr)
    for name, t in result["throughput"].items():
        lo, hi = t["ours_over_plain_spread"]
        lo_ids, hi_ids = t["ours_over_plain_tokens_given_spread"]
        print(f"{name:14} ours/plain {t['ours_over_plain']:.2f} (spread {lo:.2f}-{hi:.2f}); with token ids given "
              f"{t['ours_over_plain_tokens_given']:.2f} (spread {lo_ids:.2f}-{hi_ids:.2f}); ours/naive "
              f"{t['ours_over_naive']:.1f}x", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
