"""The word-problem family's task adapter (:mod:`workbench.tasks.wordproblems`): natural-language reasoning,
a byte-level BPE tokenizer, and the five hint kinds of Chen et al. (2025), each tested and reported on its own.

It uses only the adapter protocol of :mod:`probes.faithfulness.adapter` plus two optional parts every adapter
may declare: ``hint_kinds`` (with ``hinted_prompt(problem, hint, kind)``) and the task variables of
:mod:`probes.faithfulness.task_claims` (each step's running count, where the reasoning states it, and the
task's causal model: what the answer is when a count is set to a value).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from workbench.tasks import wordproblems as wp

STEP = re.compile(r" [A-Z][a-z]+ [a-z ]+ (\d+), so (\d+) ([+-]) (\d+) = (\d+)\.")
"""One stated step: `` He buys 7, so 52 + 7 = 59.`` (groups: change, count before, sign, change, count after)."""


@dataclass(frozen=True)
class WordProblemAdapter:
    answer_mark: str = wp.ANSWER_MARK
    steps: tuple[int, ...] = (2, 3)
    """Changes per problem the suite's problems mix (the organisms were trained on 2 and 3)."""
    hint_kinds: tuple[str, ...] = wp.HINT_KINDS

    def problems(self, n: int, seed: int) -> list[wp.WordProblem]:
        return wp.sample_problems(n, "test", seed, self.steps)

    def prompt(self, problem: wp.WordProblem) -> str:
        return wp.prompt(problem)

    def hinted_prompt(self, problem: wp.WordProblem, hint: int, kind: str = "metadata") -> str:
        return wp.hint_line(kind, hint) + wp.prompt(problem)

    def wrong_hint(self, problem: wp.WordProblem, rng: np.random.Generator) -> int:
        return wp.wrong_hint(problem, rng)

    def true_answer(self, problem: wp.WordProblem) -> int:
        return problem.answer

    def split(self, completion: str) -> tuple[list[str], int | None]:
        head, mark, tail = completion.partition(self.answer_mark)
        if not mark:
            return [], self.parse_answer(completion)
        steps = [m[0] for m in STEP.finditer(head)]
        if "".join(steps) != head:
            steps = []  # text between or around the steps that is no step: no usable steps
        return steps, self.parse_answer(tail)

    def parse_answer(self, text: str) -> int | None:
        m = re.match(r"\s*(\d+)", text)
        return int(m[1]) if m else None

    def corrupt_step(self, step: str, rng: np.random.Generator) -> str:
        """The stated count after the change made wrong within its decade (same length)."""
        m = STEP.fullmatch(step)
        if m is None:
            return step
        wrong = wp.corrupted_value(int(m[5]), rng)
        return step[:m.start(5)] + str(wrong).zfill(len(m[5])) + step[m.end(5):]

    def paraphrase_step(self, step: str) -> str | None:
        """The same step in another of the family's words for the change (``He finds 7, so 52 + 7 = 59.`` for
        ``He buys 7, ...``): every stated value and the equation stay as written, only the wording differs, and
        the words are ones the family's stories use. (Writing the equation the other way round, ``59 = 52 + 7``,
        is a form no story of the family has: a reader that cannot parse it changes its answer without reading
        anything from the form.)"""
        m = STEP.fullmatch(step)
        if m is None:
            return None
        words = wp.GAIN_STATED if m[3] == "+" else wp.LOSS_STATED
        head = step[:m.start(1)]
        for i, w in enumerate(words):
            said = " " + w.format(n="").strip() + " "
            if head.endswith(said):
                other = " " + words[(i + 1) % len(words)].format(n="").strip() + " "
                return head[: -len(said)] + other + step[m.start(1):]
        return None

    def filler(self, length: int) -> str:
        return "." * length

    def mentions_hint(self, reasoning: str, hint: int) -> bool:
        return wp.mentions_hint(reasoning)

    def stated_text(self, completion: str) -> str:
        head, mark, _ = completion.partition(self.answer_mark)
        return head if mark else ("" if self.parse_answer(completion) is not None else completion)

    def groups(self, problem: wp.WordProblem) -> dict[str, str]:
        """Number of changes, and their signs in order (``+-``)."""
        return {"changes": str(len(problem.changes)),
                "signs": "".join("+" if c.amount > 0 else "-" for c in problem.changes)}

    def step_name(self, index: int, n_steps: int) -> str:
        return f"step {index + 1}"

    def spans(self, text: str) -> dict[str, list[tuple[int, int]]]:
        start = text.index("\n") + 1 if "\n" in text else 0
        q = text.index("?", start) + 1
        mark = text.find(self.answer_mark)
        return {"hint": [(0, start)] if start else [], "operands": [(start, q)],
                "cot": [(q, mark)] if mark > q else []}

    def true_cot(self, problem: wp.WordProblem) -> str:
        """The reasoning a faithful solver writes: every step's true running count (no answer)."""
        return "".join(wp.true_steps(problem))

    def problem_of(self, text: str) -> wp.WordProblem | None:
        """The problem a prompt states (after any hint line), or None when it is not one of this task's."""
        return wp.parse_story(text)[0]

    # -- task variables (claims) -------------------------------------------------------------------------

    def variables(self, problem: wp.WordProblem) -> dict[str, int]:
        return problem.variables()

    def stated_values(self, completion: str) -> dict[str, tuple[int, tuple[int, int]]]:
        """Each step's stated running count (``step1`` ...) and its characters."""
        head = completion.partition(self.answer_mark)[0]
        return {f"step{i + 1}": (int(m[5]), (m.start(5), m.end(5))) for i, m in enumerate(STEP.finditer(head))}

    def answer_given(self, problem: wp.WordProblem, name: str, value: int) -> int:
        """The answer when step k's count is ``value`` and every later change is applied to it."""
        k = int(name.removeprefix("step"))
        return value + sum(c.amount for c in problem.changes[k:])
