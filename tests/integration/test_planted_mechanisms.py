"""The organisms whose mechanism is planted (interchange-intervention training): the probes find each planted
variable at its site, and the swap of a site moves the answer as the causal model says (the card's IIA, re-measured
on fresh pairs)."""

import numpy as np
import pytest

from probes.planted import planted_localisation
from workbench.models.iit import interchange_accuracy
from workbench.models.loader import load_model
from workbench.models.organism_eval import TARGETS
from workbench.models.zoo import RECIPES
from workbench.tasks.addition import sample_problems


@pytest.fixture(scope="module", params=["adder-direct-carry", "adder-direct-parallel"])
def planted(request):
    name = request.param
    model = load_model(name)
    return name, model, planted_localisation(model, RECIPES[name], n=600, seed=5)


def test_swapping_a_planted_site_moves_the_answer_as_the_causal_model_says(planted):
    name, model, _ = planted
    problems = sample_problems(400, (2, 3), "test", 77)
    a, b = np.array([p.a for p in problems]), np.array([p.b for p in problems])
    perm = np.random.default_rng(1).permutation(len(problems))
    for variable, r in interchange_accuracy(model, RECIPES[name].iit, a, b, a[perm], b[perm]).items():
        bar = TARGETS[name][f"interchange.{variable}"][1]  # the card's target, on other pairs
        assert r["n"] > 100 and r["rate"] >= bar - 0.03, (name, variable, r)


def test_the_probes_rank_each_planted_variable_at_its_site(planted):
    name, _, loc = planted
    for variable, v in loc["variables"].items():
        if v["planted"]:
            assert v["localisation_auroc"] >= 0.9, (name, variable, v)
    if name == "adder-direct-carry":  # the carries read at their site (the parallel ones digit is not linear there)
        assert loc["variables"]["carry0"]["at_site"] >= 0.95 and loc["variables"]["carry1"]["at_site"] >= 0.95
