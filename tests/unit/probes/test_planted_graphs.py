"""The pieces of the planted-mechanism scoring of graphs and features that need no trained model."""

import numpy as np
import pytest

from probes.planted_graphs import _eta_squared, _site, tracking_score, variable_values
from workbench.models.zoo import RECIPES


def test_eta_squared_is_one_for_a_function_of_the_label_and_small_for_noise():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=2000)
    acts = np.stack([labels * 0.5 + 1.0,  # a function of the label: all its variance is between classes
                     rng.normal(size=2000),  # independent: about (classes - 1) / n
                     np.zeros(2000)], axis=1)  # a dead feature explains nothing
    eta = _eta_squared(acts, labels)
    assert eta[0] == pytest.approx(1.0)
    assert eta[1] < 0.02 and eta[2] == 0.0


def test_variable_values_follow_the_causal_models():
    a, b = np.array([36, 123, 999]), np.array([59, 456, 1])
    v = variable_values(a, b)
    assert v["carry0"].tolist() == [1, 0, 1] and v["carry1"].tolist() == [0, 0, 1]
    assert v["ones"].tolist() == [5, 9, 0] and v["magnitude"].tolist() == [95, 575, 1000]


def test_the_site_writer_is_the_last_mlp_before_the_planted_hook():
    for name in ("adder-direct-carry", "adder-direct-parallel"):
        hook = RECIPES[name].iit.alignments[0].hook
        assert hook == "blocks.1.hook_resid_post" and _site(RECIPES[name]) == 1
    with pytest.raises(ValueError, match="no planted mechanism"):
        _site(RECIPES["adder-direct"])


def test_a_many_valued_variable_is_scored_by_rank_correlation_not_one_mean_per_value():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 400, size=600)  # hundreds of values: eta^2 of pure noise would be near 1
    acts = np.stack([np.maximum(values - 100, 0) * 0.1, rng.normal(size=600)], axis=1)
    score = tracking_score(acts, values)
    assert score[0] > 0.8 and score[1] < 0.02
    assert _eta_squared(acts[:, 1:], values)[0] > 0.4  # why: one mean per value fits the noise (~ 399/599)
