"""How ``write_cache`` should write its shards: from a writer thread or in line between batches, around the page
cache or through it, and what the bytes themselves cost on this machine.

On ``adder-cot-faithful``, all positions of 2000 one-length CoT prompts (both ``hook_resid_post``s, 88 MB), four
arms timed in ``--repeats`` interleaved rounds, each after an untimed ``os.sync`` (no arm is timed while the kernel
writes back the one before it): the plain forward of ``bench/caching.py`` (the baseline),
``write_cache(overlap=True)`` (writer thread), ``write_cache(overlap=False)`` (in line) and in line with
``direct_io=False`` (through the page cache). Then the cost of the bytes alone: the same number of bytes written
with ``os.pwrite`` into a new file, over that file's own pages, with ``workbench.direct_io.BlockWriter`` into a new
file, and hashed with SHA-256 (what the manifest records).

    python bench/cache_writer.py --threads 2
    python bench/cache_writer.py --threads 1

Prints one JSON object on stdout and a summary on stderr: each arm's median ratio over the plain forward (per
round, the two ran back to back) with its spread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from caching import HOOKS, MODEL, cot_texts, plain_forward  # noqa: E402

from workbench.cache_store import write_cache  # noqa: E402
from workbench.direct_io import BlockWriter  # noqa: E402
from workbench.models.loader import load_model  # noqa: E402


def byte_costs(n_bytes: int, root: Path, rounds: int) -> dict:
    """Seconds to pwrite ``n_bytes`` in 5.5 MB pieces into a new file, then over the same file, to write them
    with a ``BlockWriter`` into a new file, and to hash them."""
    piece = memoryview(os.urandom(5_500_000))
    pieces = max(1, n_bytes // len(piece))
    new, over, direct, sha = [], [], [], []
    for r in range(rounds):
        os.sync()
        path = root / f"direct-{r}"
        path.touch()
        t0 = time.perf_counter()
        w = BlockWriter(path, pieces * len(piece))
        for i in range(pieces):
            w.write(piece, i * len(piece))
        w.close()
        direct.append(time.perf_counter() - t0)
        path = root / f"bytes-{r}"
        for times, flags in ((new, os.O_CREAT | os.O_TRUNC), (over, 0)):
            fd = os.open(path, os.O_WRONLY | flags)
            t0 = time.perf_counter()
            for i in range(pieces):
                os.pwrite(fd, piece, i * len(piece))
            times.append(time.perf_counter() - t0)
            os.close(fd)
        t0 = time.perf_counter()
        h = hashlib.sha256()
        for _ in range(pieces):
            h.update(piece)
        sha.append(time.perf_counter() - t0)
    each = {"pwrite_new_file": new, "pwrite_over_own_pages": over, "direct_io_new_file": direct, "sha256": sha}
    return {"bytes": pieces * len(piece)} | {k: {"median_s": round(statistics.median(v), 4),
                                                 "range_s": [round(min(v), 4), round(max(v), 4)]}
                                             for k, v in each.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=11)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(MODEL)
    texts = cot_texts(args.n, same_length=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = iter(range(10**6))

        def cache(overlap: bool, direct_io: bool = True) -> float:
            t0 = time.perf_counter()
            write_cache(model, MODEL, texts, HOOKS, root / f"cache-{next(runs)}", positions=None, shard_size=1000,
                        batch_size=256, progress=False, overlap=overlap, direct_io=direct_io)
            return time.perf_counter() - t0

        arms = {"plain_forward": lambda: plain_forward(model, texts, 256),
                "writer_thread": lambda: cache(True), "in_line": lambda: cache(False),
                "in_line_page_cache": lambda: cache(False, direct_io=False)}
        for arm in arms.values():  # warm-up
            arm()
        times: dict[str, list[float]] = {k: [] for k in arms}
        for _ in range(args.repeats):
            for k, arm in arms.items():
                os.sync()
                times[k].append(arm())
        n_bytes = sum(f.stat().st_size for f in (root / "cache-0").glob("*.safetensors"))
        costs = byte_costs(n_bytes, root, 5)
    out = {"model": MODEL, "threads": args.threads, "n_prompts": args.n, "repeats": args.repeats,
           "baseline": "plain forward (bench/caching.py)", "seconds": {k: [round(t, 3) for t in v]
                                                                      for k, v in times.items()},
           "bytes": costs}
    for k in ("writer_thread", "in_line", "in_line_page_cache"):
        ratios = [p / o for p, o in zip(times["plain_forward"], times[k])]
        out[f"{k}_over_plain"] = round(statistics.median(ratios), 3)
        out[f"{k}_over_plain_spread"] = [round(min(ratios), 3), round(max(ratios), 3)]
    print(json.dumps(out, indent=1))
    print(f"baseline: plain forward; torch threads {args.threads}; {args.repeats} interleaved rounds; "
          f"{args.n} prompts, all positions ({costs['bytes'] / 1e6:.0f} MB)", file=sys.stderr)
    for k in ("writer_thread", "in_line", "in_line_page_cache"):
        lo, hi = out[f"{k}_over_plain_spread"]
        print(f"{k:18s} ours/plain {out[f'{k}_over_plain']:.2f} (spread {lo:.2f}-{hi:.2f})", file=sys.stderr)
    for k in ("pwrite_new_file", "pwrite_over_own_pages", "direct_io_new_file", "sha256"):
        lo, hi = costs[k]["range_s"]
        print(f"{k:22s} {costs[k]['median_s']:.3f} s ({lo:.3f}-{hi:.3f})", file=sys.stderr)


if __name__ == "__main__":
    main()
