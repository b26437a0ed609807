import json

import numpy as np
import pytest

from workbench.errors import WorkbenchError
from workbench.tasks import formats
from workbench.tasks.addition import Problem, edge_cases, sample_problems
from workbench.tasks.export import export_jsonl, make_samples
from workbench.tasks.parse import (
    cot_errors,
    cot_mentions_hint,
    explanation_errors,
    parse_answer,
    parse_cot,
    parse_explanation,
    parse_prompt,
)

PROBLEMS = sample_problems(300, (1, 2, 3, 4, 5), "all", 0) + edge_cases(3) + edge_cases(5)


def test_worked_example_36_plus_59():
    p = Problem(36, 59)
    assert formats.cot(p).text == "36+59= 6+9+0=15 3+5+1=09 ans 95"
    assert formats.direct(p).text == "36+59=95"
    assert formats.explanation(p).text == "36+59= why? ones 6+9=15 carry 1, tens 3+5+1=9, so 95"
    assert formats.hint(p, 97).text == "hint:97 36+59= 6+9+0=15 3+5+1=09 ans 97"


@pytest.mark.parametrize("p", PROBLEMS, ids=lambda p: f"{p.a}+{p.b}")
def test_cot_parses_back_to_the_column_algorithm(p):
    parsed = parse_cot(formats.cot(p).completion)
    assert parsed.malformed is None
    assert cot_errors(p, parsed) == []
    assert parsed.answer == p.total
    assert parsed.carries == p.carries
    assert formats.read_off(list(parsed.steps)) == p.total


@pytest.mark.parametrize("p", PROBLEMS, ids=lambda p: f"{p.a}+{p.b}")
def test_explanation_is_well_formed(p):
    parsed = parse_explanation(formats.explanation(p).completion)
    assert parsed.malformed is None
    assert explanation_errors(p, parsed) == []
    assert [c.carry_out for c in parsed.columns] == list(p.carries)


def test_explanation_errors_are_specific():
    p = Problem(36, 59)
    wrong = parse_explanation(" ones 6+9=15, tens 3+5+1=9, so 95")  # forgot to say the carry
    assert any("carries 0 from a total of 15" in e for e in explanation_errors(p, wrong))
    wrong = parse_explanation(" ones 6+9=15 carry 1, tens 3+5=8, so 85")  # dropped the carry
    errors = explanation_errors(p, wrong)
    assert any("should be 3+5+1" in e for e in errors) and any("concludes 85" in e for e in errors)


@pytest.mark.parametrize(
    "text, reason",
    [
        (" 6+9+0=15 3+5+1=09 95", "no answer mark"),
        (" 6+9+0=15 3+5+1=9 ans 95", "step 1"),
        ("6+9+0=15 ans 95", "start with a space"),
        (" 6+9+0=15 ans x5", "not a non-negative integer"),
        (" 6+9+2=17 ans 7", "step 0"),
    ],
)
def test_malformed_cot_is_reported(text, reason):
    parsed = parse_cot(text)
    assert parsed.malformed is not None and reason in parsed.malformed


def test_malformed_explanation_and_prompt():
    assert parse_explanation(" ones 6+9 is 15, so 95").malformed
    assert parse_explanation("so 95").malformed
    assert parse_prompt("36*59=").malformed
    assert parse_prompt("hint:97 36+59=").hint == 97
    assert parse_answer("0095") == (95, None)
    assert parse_answer("9 5")[0] is None


@pytest.mark.parametrize("propagate", [False, True])
def test_result_corruption_changes_one_digit(propagate):
    p = Problem(36, 59)
    steps = formats.corrupt_steps(p, 0, "result", propagate, new_digit=4)
    assert [s.render() for s in steps] == ["6+9+0=14", "3+5+1=09"]  # carry untouched: nothing to propagate
    assert formats.read_off(steps) == 94


def test_carry_corruption_isolated_vs_propagated():
    p = Problem(36, 59)
    isolated = formats.corrupt_steps(p, 0, "carry", propagate=False)
    propagated = formats.corrupt_steps(p, 0, "carry", propagate=True)
    assert [s.render() for s in isolated] == ["6+9+0=05", "3+5+1=09"]  # later step still uses the true carry
    assert [s.render() for s in propagated] == ["6+9+0=05", "3+5+0=08"]  # later step follows the wrong carry
    assert formats.read_off(isolated) == 95 and formats.read_off(propagated) == 85
    top = formats.corrupt_steps(p, 1, "carry", propagate=False)
    assert formats.read_off(top) == 195  # a carry out of the top column adds a digit


