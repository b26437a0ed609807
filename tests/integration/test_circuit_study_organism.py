"""The ones digit's path in adder-direct's attribution graphs, with the shipped transcoders."""

import pytest

from probes.circuit_study import group_shares, run_circuit_study
from workbench.models.loader import load_model
from workbench.saes import load_transcoders
from workbench.models.zoo import organism_dir
from workbench.tasks.addition import Problem


@pytest.mark.slow
def test_the_ones_digit_is_computed_from_the_ones_column():
    model = load_model("adder-direct")
    transcoders = load_transcoders(organism_dir("adder-direct") / "transcoders", model)
    problems = [Problem(36, 59), Problem(47, 28), Problem(12, 34)]
    study = run_circuit_study(model, transcoders, problems, cot=False)
    assert study["skipped_wrong_prediction"] == 0
    ones = group_shares(study["shares_by_column"][0], 0)
    tens = group_shares(study["shares_by_column"][1], 1)
    # Ground truth: the ones digit depends on a0 and b0 only; the tens digit on its column and, through the
    # carry, on the ones column.
    assert ones["own column"] > 0.3 and ones["own column"] > 2 * ones.get("higher columns", 0.0)
    assert tens["own column"] > 0.3 and tens.get("lower columns", 0.0) > 0.1
    assert 0 < study["replacement_mean"] <= 1 and 0 < study["completeness_mean"] <= 1
