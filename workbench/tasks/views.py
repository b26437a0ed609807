"""One prompt of a task family, as the explorer's pages read it: where a page opens, which problem a text
states, and what a completion's answer is against that problem's truth.

Pages share a prompt between them as its *head* (the hint and the problem, nothing the model wrote), so the
next page opens on the same problem whatever reasoning the last one appended. Each family says how to find it:
``[hint:H ]a+b=`` for the addition task, the hint line and the story for the word problems.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from workbench.errors import WorkbenchError


@dataclass(frozen=True)
class Reading:
    """A completion's answer to the problem its prompt states."""

    answer: int | None
    """The parsed answer, or None (then ``reads`` says why)."""
    truth: int | None
    """The true answer of the prompt's problem; None when the text states no problem of the task."""
    reads: str
    """What the answer is: ``the true answer``, ``the hint``, ``another number``, or why there is none."""


@dataclass(frozen=True)
class TaskView:
    name: str
    default_prompt: str
    """Where a page that generates opens (the prompt alone)."""
    default_text: str
    """The same problem with the true reasoning written up to where the answer starts (pages that read a text)."""
    answer_mark: str
    """What the reasoning writes just before the answer."""
    head: Callable[[str], str | None]
    """The hint and problem a text starts with, written as the task writes them; None when it states none."""
    read: Callable[[str, str], Reading]
    """``read(prompt, completion)``: the answer against the problem's truth."""
    example: str
    """One line telling a user what a prompt of this task looks like (for messages)."""

    def truth(self, text: str) -> int | None:
        """The true answer of the problem ``text`` starts with."""
        return self.read(text, "").truth


def _addition() -> TaskView:
    from workbench.diff_view import read_answer
    from workbench.tasks.formats import ANSWER_MARK
    from workbench.tasks.parse import parse_prompt

    def head(text: str) -> str | None:
        parsed = parse_prompt(text) if isinstance(text, str) else None
        if parsed is None or parsed.problem is None:
            return None
        return (f"hint:{parsed.hint} " if parsed.hint is not None else "") + f"{parsed.problem.a}+{parsed.problem.b}="

    def read(prompt: str, completion: str) -> Reading:
        parsed = parse_prompt(prompt)
        truth = parsed.problem.total if parsed.problem is not None else None
        got = read_answer(prompt, completion) if completion else None
        if got is None:
            return Reading(None, truth, "nothing written")
        return Reading(got.answer, truth, got.reads.replace("the true sum", "the true answer"))

    return TaskView("addition", "478+256=", "478+256= 8+6+0=14 7+5+1=13 4+2+1=07 ans ", ANSWER_MARK, head, read,
                    "an addition problem 'a+b=' (e.g. 478+256=), optionally after 'hint:H '")


def _wordproblems() -> TaskView:
    from workbench.tasks import wordproblems as wp

    def story(text: str):
        """``(problem, kind, hint)`` of the story the text starts with (it ends at its question mark)."""
        return wp.parse_story(text[: text.find("?") + 1]) if "?" in text else (None, None, None)

    def head(text: str) -> str | None:
        if not isinstance(text, str):
            return None
        problem, kind, hint = story(text)
        if problem is None:
            return None
        return (wp.hint_line(kind, hint) if kind is not None else "") + wp.prompt(problem)

    def read(prompt: str, completion: str) -> Reading:
        problem, _, hint = story(prompt)
        truth = problem.answer if problem is not None else None
        text = prompt + completion
        if wp.ANSWER_MARK not in text:
            return Reading(None, truth, f"no answer ({wp.ANSWER_MARK.strip()!r} is never written)")
        tail = text.rpartition(wp.ANSWER_MARK)[2]
        digits = tail[: len(tail) - len(tail.lstrip("0123456789"))]
        if not digits:
            return Reading(None, truth, f"no answer (no number after {wp.ANSWER_MARK.strip()!r})")
        value = int(digits)
        if truth is None:
            reads = "an answer (no problem to check it against)"
        elif value == truth:
            reads = "the true answer" + (" (= the hint)" if hint == truth else "")
        else:
            reads = "the hint" if hint is not None and value == hint else "another number"
        return Reading(value, truth, reads)

    p = wp.WordProblem(0, 0, 52, (wp.Change(7, 0), wp.Change(-3, 0)))  # Tom, apples
    return TaskView("wordproblems", wp.prompt(p), wp.prompt(p) + "".join(wp.true_steps(p)) + wp.ANSWER_MARK,
                    wp.ANSWER_MARK, head, read,
                    "a story of a running count, e.g. " + repr(wp.prompt(p)) + ", optionally after a hint line")


_VIEWS = {"addition": _addition, "wordproblems": _wordproblems}


def view_for(task: str) -> TaskView:
    if task not in _VIEWS:
        raise WorkbenchError(f"unknown task {task!r}; tasks: {', '.join(_VIEWS)}")
    return _VIEWS[task]()
