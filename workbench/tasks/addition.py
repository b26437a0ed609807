"""Addition problems: the column algorithm, seeded sampling and the train/test split.

Everything the organisms are trained and scored on derives from :class:`Problem`. Columns are indexed from the
ones column (index 0) upwards; a missing digit of the shorter operand counts as 0, as in the textbook algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from workbench.errors import WorkbenchError

MIN_DIGITS, MAX_DIGITS = 1, 5
TEST_FRACTION = 0.1
"""Share of unordered operand pairs that belong to the test split."""


@dataclass(frozen=True)
class Column:
    """One column of the carry algorithm."""

    index: int
    """0 for the ones column, 1 for tens, ..."""
    a: int
    """Digit of the first operand (0 when it has no such digit)."""
    b: int
    """Digit of the second operand (0 when it has no such digit)."""
    carry_in: int
    """Carry from the column below: 0 or 1."""

    @property
    def total(self) -> int:
        return self.a + self.b + self.carry_in

    @property
    def digit(self) -> int:
        return self.total % 10

    @property
    def carry_out(self) -> int:
        return self.total // 10


@dataclass(frozen=True)
class Problem:
    """``a + b`` with non-negative integer operands."""

    a: int
    b: int

    def __post_init__(self) -> None:
        for name, value in (("a", self.a), ("b", self.b)):
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise WorkbenchError(f"operand {name} must be a non-negative integer, got {value!r}")
            if len(str(value)) > MAX_DIGITS:
                raise WorkbenchError(f"operand {name}={value} has more than {MAX_DIGITS} digits")

    @property
    def total(self) -> int:
        return self.a + self.b

    @cached_property
    def columns(self) -> tuple[Column, ...]:
        """The column algorithm, ones column first; one column per digit of the longer operand."""
        da, db = str(self.a)[::-1], str(self.b)[::-1]
        cols, carry = [], 0
        for i in range(max(len(da), len(db))):
            col = Column(i, int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0, carry)
            cols.append(col)
            carry = col.carry_out
        return tuple(cols)

    @property
    def carries(self) -> tuple[int, ...]:
        """Carry out of each column, ones column first."""
        return tuple(c.carry_out for c in self.columns)

    @property
    def key(self) -> tuple[int, int]:
        """The unordered operand pair: a+b and b+a share a split."""
        return (min(self.a, self.b), max(self.a, self.b))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fixed, platform-independent hash of uint64 values."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x


def is_test_pair(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray | bool:
    """Whether the unordered pair {a, b} is in the test split.

    A pure function of the pair (no state, no seed), so every generator, every organism and every later study
    agrees on the split, and no test pair is ever trained on in either order.
    """
    a_arr, b_arr = np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)
    lo, hi = np.minimum(a_arr, b_arr), np.maximum(a_arr, b_arr)
    h = _mix(lo * np.uint64(1_000_003) + hi)
    out = (h % np.uint64(1000)) < np.uint64(int(TEST_FRACTION * 1000))
    return bool(out) if out.ndim == 0 else out


def _check_digits(digits: tuple[int, ...]) -> None:
    bad = [d for d in digits if not MIN_DIGITS <= d <= MAX_DIGITS]
    if bad or not digits:
        raise WorkbenchError(f"operand digit counts must be in {MIN_DIGITS}..{MAX_DIGITS}, got {list(digits)}")


def sample_operands(
    n: int, digits: tuple[int, ...], split: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` ordered operand pairs from ``split`` ('train', 'test' or 'all').

    Each operand's digit count is drawn independently and uniformly from ``digits`` (so 2-digit + 3-digit sums
    occur), then the operand uniformly among numbers of that many digits (0-9 for one digit). Vectorised:
    rejection sampling against the split in numpy, no per-example Python loop.
    """
    _check_digits(digits)
    if split not in ("train", "test", "all"):
        raise WorkbenchError(f"split must be 'train', 'test' or 'all', got {split!r}")
    lows = np.array([0 if d == 1 else 10 ** (d - 1) for d in digits], dtype=np.int64)
    highs = np.array([10**d for d in digits], dtype=np.int64)
    out_a, out_b, have = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], 0
    while have < n:
        m = max(2 * (n - have), 64)
        ia, ib = rng.integers(0, len(digits), m), rng.integers(0, len(digits), m)
        a = rng.integers(lows[ia], highs[ia])
        b = rng.integers(lows[ib], highs[ib])
        if split != "all":
            keep = is_test_pair(a, b) == (split == "test")
            a, b = a[keep], b[keep]
        out_a.append(a)
        out_b.append(b)
        have += len(a)
    return np.concatenate(out_a)[:n], np.concatenate(out_b)[:n]


def sample_problems(n: int, digits: tuple[int, ...], split: str, seed: int) -> list[Problem]:
    """``n`` seeded problems from a split; the same arguments give the same list on every machine."""
    a, b = sample_operands(n, digits, split, np.random.default_rng(seed))
    return [Problem(int(x), int(y)) for x, y in zip(a, b)]


def edge_cases(max_digits: int = 3) -> list[Problem]:
    """Worst cases for carries: full carry chains (999+1), all-nines, no carry, zeros, mixed lengths."""
    nines = 10**max_digits - 1
    cases = [
        (nines, 1),
        (1, nines),
        (nines, nines),
        (10 ** (max_digits - 1), 10 ** (max_digits - 1)),
        (5 * 10 ** (max_digits - 1), 5 * 10 ** (max_digits - 1)),
        (nines // 9 * 4, nines // 9 * 5),  # 444+555: no carry anywhere
        (nines // 9 * 4, nines // 9 * 5 + 1),  # 444+556: one carry that ripples to the top
        (0, 0),
        (nines, 0),
        (int("1" + "0" * (max_digits - 1)) - 1, 1),  # 99+1: chain into a new digit
    ]
    return [Problem(a, b) for a, b in dict.fromkeys(cases)]
