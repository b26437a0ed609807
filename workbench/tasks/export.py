"""Seeded task datasets as JSONL, one ``{"prompt", "completion", "meta"}`` object per line (TRL's SFT columns)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workbench.errors import WorkbenchError

from workbench.io import write_jsonl
from workbench.tasks import formats
from workbench.tasks.addition import Problem, sample_operands
from workbench.tasks.formats import Sample

FORMATS = ("direct", "cot", "explanation", "hint", "corrupted_cot")


def make_samples(fmt: str, n: int, digits: tuple[int, ...], split: str, seed: int) -> list[Sample]:
    """``n`` samples of one format; hints are wrong, corruptions random (step, kind, propagation)."""
    if fmt not in FORMATS:
        raise WorkbenchError(f"format must be one of {FORMATS}, got {fmt!r}")
    rng = np.random.default_rng(seed)
    a, b = sample_operands(n, digits, split, rng)
    problems = [Problem(int(x), int(y)) for x, y in zip(a, b)]
    if fmt == "hint":
        return [formats.hint(p, formats.sample_hint(p, rng)) for p in problems]
    if fmt == "corrupted_cot":
        return [formats.random_corruption(p, rng) for p in problems]
    return [getattr(formats, fmt)(p) for p in problems]


def export_jsonl(path: str | Path, fmt: str, n: int, digits: tuple[int, ...], split: str, seed: int) -> int:
    samples = make_samples(fmt, n, digits, split, seed)
    write_jsonl(path, (s.to_json() for s in samples))
    return len(samples)
