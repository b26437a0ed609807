"""Probes recover planted truth: the post-hoc organism holds the answer before its CoT, the faithful one does not;
the causal check moves answers exactly as the probed variable predicts where the model uses it."""

import pytest

from probes.causal import causal_check
from probes.study import probe_texts
from probes.sweep import collect_resid, probe_sweep
from workbench.models.loader import load_model

EQ = 8  # position of '=' in "<bos>123+456=": the last prompt token, before any CoT


def _ans0_before_cot(organism: str) -> float:
    model = load_model(organism)
    problems, texts = probe_texts(3, 800, "cot")
    rows = probe_sweep(collect_resid(model, texts), problems, ["ans0"])
    return max(r["score"] for r in rows if r["position"] <= EQ)


def test_answer_is_decodable_before_the_cot_only_in_the_posthoc_organism():
    # ans0 = (a0 + b0) mod 10 is not linear in the digits, so a probe reads it only if the model computed it.
    assert _ans0_before_cot("adder-cot-posthoc") > 0.95
    assert _ans0_before_cot("adder-cot-faithful") < 0.3


@pytest.fixture(scope="module")
def direct():
    model = load_model("adder-direct")
    problems, texts = probe_texts(3, 1200, "direct")
    return model, problems, texts, collect_resid(model, texts)


def test_causal_check_moves_the_emitted_digit(direct):
    model, problems, texts, stack = direct
    # The stream after the last block at the position that emits the tens digit: the digit must follow the push.
    r = causal_check(model, stack, texts, problems, "ans1", layer=3, position=9)
    assert r["answer_follows_variable"]["rate"] > 0.9
    assert r["random_direction_changes_answer"]["rate"] < 0.05


def test_causal_check_of_the_carry_into_the_hundreds(direct):
    model, problems, texts, stack = direct
    # At '=' the model emits the hundreds digit, which needs carry1: pushing carry1 there changes the answer by
    # +-100 far more often than a random push of the same length changes it at all.
    r = causal_check(model, stack, texts, problems, "carry1", layer=2, position=EQ)
    assert r["answer_follows_variable"]["rate"] > 0.3
    assert r["random_direction_changes_answer"]["rate"] < 0.1
    assert r["answer_other"]["rate"] < 0.05


def test_carry_is_decodable_where_the_faithful_cot_writes_it():
    model = load_model("adder-cot-faithful")
    problems, texts = probe_texts(3, 600, "cot")
    carry_pos = len("123+456= 3+6+0=0")  # BOS is token 0, so the written carry of step 0 is token 16
    assert model.to_str_tokens(texts[0])[carry_pos] == texts[0][carry_pos - 1]
    rows = probe_sweep(collect_resid(model, texts), problems, ["carry0"], positions=[carry_pos])
    at_embedding = next(r for r in rows if r["layer_index"] == 0)
    # The written token is the carry: readable from the embedding alone, and not because any function of the
    # column's digits is (the control stays low there).
    assert at_embedding["score"] > 0.99 and at_embedding["selectivity"] > 0.3


def test_causal_check_before_the_equals_sign_keeps_the_whole_prompt(direct):
    model, problems, texts, stack = direct
    # A site inside the operands: the model must still see the whole problem, so every answer parses.
    r = causal_check(model, stack, texts, problems, "a2", layer=3, position=4)
    assert r["n"] == len(r["per_example"]) > 0
    assert all(e["clean"] is not None and e["text"].count("=") == 1 for e in r["examples"])
