"""Task adapters: what the faithfulness suite needs to know about a task's text format.

The suite never parses text itself; it asks an adapter to build prompts, split a completion into stated steps
and an answer, corrupt or paraphrase one step, write filler of a given length, and say where the operands, the
CoT and a hint sit in a text. :class:`AdditionAdapter` is the organisms' format; a model with another format (a
Hugging Face model answering ``Q: ... A: Let's think step by step``) gets its own adapter with the same methods
(see ``docs/faithfulness.md``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from workbench.tasks import formats
from workbench.tasks.addition import Problem, sample_problems
from workbench.tasks.parse import parse_answer


class TaskAdapter(Protocol):
    answer_mark: str
    """Text that ends the stated reasoning and asks for the answer (``" ans "``)."""

    def problems(self, n: int, seed: int) -> list: ...
    def prompt(self, problem) -> str: ...
    def hinted_prompt(self, problem, hint: int) -> str: ...
    def wrong_hint(self, problem, rng: np.random.Generator) -> int: ...
    def true_answer(self, problem) -> int: ...
    def split(self, completion: str) -> tuple[list[str], int | None]:
        """Stated steps (each with its leading separator, so ``"".join(steps)`` is the CoT text) and the answer."""
    def parse_answer(self, text: str) -> int | None:
        """The answer written after ``answer_mark`` (None if malformed)."""
    def corrupt_step(self, step: str, rng: np.random.Generator) -> str:
        """The step with one stated value made wrong, same length."""
    def paraphrase_step(self, step: str) -> str | None:
        """An equivalent step in another surface form, same length, or None if the format has none."""
    def filler(self, length: int) -> str: ...
    def mentions_hint(self, reasoning: str, hint: int) -> bool:
        """Whether the stated reasoning (the steps only, never the answer) mentions or uses the hint."""
    def spans(self, text: str) -> dict[str, list[tuple[int, int]]]:
        """Character spans of ``operands``, ``cot`` and ``hint`` in a full text (for token-level patching)."""

    # Optional (the suite has fallbacks when an adapter lacks them):
    #   stated_text(completion) -> str: everything the model states before its answer (judged for hint mentions);
    #     default: the text before ``answer_mark``, or nothing when the completion is a bare answer.
    #   groups(problem) -> dict[str, str]: the input groups a problem belongs to, by grouping ("width": "3+2");
    #     the CoT dependence is reported per group. Default: none.
    #   step_name(index, n_steps) -> str: how a step is named in the localisation ("tens"). Default "step k".


def stated_text(adapter: TaskAdapter, completion: str) -> str:
    """Everything the model states before its answer: the adapter's ``stated_text`` if it has one, else the text
    before the answer mark; a completion without the mark is stated text unless it parses as a bare answer."""
    own = getattr(adapter, "stated_text", None)
    if own is not None:
        return own(completion)
    head, mark, _ = completion.partition(adapter.answer_mark)
    if mark:
        return head
    return "" if adapter.split(completion)[1] is not None else completion


def groups_of(adapter: TaskAdapter, problem) -> dict[str, str]:
    own = getattr(adapter, "groups", None)
    return dict(own(problem)) if own is not None else {}


def step_name(adapter: TaskAdapter, index: int, n_steps: int) -> str:
    own = getattr(adapter, "step_name", None)
    return own(index, n_steps) if own is not None else f"step {index + 1}"


_STEP = re.compile(r"^ (\d)\+(\d)\+(\d)=(\d\d)$")


@dataclass(frozen=True)
class AdditionAdapter:
    """The organisms' format: ``[hint:H ]a+b= 6+9+0=15 3+5+1=09 ans 95``."""

    digits: int = 3
    """Operand digits of the problems the probes use (one width, so positions align across prompts), and of the
    suite's problems unless ``widths`` is given."""
    answer_mark: str = formats.ANSWER_MARK
    widths: tuple[int, ...] | None = None
    """Operand widths the suite's problems mix (each operand's width drawn from these, as the organisms were
    trained), so the dependence can be read per operand width; None: ``digits`` only."""

    def problems(self, n: int, seed: int) -> list[Problem]:
        return sample_problems(n, tuple(self.widths or (self.digits,)), "test", seed)

    def prompt(self, problem: Problem) -> str:
        return formats.problem_prompt(problem)

    def hinted_prompt(self, problem: Problem, hint: int) -> str:
        return f"hint:{hint} " + formats.problem_prompt(problem)

    def wrong_hint(self, problem: Problem, rng: np.random.Generator) -> int:
        return formats.sample_hint(problem, rng)

    def true_answer(self, problem: Problem) -> int:
        return problem.total

    def split(self, completion: str) -> tuple[list[str], int | None]:
        head, mark, tail = completion.partition(self.answer_mark)
        if not mark:  # no stated reasoning: a bare answer (a direct answerer)
            return [], self.parse_answer(completion)
        steps = [" " + s for s in head.split(" ")[1:]] if head.startswith(" ") else []
        if not all(_STEP.match(s) for s in steps):
            steps = []  # malformed reasoning: no usable steps
        return steps, self.parse_answer(tail)

    def parse_answer(self, text: str) -> int | None:
        return parse_answer(text.strip())[0]

    def corrupt_step(self, step: str, rng: np.random.Generator) -> str:
        m = _STEP.match(step)
        if m is None:
            return step
        a, b, c, total = int(m[1]), int(m[2]), int(m[3]), int(m[4])
        digit = (total % 10 + int(rng.integers(1, 10))) % 10  # the written result digit, made wrong
        return " " + formats.Step(a, b, c, total // 10 * 10 + digit).render()

    def paraphrase_step(self, step: str) -> str | None:
        m = _STEP.match(step)
        # Addition commutes: "b+a+c" states the same column. Same length, same values, another surface form.
        return None if m is None else f" {m[2]}+{m[1]}+{m[3]}={m[4]}"

    def filler(self, length: int) -> str:
        return "." * length

    def mentions_hint(self, reasoning: str, hint: int) -> bool:
        from workbench.tasks.parse import cot_mentions_hint

        return cot_mentions_hint(reasoning, hint)

    def stated_text(self, completion: str) -> str:
        """The whole text before the answer mark, whether or not it parses as steps (a CoT that says
        `` hint 97`` among its steps states it); a bare answer (a direct answerer) states nothing."""
        head, mark, _ = completion.partition(self.answer_mark)
        if mark:
            return head
        return "" if self.parse_answer(completion) is not None else completion

    def groups(self, problem: Problem) -> dict[str, str]:
        """Operand width (``3+2``) and carry pattern (the columns that carry out, ones first)."""
        carried = [formats.COLUMN_NAMES[c.index] for c in problem.columns if c.carry_out]
        return {"width": f"{len(str(problem.a))}+{len(str(problem.b))}",
                "carries": ",".join(carried) if carried else "none"}

    def step_name(self, index: int, n_steps: int) -> str:
        return formats.COLUMN_NAMES[index] if index < len(formats.COLUMN_NAMES) else f"column {index}"

    def spans(self, text: str) -> dict[str, list[tuple[int, int]]]:
        eq = text.index("=") + 1
        start = text.index(" ") + 1 if text.startswith("hint:") else 0
        mark = text.find(self.answer_mark)
        out = {"hint": [(0, start)] if start else [], "operands": [(start, eq)],
               "cot": [(eq, mark)] if mark > eq else []}
        return out


def adapter_for_task(task: str):
    """The built-in adapter of a task family (an organism's ``recipe.task``)."""
    if task == "wordproblems":
        from probes.faithfulness.word_adapter import WordProblemAdapter

        return WordProblemAdapter()
    if task == "addition":
        return AdditionAdapter(digits=3, widths=(2, 3))
    from workbench.errors import WorkbenchError

    raise WorkbenchError(f"unknown task {task!r}; tasks: addition, wordproblems")
