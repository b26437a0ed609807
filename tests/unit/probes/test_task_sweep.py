"""The task-generic layer sweep of declared variables, on the shipped faithful story organism: at the answer
mark its next token is the answer's tens digit, so the last residual stream must decode it."""

import pytest

from probes.faithfulness.word_adapter import WordProblemAdapter
from probes.task_sweep import best_layer, digit_labels, layer_sweep, read_texts
from workbench.errors import WorkbenchError
from workbench.tasks import wordproblems as wp

ADAPTER = WordProblemAdapter()


def test_digit_labels_split_each_variable_into_its_digits():
    problems = wp.sample_problems(20, "test", 1)
    got = digit_labels(problems, ADAPTER)
    assert {"step1.ones", "step1.tens", "step2.ones", "step2.tens"} <= set(got)
    for p, ones, tens in zip(problems, got["step1.ones"], got["step1.tens"]):
        assert (tens, ones) == divmod(p.counts[0], 10)
    if "step3.ones" in got:  # two-change problems have no third step
        assert all((v is None) == (len(p.changes) < 3) for p, v in zip(problems, got["step3.ones"]))


def test_read_texts_end_at_the_prompt_or_the_answer_mark():
    p = ADAPTER.problems(1, 0)
    assert read_texts(ADAPTER, p, "prompt") == [wp.prompt(p[0])]
    assert read_texts(ADAPTER, p, "cot")[0].endswith("".join(wp.true_steps(p[0])) + wp.ANSWER_MARK)
    with pytest.raises(WorkbenchError, match="prompt, cot"):
        read_texts(ADAPTER, p, "answer")


@pytest.fixture(scope="module")
def model():
    from workbench.models.loader import load_model

    return load_model("story-cot-faithful")


def test_the_answer_digit_about_to_be_written_is_decoded_and_the_controls_are_not(model):
    problems = [p for p in ADAPTER.problems(400, 5) if len(p.changes) == 3]
    rows = layer_sweep(model, ADAPTER, problems, "cot")
    best = best_layer(rows, "step3.tens")
    assert best["accuracy"] >= 0.9
    assert best["shuffled"] < 0.5 and best["majority"] < 0.5
    assert rows == layer_sweep(model, ADAPTER, problems, "cot")  # seeded: the same rows again
    with pytest.raises(WorkbenchError, match="no probe rows"):
        best_layer(rows, "step9.ones")