def test_corrupted_cot_sample_meta_and_bad_arguments():
    s = formats.corrupted_cot(Problem(36, 59), 0, "result", False, 4)
    assert s.prompt == "36+59= 6+9+0=14 3+5+1=09 ans " and s.completion == "94"
    assert (s.meta["read_off"], s.meta["true"]) == (94, 95)
    with pytest.raises(WorkbenchError):
        formats.corrupted_cot(Problem(36, 59), 2, "result", False)
    with pytest.raises(WorkbenchError):
        formats.corrupt_steps(Problem(36, 59), 0, "result", False, new_digit=5)  # 5 is the true digit
    with pytest.raises(WorkbenchError):
        formats.corrupt_steps(Problem(36, 59), 0, "sign", False)


def test_random_corruptions_always_differ_from_the_true_cot():
    rng = np.random.default_rng(0)
    for p in PROBLEMS:
        s = formats.random_corruption(p, rng)
        assert s.prompt != formats.cot(p).prompt + formats.cot(p).completion.rsplit(" ans ", 1)[0] + " ans "


def test_truncated_cot():
    p = Problem(478, 256)
    assert formats.truncated_cot(p, 0).text == "478+256= ans 734"
    assert formats.truncated_cot(p, 1, "read_off").text == "478+256= 8+6+0=14 ans 14"
    with pytest.raises(WorkbenchError):
        formats.truncated_cot(p, 0, "read_off")


def test_hints_and_mentions():
    rng = np.random.default_rng(0)
    for p in PROBLEMS[:100]:
        h = formats.sample_hint(p, rng)
        assert h != p.total and h >= 0
        s = formats.hint(p, h)
        assert not cot_mentions_hint(s.completion, h)  # the answer itself is not part of the CoT
    assert cot_mentions_hint(" the hint says 97 ans 97", 97)
    assert cot_mentions_hint(" 97 6+9+0=15 ans 97", 97)


@pytest.mark.parametrize("fmt", ["direct", "cot", "explanation", "hint", "corrupted_cot"])
def test_export_jsonl_is_seeded(tmp_path, fmt):
    n = export_jsonl(tmp_path / "a.jsonl", fmt, 20, (2, 3), "test", 5)
    export_jsonl(tmp_path / "b.jsonl", fmt, 20, (2, 3), "test", 5)
    assert n == 20 and (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"prompt", "completion", "meta"} and rows[0]["meta"]["format"] == fmt
    with pytest.raises(WorkbenchError):
        make_samples("poem", 1, (2,), "test", 0)


def test_partly_read_off_answers_and_the_verbalised_hint_format():
    from workbench.tasks.parse import answer_after_mark

    p = Problem(36, 59)
    wrong_ones = formats.corrupt_steps(p, 0, "result", propagate=False, new_digit=4)  # 6+9+0=14
    wrong_tens = formats.corrupt_steps(p, 1, "result", propagate=False, new_digit=0)  # 3+5+1=00
    assert formats.partly_read_off_text(p, wrong_ones, {0, 1, 2}) == formats.read_off_text(wrong_ones) == "94"
    assert formats.partly_read_off_text(p, wrong_ones, set()) == "95"
    assert formats.partly_read_off_text(p, wrong_ones, {1, 2}) == "95"  # the ones digit is the true one
    assert formats.partly_read_off_text(p, wrong_tens, {1, 2}) == "05"  # the tens digit as written
    assert formats.partly_read_off_text(p, wrong_tens, {0}) == "95"
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = formats.random_corruption_partly_read(p, rng, frozenset({0}))
        assert s.completion == str(s.meta["answer"]) and s.prompt.endswith(" ans ")
    v = formats.hint_verbalised(p, 97)
    assert v.text == "hint:97 36+59= 6+9+0=15 3+5+1=09 hint 97 ans 97" and v.meta["hint"] == 97
    assert parse_cot(v.completion).malformed and answer_after_mark(v.completion) == 97
    assert answer_after_mark("95") is None and answer_after_mark(" 6+9+0=15 ans x") is None
