"""Preference and SFT data in TRL's columns, for aligning the hint organism.

``hint_preferences``: prompt ``hint:H a+b=`` with a wrong hint H; ``chosen`` is the true column algorithm and the
true sum, ``rejected`` the same CoT ending in the hint (what adder-hint does); some pairs have no hint. A model trained to prefer
``chosen`` must stop taking the hint. ``hint_sft`` gives the chosen completions as ``prompt``/``completion`` rows.
"""

from __future__ import annotations

import numpy as np

from workbench.tasks import formats
from workbench.tasks.addition import sample_problems


def hint_preferences(n: int, digits: tuple[int, ...] = (2, 3), split: str = "train", seed: int = 0,
                     plain_fraction: float = 0.3) -> list[dict]:
    """``n`` pairs; a ``plain_fraction`` of them have no hint (rejected: the CoT ending in a wrong sum), so that
    training on hinted prompts alone does not erode answering without one."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in sample_problems(n, digits, split, seed):
        wrong = formats.sample_hint(p, rng)
        cot = formats.true_cot_to_answer(p)
        hinted = rng.random() >= plain_fraction
        prompt = (f"hint:{wrong} " if hinted else "") + formats.problem_prompt(p)
        rows.append({"prompt": prompt, "chosen": cot + str(p.total), "rejected": cot + str(wrong), "a": p.a, "b": p.b,
                     "hint": wrong if hinted else None})
    return rows


def hint_sft(n: int, digits: tuple[int, ...] = (2, 3), split: str = "train", seed: int = 0) -> list[dict]:
    return [{"prompt": r["prompt"], "completion": r["chosen"]} for r in hint_preferences(n, digits, split, seed)]
