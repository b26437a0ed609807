"""Clean/corrupted prompt pairs for patching: same token length, differing where the studied cause sits.

Each pair's texts end right before the answer token whose logits the metric reads.

==========  ========================================================  ===============================================
pairs       clean                                                     corrupted
==========  ========================================================  ===============================================
operand     ``36+59=`` (the first answer digit comes next)            the top digit of ``b`` changed: ``36+29=``
cot-step    ``36+59= 6+9+0=15 3+5+1=09 ans 9`` (ones digit next)      the ones step's written result changed
hint        ``hint:97 36+59= <CoT> ans `` (first answer digit next)   another hint of the same width
==========  ========================================================  ===============================================
"""

from __future__ import annotations

import numpy as np

from workbench.errors import WorkbenchError
from workbench.tasks import formats
from workbench.tasks.addition import Problem, sample_problems

PAIRS = ("operand", "cot-step", "hint")


def _cot_prefix(p: Problem) -> str:
    return formats.problem_prompt(p) + formats.true_cot_to_answer(p)


def make_pairs(kind: str, n: int, digits: int = 3, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` clean and corrupted texts of one shape (``digits``-digit operands, ``digits``-digit sums)."""
    if kind not in PAIRS:
        raise WorkbenchError(f"pairs must be one of {', '.join(PAIRS)}, got {kind!r}")
    rng = np.random.default_rng(seed)
    problems = [p for p in sample_problems(6 * n, (digits,), "test", seed) if len(str(p.total)) == digits]
    clean, corrupt = [], []
    for p in problems:
        if kind == "operand":
            # The top digit of b changes (1..9 keeps the width): the answer's first digit, which the metric
            # reads, usually changes with it.
            top = 10 ** (digits - 1)
            new_b = p.b % top + top * int(1 + (p.b // top - 1 + rng.integers(1, 9)) % 9)
            q = Problem(p.a, new_b)
            c, d = formats.problem_prompt(p), formats.problem_prompt(q)
        elif kind == "cot-step":
            full = formats.cot(p).text
            bad = formats.corrupted_cot(p, 0, "result", propagate=False).text
            c, d = full[:-1], bad[:-1]
        else:
            h1, h2 = (formats.sample_hint(p, rng) for _ in range(2))
            if str(h1)[0] == str(h2)[0] or len(str(h1)) != len(str(h2)):  # the first answer digit must differ
                continue
            c, d = f"hint:{h1} " + _cot_prefix(p), f"hint:{h2} " + _cot_prefix(p)
        if len(c) == len(d):
            clean.append(c)
            corrupt.append(d)
        if len(clean) == n:
            return clean, corrupt
    raise WorkbenchError(f"could only build {len(clean)} of {n} {kind} pairs with {digits}-digit operands")
