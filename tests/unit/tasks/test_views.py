"""How pages read one prompt of each task family: the head they share, the truth, and a completion's answer."""

import pytest

from workbench.errors import WorkbenchError
from workbench.tasks import wordproblems as wp
from workbench.tasks.views import view_for


def test_addition_view_reads_the_problem_a_text_starts_with():
    v = view_for("addition")
    assert v.head("hint:700 478+256= 8+6+0=14") == "hint:700 478+256="
    assert v.head("hello") is None
    assert v.truth(v.default_text) == 734 and v.default_text.startswith(v.default_prompt)
    got = v.read("hint:700 478+256=", " 8+6+0=14 7+5+1=13 4+2+1=07 ans 700")
    assert (got.answer, got.truth, got.reads) == (700, 734, "the hint")
    assert v.read("478+256=", "").answer is None


@pytest.mark.parametrize("kind", wp.HINT_KINDS)
def test_story_view_round_trips_every_hint_kind(kind):
    v = view_for("wordproblems")
    p = wp.sample_problems(1, "test", 3)[0]
    prompt = wp.hint_line(kind, 61) + wp.prompt(p)
    text = prompt + "".join(wp.true_steps(p)) + wp.ANSWER_MARK
    assert v.head(text) == prompt  # the reasoning after the question is not part of what pages share
    assert v.truth(text) == p.answer
    assert v.read(prompt, text[len(prompt):] + "61.").reads == ("the hint" if p.answer != 61 else "the true answer (= the hint)")
    right = v.read(prompt, text[len(prompt):] + f"{p.answer}.")
    assert (right.answer, right.truth) == (p.answer, p.answer)


def test_story_view_says_why_there_is_no_answer_and_refuses_other_text():
    v = view_for("wordproblems")
    assert v.head(v.default_text) == v.default_prompt and v.truth(v.default_prompt) == 56
    assert "never written" in v.read(v.default_prompt, " He buys 7").reads
    assert "no number" in v.read(v.default_prompt, wp.ANSWER_MARK + "many.").reads
    assert v.head("478+256=") is None and v.head("Bob has 5 apples. How many apples does he have?") is None
    other = v.read("Some question?", wp.ANSWER_MARK + "3.")
    assert other.truth is None and other.answer == 3


def test_unknown_task_names_the_tasks():
    with pytest.raises(WorkbenchError, match="addition, wordproblems"):
        view_for("chess")
