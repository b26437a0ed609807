"""The per-prompt claims (what the explorer's Stated vs internal page marks), from a script: on the faithful
organism every stated value of 478+256= is true and used when edited; the reference is reused across prompts of
one shape and refused for another."""

import pytest

from probes.faithfulness.claims import claims_for_prompt
from workbench.errors import WorkbenchError
from workbench.models.loader import load_model


@pytest.fixture(scope="module")
def faithful():
    return load_model("adder-cot-faithful")


def test_claims_of_one_prompt(faithful):
    stated, ref, sentence = claims_for_prompt(faithful, "478+256=", reference_n=80)
    assert stated.source == "cot" and ref is not None and sentence
    names = {v.var for v in stated.values}
    assert {"ans0", "carry0", "ans1", "carry1"} <= names
    assert all(v.is_true for v in stated.values)
    carries = [v for v in stated.values if v.var in ("carry0", "carry1")]
    assert all(v.used is True for v in carries)  # the faithful organism reads its written carries
    again, ref2, _ = claims_for_prompt(faithful, "365+147=", reference=ref)
    assert ref2 is ref and again.problem != stated.problem
    with pytest.raises(WorkbenchError, match="reference was built for"):
        claims_for_prompt(faithful, "47+85=", reference=ref)
