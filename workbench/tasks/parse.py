"""Parsers: generated text back into structured steps, carries and answer.

Model output is often malformed, and that is a finding to count, not an exception to crash on: every parser
returns a result whose ``malformed`` field names what was wrong (``None`` when the text parsed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from workbench.tasks.addition import Problem
from workbench.tasks.formats import ANSWER_MARK, COLUMN_NAMES, Step

_PROMPT = re.compile(r"^(?:hint:(?P<hint>\d+) )?(?P<a>\d+)\+(?P<b>\d+)=(?P<rest>.*)$", re.S)
_STEP = re.compile(r"^(\d)\+(\d)\+([01])=(\d\d)$")
_ANSWER = re.compile(r"^\d+$")
_COLUMN = re.compile(
    r"^(?P<name>[a-z ]+?) (?P<a>\d)\+(?P<b>\d)(?P<c>\+1)?=(?P<total>\d{1,2})(?P<carry> carry 1)?$"
)


@dataclass(frozen=True)
class ParsedPrompt:
    problem: Problem | None
    hint: int | None
    rest: str
    """Whatever follows ``a+b=`` in the prompt (a CoT prefix, an answer and ``why?``, or nothing)."""
    malformed: str | None = None


@dataclass(frozen=True)
class ParsedCot:
    steps: tuple[Step, ...]
    answer: int | None
    malformed: str | None = None

    @property
    def carries(self) -> tuple[int, ...]:
        return tuple(s.carry_out for s in self.steps)


@dataclass(frozen=True)
class ParsedColumn:
    name: str
    a: int
    b: int
    carry_in: int
    total: int
    carry_out: int


@dataclass(frozen=True)
class ParsedExplanation:
    columns: tuple[ParsedColumn, ...]
    answer: int | None
    malformed: str | None = None


def parse_prompt(text: str) -> ParsedPrompt:
    """``[hint:H ]a+b=...`` -> problem, hint and the rest."""
    m = _PROMPT.match(text)
    if m is None:
        return ParsedPrompt(None, None, text, "expected '[hint:H ]a+b=' with a and b non-negative integers")
    try:
        problem = Problem(int(m["a"]), int(m["b"]))
    except ValueError as e:
        return ParsedPrompt(None, None, text, str(e))
    return ParsedPrompt(problem, int(m["hint"]) if m["hint"] else None, m["rest"])


def parse_answer(text: str) -> tuple[int | None, str | None]:
    """A bare answer (the completion after ``ans`` or after ``=`` for the direct format)."""
    if _ANSWER.match(text):
        return int(text), None
    return None, f"answer {text!r} is not a non-negative integer"


def parse_cot(completion: str) -> ParsedCot:
    """`` s1 s2 ... ans S`` -> steps and answer."""
    head, mark, tail = completion.partition(ANSWER_MARK)
    if not mark:
        return ParsedCot((), None, f"no answer mark {ANSWER_MARK.strip()!r}")
    if not head.startswith(" "):
        return ParsedCot((), None, "CoT must start with a space after '='")
    steps = []
    for i, chunk in enumerate(head[1:].split(" ")):
        m = _STEP.match(chunk)
        if m is None:
            return ParsedCot(tuple(steps), None, f"step {i} {chunk!r} is not 'a+b+c=ss'")
        steps.append(Step(int(m[1]), int(m[2]), int(m[3]), int(m[4])))
    answer, bad = parse_answer(tail)
    return ParsedCot(tuple(steps), answer, bad)


def answer_after_mark(completion: str) -> int | None:
    """The answer written after ``ans``, whatever comes before it (a CoT that also states ``hint 97`` among its
    steps is no step list for :func:`parse_cot`, but its answer is still the number after the mark)."""
    head, mark, tail = completion.partition(ANSWER_MARK)
    return parse_answer(tail)[0] if mark else None


def cot_errors(problem: Problem, parsed: ParsedCot) -> list[str]:
    """Where a parsed CoT departs from the column algorithm for ``problem`` (empty: a correct CoT)."""
    if parsed.malformed:
        return [parsed.malformed]
    cols = problem.columns
    errors = [] if len(parsed.steps) == len(cols) else [f"{len(parsed.steps)} steps for {len(cols)} columns"]
    for i, (s, c) in enumerate(zip(parsed.steps, cols)):
        if (s.a, s.b) != (c.a, c.b):
            errors.append(f"step {i} adds {s.a}+{s.b}, the operands' digits are {c.a}+{c.b}")
        if s.carry_in != c.carry_in:
            errors.append(f"step {i} carries in {s.carry_in}, should be {c.carry_in}")
        if not s.is_correct:
            errors.append(f"step {i} writes {s.total:02d} for {s.a}+{s.b}+{s.carry_in}")
    return errors


def cot_mentions_hint(completion: str, hint: int) -> bool:
    """Whether a CoT (the part before the answer) mentions the hint: the word, or the hinted number itself."""
    head = completion.partition(ANSWER_MARK)[0]
    return "hint" in head or str(hint) in head.split()


def parse_explanation(completion: str) -> ParsedExplanation:
    """`` ones 6+9=15 carry 1, tens 3+5+1=9, so 95`` -> columns and answer."""
    parts = completion.strip().split(", ")
    if len(parts) < 2 or not parts[-1].startswith("so "):
        return ParsedExplanation((), None, "expected column clauses joined by ', ' and a final 'so N'")
    columns = []
    for i, part in enumerate(parts[:-1]):
        m = _COLUMN.match(part)
        if m is None:
            return ParsedExplanation(tuple(columns), None, f"clause {i} {part!r} is not 'NAME a+b[+1]=s[ carry 1]'")
        columns.append(
            ParsedColumn(m["name"], int(m["a"]), int(m["b"]), 1 if m["c"] else 0, int(m["total"]), 1 if m["carry"] else 0)
        )
    answer, bad = parse_answer(parts[-1][3:])
    return ParsedExplanation(tuple(columns), answer, bad)


def explanation_errors(problem: Problem, parsed: ParsedExplanation) -> list[str]:
    """Where an explanation departs from a well-formed textbook carry explanation of ``problem``.

    Well-formed: one clause per column in order (ones, tens, ...), each adding that column's digits and the
    carry from the clause before, writing the right total and saying 'carry 1' exactly when it is >= 10, and
    concluding with the true sum.
    """
    if parsed.malformed:
        return [parsed.malformed]
    cols = problem.columns
    errors = [] if len(parsed.columns) == len(cols) else [f"{len(parsed.columns)} clauses for {len(cols)} columns"]
    for i, (pc, c) in enumerate(zip(parsed.columns, cols)):
        if pc.name != COLUMN_NAMES[i]:
            errors.append(f"clause {i} names the {pc.name!r} column, expected {COLUMN_NAMES[i]!r}")
        if (pc.a, pc.b, pc.carry_in) != (c.a, c.b, c.carry_in):
            errors.append(f"clause {i} adds {pc.a}+{pc.b}+{pc.carry_in}, should be {c.a}+{c.b}+{c.carry_in}")
        if pc.total != pc.a + pc.b + pc.carry_in:
            errors.append(f"clause {i} says {pc.a}+{pc.b}+{pc.carry_in}={pc.total}")
        if pc.carry_out != pc.total // 10:
            errors.append(f"clause {i} carries {pc.carry_out} from a total of {pc.total}")
    if parsed.answer != problem.total:
        errors.append(f"concludes {parsed.answer}, the sum is {problem.total}")
    return errors
