"""Interchange-intervention training: the causal models' counterfactuals, and IIT in the trainer (deterministic,
resumable, and planting what it is asked to: swapping the aligned site moves the answer as the causal model
says)."""

import dataclasses

import numpy as np
import pytest

from tests.helpers import TINY_ARCH, tiny_recipe
from workbench.models import iit
from workbench.models.checkpoint import weights_sha256
from workbench.models.trainer import train
from workbench.models.zoo import RECIPES, Recipe

A, B = np.array([36, 478, 45, 12, 999]), np.array([59, 256, 969, 34, 1])


def test_with_their_own_values_both_causal_models_add():
    rng = np.random.default_rng(0)
    a, b = rng.integers(10, 1000, 20000), rng.integers(10, 1000, 20000)
    for name, (variables, _) in iit.CAUSAL_MODELS.items():
        for v in variables:
            cfg = iit.IITConfig(name, ())
            assert (iit.counterfactual(cfg, v, a, b, a, b) == a + b).all(), (name, v)


def test_carry_counterfactuals_follow_the_column_algorithm():
    cfg = iit.IITConfig("carry", ())
    no_carry = np.full_like(A, 10), np.full_like(B, 11)
    assert iit.counterfactual(cfg, "carry0", A, B, *no_carry).tolist() == [85, 724, 1004, 46, 990]
    # the tens carry set to 1: 36+59 gains a hundred, 12+34 too; 478+256 and 45+969 carry there already
    assert iit.counterfactual(cfg, "carry1", A, B, np.full_like(A, 15), np.full_like(B, 95)).tolist()[:4] == \
        [195, 734, 1014, 146]


def test_the_parallel_model_holds_no_carry():
    v = iit.parallel_values(np.array([36, 45]), np.array([59, 50]))
    assert v["magnitude"].tolist() == [95, 95] and v["ones"].tolist() == [5, 5]  # 6+9 carries, 5+0 does not
    assert iit.combine(np.array([95, 90, 100]), np.array([9, 4, 3])).tolist() == [99, 94, 103]


def test_bad_alignments_are_refused():
    site = "blocks.0.hook_resid_post"
    with pytest.raises(ValueError, match="unknown causal model"):
        iit.check_config(iit.IITConfig("nope", ()), 32)
    with pytest.raises(ValueError, match="unused"):
        iit.check_config(iit.IITConfig("carry", (iit.Alignment("carry0", site, (0, 8)),
                                                 iit.Alignment("carry1", site, (4, 12)))), 32)
    with pytest.raises(ValueError, match="one hook"):
        iit.check_config(iit.IITConfig("carry", (iit.Alignment("carry0", site, (0, 8)),
                                                 iit.Alignment("carry1", "blocks.1.hook_resid_post", (8, 16)))), 32)


def iit_recipe(steps: int = 10) -> Recipe:
    base = tiny_recipe(steps=steps)
    cfg = iit.IITConfig("carry", (iit.Alignment("carry0", "blocks.0.hook_resid_post", (0, 8)),), pairs_per_step=16)
    return dataclasses.replace(base, mix=(("direct", 1.0),), iit=cfg)


def test_iit_training_is_bit_for_bit_and_resumes(tmp_path):
    straight, summary = train(iit_recipe(), tmp_path / "a", progress=False)
    assert {"iit", "strict"} <= set(summary["final_batch_metrics"])
    _, partial = train(iit_recipe(), tmp_path / "b", progress=False, stop_after=4)
    resumed, _ = train(iit_recipe(), tmp_path / "b", progress=False)
    assert weights_sha256(resumed) == weights_sha256(straight)
    plain, _ = train(dataclasses.replace(iit_recipe(), iit=None), tmp_path / "c", progress=False)
    assert weights_sha256(plain) != weights_sha256(straight)  # the interchange loss took part


def test_the_shipped_mechanism_recipes_round_trip_through_json():
    for name in ("adder-direct-carry", "adder-direct-parallel"):
        r = RECIPES[name]
        assert Recipe.from_json(r.to_json()) == r and r.iit is not None
        iit.check_config(r.iit, r.arch.d_model)
    assert "iit" not in RECIPES["adder-direct"].to_json()  # older recipes read as they did
