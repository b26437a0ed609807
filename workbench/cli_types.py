"""argparse types of the CLI: each refuses what it cannot take with a message that says what is allowed.

Numbers are checked for finiteness before their bounds (``inf`` and ``nan`` pass comparison-based bounds), seeds
for the range numpy and torch accept, paths for emptiness (``Path("")`` is the current directory).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def _bounded(cast, ok, what: str):
    """An argparse type: ``cast`` the text, then require ``ok(value)``; the message says what is allowed."""

    def parse(text: str):
        try:
            value = cast(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)  # inf and nan pass every comparison-based bound otherwise
    return value


SEED_MAX = 2**32 - 1  # numpy's SeedSequence and torch.manual_seed both take this range
_positive_int = _bounded(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _bounded(int, lambda v: v >= 0, "an integer >= 0")
_seed = _bounded(int, lambda v: 0 <= v <= SEED_MAX, f"a seed in 0..{SEED_MAX}")
_digits = _bounded(int, lambda v: 1 <= v <= 5, "an operand digit count in 1..5")
_non_negative_float = _bounded(_finite, lambda v: v >= 0, "a finite number >= 0")
_positive_float = _bounded(_finite, lambda v: v > 0, "a finite number > 0")
_learning_rate = _bounded(_finite, lambda v: 0 < v <= 1, "a learning rate in (0, 1]")
_fraction = _bounded(_finite, lambda v: 0 < v <= 1, "a number in (0, 1]")
_port = _bounded(int, lambda v: 1 <= v <= 65535, "a TCP port in 1..65535")


def _path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r} (contains a NUL byte)")
    return Path(text)
