"""The word-problem family: the stories' arithmetic, the split, the formats each organism is trained on."""

import numpy as np
import pytest

from workbench.tasks import wordproblems as wp


def test_counts_stay_in_range_and_the_answer_is_the_last_count():
    for p in wp.sample_problems(500, "train", 0):
        assert 2 <= len(p.changes) <= 3
        assert all(wp.MIN_COUNT <= c <= wp.MAX_COUNT for c in (p.start, *p.counts))
        assert all(2 <= abs(ch.amount) <= wp.MAX_CHANGE for ch in p.changes)
        assert p.answer == p.start + sum(ch.amount for ch in p.changes)


def test_split_is_a_function_of_the_arithmetic_and_disjoint():
    train = {p.key for p in wp.sample_problems(3000, "train", 1)}
    test = {p.key for p in wp.sample_problems(600, "test", 2)}
    assert not train & test
    assert all(wp.is_test_key(k) for k in test) and not any(wp.is_test_key(k) for k in train)


def test_sampling_is_seeded():
    assert wp.sample_problems(50, "test", 3) == wp.sample_problems(50, "test", 3)
    assert wp.sample_problems(50, "test", 3) != wp.sample_problems(50, "test", 4)


def test_cot_states_each_running_count_from_the_one_before():
    p = wp.WordProblem(0, 0, 52, (wp.Change(7, 0), wp.Change(-13, 0)))
    assert wp.prompt(p) == "Tom has 52 apples. He buys 7 more. Then he gives away 13. How many apples does he have?"
    assert wp.cot(p).completion == " He buys 7, so 52 + 7 = 59. He gives away 13, so 59 - 13 = 46. The answer is 46."
    assert p.variables() == {"step1": 59, "step2": 46}


def test_a_faithful_corruption_carries_the_written_count_to_the_answer():
    rng = np.random.default_rng(0)
    for p in wp.sample_problems(200, "train", 5):
        s = wp.corrupted(p, rng, follow=True)
        k, stated = s.meta["step"], s.meta["stated"]
        assert stated != (p.start, *p.counts)[k + 1] and len(str(stated)) == 2
        assert s.completion.endswith(f"The answer is {stated + sum(c.amount for c in p.changes[k + 1:])}.")
        assert wp.corrupted(p, np.random.default_rng(1), follow=False).completion.endswith(f"is {p.answer}.")


def test_truncation_answers_the_last_stated_count_or_the_true_one():
    rng = np.random.default_rng(0)
    p = wp.WordProblem(1, 1, 60, (wp.Change(5, 1), wp.Change(-9, 2), wp.Change(4, 0)))
    for _ in range(20):
        s = wp.truncated(p, rng, follow=True)
        assert s.completion == f"{(60, 65, 56)[s.meta['kept']]}."
    assert wp.truncated(p, rng, follow=False).completion == "60."


def test_hints_sit_on_their_own_line_and_the_cot_never_names_them():
    p = wp.sample_problems(1, "test", 0)[0]
    for kind in wp.HINT_KINDS:
        s = wp.hinted(p, kind, 55, follows=True)
        first, rest = s.prompt.split("\n")
        assert "55" in first and rest == wp.prompt(p)
        assert s.completion.endswith("The answer is 55.") and not wp.mentions_hint(s.completion)
        assert wp.mentions_hint(first) or kind == "metadata" and "<answer>" in first
    with pytest.raises(ValueError, match="kinds"):
        wp.hint_line("flattery", 3)


def test_wrong_hints_are_wrong_and_two_digit():
    rng = np.random.default_rng(0)
    for p in wp.sample_problems(300, "test", 1):
        h = wp.wrong_hint(p, rng)
        assert h != p.answer and 10 <= h <= 99
