"""Activation and attribution patching of the residual stream, scored against the planted site of a direct
answerer trained by interchange intervention."""

from probes.planted import patching_localisation
from workbench.models.loader import load_model
from workbench.models.zoo import RECIPES


def test_patching_finds_the_planted_magnitude_and_no_stated_carry():
    name = "adder-direct-parallel"
    result = patching_localisation(load_model(name), RECIPES[name], n=150)
    mag = result["variables"]["magnitude"]
    assert mag["planted"] and mag["n_pairs"] == 150
    assert mag["at_site"] >= 0.9 and mag["runner_up"] <= 0.3  # the planted site, and by a wide margin
    assert mag["localisation_auroc"]["iia"] == 1.0
    for carry in ("carry0", "carry1"):  # the stated algorithm's carries: no site swaps them into the answer
        v = result["variables"][carry]
        assert not v["planted"] and "localisation_auroc" not in v
        assert v["at_site"] <= 0.1 and v["best"]["iia"] <= 0.3
