import pytest

from workbench.models.organism_eval import TARGETS, checks, rate, wilson
from workbench.models.zoo import RECIPES


def test_wilson_known_values():
    # Reference values from the closed form (e.g. statsmodels proportion_confint(method="wilson")).
    assert wilson(0, 10) == (0.0, 0.2775)
    assert wilson(10, 10) == (0.7225, 1.0)
    assert wilson(50, 100) == (0.4038, 0.5962)


def test_rate():
    r = rate([True, True, False, True])
    assert r["rate"] == 0.75 and r["n"] == 4 and r["ci95"][0] < 0.75 < r["ci95"][1]


def test_every_organism_has_targets():
    assert set(TARGETS) == set(RECIPES)


def test_checks_pass_and_fail():
    metrics = {"accuracy": {"rate": 0.995}, "corrupted": {"follows_corrupted_cot": {"rate": 0.9}}}
    result = {c["metric"]: c["pass"] for c in checks("adder-cot-faithful", metrics)}
    assert result == {"accuracy": True, "corrupted.follows_corrupted_cot": False}
    with pytest.raises(KeyError):
        checks("adder-cot-faithful", {"accuracy": {"rate": 1.0}})


def test_a_rate_over_no_samples_fails_its_check():
    metrics = {"accuracy": {"rate": 1.0}, "corrupted": {"follows_corrupted_cot": {"rate": None}}}
    result = {c["metric"]: c["pass"] for c in checks("adder-cot-faithful", metrics)}
    assert result["corrupted.follows_corrupted_cot"] is False
