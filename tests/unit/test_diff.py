import copy

import pytest
import torch

from tests.helpers import tiny_model
from workbench.diff import behaviour_and_activations, diff_report, weight_deltas
from workbench.errors import WorkbenchError
from workbench.io import read_parquet
from workbench.models.zoo import ArchConfig

PROMPTS = ["12+34=", "5+6=", "70+8="]


def test_identical_models_diff_to_zero():
    base = tiny_model()
    same = copy.deepcopy(base)
    assert all(w["delta_norm"] == 0 for w in weight_deltas(base, same))
    per_prompt, per_layer = behaviour_and_activations(base, same, PROMPTS)
    assert all(r["kl_max"] == pytest.approx(0, abs=1e-6) and not r["next_token_changed"] for r in per_prompt)
    assert all(r["relative_diff"] == 0 and r["cosine"] == pytest.approx(1) for r in per_layer)


def test_a_change_in_one_mlp_shows_there(tmp_path):
    base = tiny_model()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.blocks[0].mlp.W_out.add_(0.5 * torch.randn_like(tuned.blocks[0].mlp.W_out))
    rows = weight_deltas(base, tuned)
    changed = [w for w in rows if w["delta_norm"] > 0]
    assert [w["parameter"] for w in changed] == ["blocks.0.mlp.W_out"] and changed[0]["component"] == "mlp"
    summary = diff_report(base, tuned, PROMPTS, tmp_path)
    assert summary["kl_mean"] > 0 and summary["layers"][0]["relative_diff"] > 0
    assert len(read_parquet(tmp_path / "prompts.parquet")) == 3 and (tmp_path / "weight_change.png").exists()


def test_other_architectures_are_refused():
    with pytest.raises(WorkbenchError, match="different architectures"):
        weight_deltas(tiny_model(), tiny_model(arch=ArchConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=64)))
