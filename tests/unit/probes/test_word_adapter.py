"""The word-problem adapter: steps, corruptions, paraphrases, spans and task variables round-trip the formats."""

import numpy as np

from probes.faithfulness.loading import REQUIRED
from probes.faithfulness.word_adapter import WordProblemAdapter
from workbench.tasks import wordproblems as wp

AD = WordProblemAdapter()


def test_has_the_whole_protocol_and_hint_kinds():
    assert all(hasattr(AD, m) for m in REQUIRED)
    assert AD.hint_kinds == wp.HINT_KINDS


def test_split_recovers_the_steps_and_answer_of_every_format():
    for p in AD.problems(100, 0):
        c = wp.cot(p).completion
        steps, answer = AD.split(c)
        assert "".join(steps) == c.partition(AD.answer_mark)[0] and len(steps) == len(p.changes)
        assert answer == p.answer
        assert AD.stated_values(c) == {k: (v, AD.stated_values(c)[k][1]) for k, v in p.variables().items()}
        for name, (value, (s, e)) in AD.stated_values(c).items():
            assert c[s:e] == str(value)
    assert AD.split(" He buys 7, so 1 + 7 = 8. blah The answer is 8.") == ([], 8)  # malformed reasoning
    assert AD.split(" 46.") == ([], 46)


def test_corruption_and_paraphrase_keep_the_length():
    rng = np.random.default_rng(0)
    for p in AD.problems(50, 1):
        for step in AD.split(wp.cot(p).completion)[0]:
            bad, para = AD.corrupt_step(step, rng), AD.paraphrase_step(step)
            assert len(bad) == len(step) == len(para) and bad != step
            assert AD.split(para + AD.answer_mark + "1.")[0] == []  # another surface form: not the trained one
            assert sorted(para) == sorted(step)


def test_answer_given_is_the_task_causal_model():
    p = wp.WordProblem(0, 0, 52, (wp.Change(7, 0), wp.Change(-13, 0)))
    assert AD.answer_given(p, "step1", 50) == 37 and AD.answer_given(p, "step2", 44) == 44
    assert AD.answer_given(p, "step1", 59) == p.answer


def test_spans_cover_hint_story_and_reasoning():
    p = wp.sample_problems(1, "test", 0)[0]
    text = AD.hinted_prompt(p, 55, "grader") + wp.cot(p).completion
    sp = AD.spans(text)
    (h0, h1), (o0, o1), (c0, c1) = sp["hint"][0], sp["operands"][0], sp["cot"][0]
    assert text[h0:h1] == wp.hint_line("grader", 55) and text[o0:o1] == wp.prompt(p)
    assert text[c0:c1] == wp.cot(p).completion.partition(AD.answer_mark)[0]
    assert AD.spans(wp.prompt(p))["hint"] == []
