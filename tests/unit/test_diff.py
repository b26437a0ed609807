import copy
import math

import numpy as np
import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer

from tests.helpers import TINY_ARCH, tiny_model
from workbench.diff import (
    behaviour_and_activations,
    check_compatible,
    diff_report,
    weight_deltas,
)
from workbench.diff_mechanisms import (
    HINT_VARIABLES,
    POSITIONS,
    MechanismConfig,
    VerdictRules,
    decide,
    hint_probe_set,
    hint_swap_pairs,
    patching_difference,
    probe_transfer,
)
from workbench.errors import WorkbenchError
from workbench.io import read_parquet
from workbench.models.tokenizer import CHARSET, build_char_tokenizer
from workbench.models.trainer import hooked_config
from workbench.models.zoo import ArchConfig

PROMPTS = ["12+34=", "5+6=", "70+8="]
TWO_LAYERS = ArchConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=64)
SMALL = MechanismConfig(n_probe=48, n_pairs=8)


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
    summary = diff_report(base, tuned, PROMPTS, tmp_path, mechanisms=False)
    assert summary["kl_mean"] > 0 and summary["layers"][0]["relative_diff"] > 0
    assert len(read_parquet(tmp_path / "prompts.parquet")) == 3 and (tmp_path / "weight_change.png").exists()
    assert "mechanisms" not in summary and (tmp_path / "report.html").exists()


def test_other_architectures_are_refused_saying_what_differs():
    with pytest.raises(WorkbenchError, match="different architectures") as e:
        weight_deltas(tiny_model(), tiny_model(arch=ArchConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=64)))
    assert "only in tuned: blocks.1." in str(e.value)
    with pytest.raises(WorkbenchError, match=r"shapes differ: .*\(32, 64\) vs \(32, 128\)"):
        check_compatible(tiny_model(), tiny_model(arch=ArchConfig(n_layers=1, d_model=32, n_heads=2, d_mlp=128,
                                                                  n_ctx=64)))


def test_other_tokenizers_are_refused_saying_what_differs(tmp_path):
    base = tiny_model()
    swapped = CHARSET[1] + CHARSET[0] + CHARSET[2:]  # same size, so same shapes: ids of '0' and '1' swapped
    tok = build_char_tokenizer(swapped, model_max_length=64)
    other = HookedTransformer(hooked_config(TINY_ARCH, len(tok)), tokenizer=tok).eval()
    with pytest.raises(WorkbenchError, match=r"different tokenizers \(2 tokens other ids \(e.g. '0', '1'\)\)"):
        diff_report(base, other, PROMPTS, tmp_path)
    assert not (tmp_path / "summary.json").exists()


def test_probe_set_labels_and_pairs():
    texts, labels, items = hint_probe_set(30, (2, 3), seed=1)
    assert [len(texts[p]) for p in POSITIONS] == [30, 30]
    for (p, h), end, ans, hl, ho in zip(items, texts["prompt_end"], texts["answer"], labels["hint_lead"],
                                        labels["hint_ones"]):
        assert h != p.total and len(str(h)) == len(str(p.total))
        assert end == f"hint:{h} {p.a}+{p.b}=" and ans.startswith(end) and ans.endswith(" ans ")
        assert (hl, ho) == (int(str(h)[0]), h % 10)
    clean, corrupt, good, bad = hint_swap_pairs(6, 3, seed=0)
    for c, x, g, b in zip(clean, corrupt, good, bad):
        assert len(c) == len(x) and c.split(" ", 1)[1] == x.split(" ", 1)[1] and c.endswith(" ans ")
        assert (g, b) == (c[5], x[5]) and g != b


def test_probe_transfer_onto_itself_equals_the_base_accuracy():
    base = tiny_model(arch=TWO_LAYERS)
    rows = probe_transfer(base, copy.deepcopy(base), n=60, digits=(2,))
    assert len(rows) == len(POSITIONS) * 4 * 2
    assert {(r["position"], r["variable"], r["layer"]) for r in rows} == {
        (p, v, layer) for p in POSITIONS for v in (*HINT_VARIABLES, "answer_lead", "answer_ones") for layer in (0, 1)}
    assert all(r["transfer_acc"] == r["base_acc"] == r["tuned_refit_acc"] for r in rows)
    assert all(0 <= r["chance"] <= 1 and r["n_test"] == 15 for r in rows)


def test_probe_transfer_between_two_models_has_every_cell():
    rows = probe_transfer(tiny_model(0), tiny_model(1), n=60, digits=(2,))
    assert len(rows) == len(POSITIONS) * 4 and all(0 <= r[k] <= 1 for r in rows
                                                   for k in ("base_acc", "transfer_acc", "tuned_refit_acc"))


def test_patching_difference_of_a_model_with_itself_has_correlation_and_ratios_one():
    base = tiny_model(arch=TWO_LAYERS)
    out = patching_difference(base, copy.deepcopy(base), n_pairs=8, cot_check=False)
    s = out["summary"]
    assert s["head_patch_correlation"] == pytest.approx(1) and s["head_attr_correlation"] == pytest.approx(1)
    assert s["effect_ratio"] == pytest.approx(1) and s["carry_ratio"] == pytest.approx(1)
    assert s["base_total_effect"] == s["tuned_total_effect"] != 0
    assert len(out["heads"]) == 4 and out["base"]["head_patch"].shape == (2, 2)
    assert len(out["resid"]) == 2 * 2 * len(out["tokens"])
    # Patching the answer position's stream before layer 0 (a plain ' ' embedding) changes nothing.
    assert s["resid_answer_position_patch_base"][0] == pytest.approx(0, abs=1e-5)


def test_patching_difference_of_two_models():
    out = patching_difference(tiny_model(0, TWO_LAYERS), tiny_model(1, TWO_LAYERS), n_pairs=8, top_heads=2)
    s = out["summary"]
    assert len(s["top_heads"]) == 2 and set(s["own_cot_match"]) == {"base", "tuned"}
    assert -1 <= s["head_patch_correlation"] <= 1 and s["carry_base"] > 0


NUMBERS = {"base_total_effect": 20.0, "tuned_total_effect": 0.5, "effect_ratio": 0.025, "carry_ratio": 0.9,
           "head_patch_correlation": 0.1, "base_margin": 0.8, "refit_margin": 0.7, "transfer_margin": 0.6,
           "refit_kept": 0.875, "transfer_kept": 0.75}


@pytest.mark.parametrize("change, verdict, representation", [
    ({}, "bypassed", "same directions"),
    ({"transfer_margin": 0.05, "transfer_kept": 0.06}, "bypassed", "re-encoded"),
    ({"refit_margin": 0.05, "refit_kept": 0.06, "transfer_margin": 0.0, "transfer_kept": 0.0, "carry_ratio": 0.1},
     "removed", "gone"),
    ({"refit_margin": 0.05, "refit_kept": 0.06, "transfer_margin": 0.0, "transfer_kept": 0.0}, "partial", "gone"),
    ({"carry_ratio": 0.2}, "partial", "same directions"),
    ({"refit_margin": 0.3, "refit_kept": 0.375, "transfer_margin": 0.2, "transfer_kept": 0.25}, "partial", "gone"),
    ({"tuned_total_effect": 15.0, "effect_ratio": 0.75}, "kept", "same directions"),
    ({"base_total_effect": 0.3, "effect_ratio": 1.6}, "no-mechanism", "same directions"),
    ({"base_total_effect": math.nan, "effect_ratio": math.nan}, "no-mechanism", "same directions"),
])
def test_verdict_rules_on_hand_built_numbers(change, verdict, representation):
    v = decide({**NUMBERS, **change})
    assert (v["verdict"], v["representation"]) == (verdict, representation)
    assert v["numbers"] == {**NUMBERS, **change} and len(v["evidence"]) >= 3
    assert any(f"{v['numbers']['carry_ratio']:.3f}" in e for e in v["evidence"])


def test_verdict_thresholds_are_the_rules_given():
    strict = VerdictRules(carried_ratio=0.95)
    assert decide(NUMBERS)["verdict"] == "bypassed" and decide(NUMBERS, strict)["verdict"] == "partial"


def _sae(tmp_path, model, hook="blocks.1.hook_resid_post"):
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=model.cfg.d_model, d_sae=16, k=4, metadata=SAEMetadata(hook_name=hook)))
    sae.save_model(tmp_path / "sae")
    return sae


def test_full_report_with_sae_and_dashboard_labels(tmp_path):
    from workbench.dashboards import build_dashboards
    from workbench.tasks.addition import sample_problems
    from workbench.tasks.formats import direct

    base, tuned = tiny_model(0, TWO_LAYERS), tiny_model(1, TWO_LAYERS)
    sae = _sae(tmp_path, base)
    problems = sample_problems(40, (2,), "train", 0)
    build_dashboards(base, sae, [direct(p).text for p in problems], problems, tmp_path / "sae" / "dashboard",
                     progress=False)
    out = tmp_path / "diff"
    summary = diff_report(base, tuned, PROMPTS, out, mechanism_config=SMALL, sae=tmp_path / "sae")
    mech = summary["mechanisms"]
    assert set(mech) == {"config", "probe_transfer", "patching", "sae", "verdict"}
    assert mech["verdict"]["verdict"] in {"bypassed", "removed", "partial", "kept", "no-mechanism"}
    s = mech["sae"]
    assert s["dashboard"] and s["d_sae"] == 16 and len(s["top_changed"]) == 16
    assert set(s["base"]) == set(s["tuned"]) and {"l0", "explained_variance", "ce_recovered"} <= set(s["base"])
    feats = read_parquet(out / "sae_features.parquet")
    assert len(feats) == 16 and all(r["delta"] == pytest.approx(r["density_tuned"] - r["density_base"]) for r in feats)
    assert any(r["label"] for r in feats)
    for name in ("probe_transfer", "patching_heads", "patching_resid", "sae_features", "weights"):
        assert f"{name}.parquet" in summary["files"] and (out / f"{name}.parquet").exists()
    page = (out / "report.html").read_text()
    assert page.count("window.PlotlyConfig") == 1 and page.count("plotly-graph-div") >= 8
    assert "Verdict" in page and mech["verdict"]["verdict"] in page
    import json

    assert json.loads((out / "summary.json").read_text())["mechanisms"]["verdict"] == mech["verdict"]


def test_sae_transfer_of_a_model_onto_itself_has_no_density_shift(tmp_path):
    from workbench.diff_mechanisms import sae_texts, sae_transfer

    base = tiny_model(0, TWO_LAYERS)
    _sae(tmp_path, base)
    out = sae_transfer(base, copy.deepcopy(base), tmp_path / "sae", sae_texts(12, (2,)))
    assert out["base"] == out["tuned"] and out["mean_abs_density_shift"] == 0 and not out["dashboard"]
    assert np.allclose([r["delta"] for r in out["features"]], 0)


def test_diff_command_with_mechanisms_and_sae(tmp_path, capsys):
    import json

    from workbench.cli import main
    from workbench.models.checkpoint import save_checkpoint

    base, tuned = tiny_model(0, TWO_LAYERS), tiny_model(1, TWO_LAYERS)
    save_checkpoint(base, tmp_path / "base")
    save_checkpoint(tuned, tmp_path / "tuned")
    _sae(tmp_path, base)
    argv = ["diff", str(tmp_path / "base"), str(tmp_path / "tuned"), "--n", "40", "--pairs", "6", "--digits", "2",
            "--out", str(tmp_path / "out")]
    assert main([*argv, "--sae", str(tmp_path / "sae")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"]["verdict"] in {"bypassed", "removed", "partial", "kept", "no-mechanism"}
    assert "sae_features.parquet" in out["files"] and "report.html" in out["files"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mechanisms"]["patching"]["n_pairs"] == 6 and summary["mechanisms"]["config"]["n_probe"] == 40
    assert main([*argv, "--sae", str(tmp_path / "sae"), "--no-mechanisms"]) == 2
    assert "--sae is part of the mechanism diff" in capsys.readouterr().err
    assert main([*argv, "--no-mechanisms"]) == 0 and "verdict" not in json.loads(capsys.readouterr().out)


def test_patching_works_on_a_frozen_model_and_leaves_no_gradients():
    base = tiny_model(arch=TWO_LAYERS)
    frozen = copy.deepcopy(base).requires_grad_(False)  # e.g. DPO's reference model
    a = patching_difference(base, frozen, n_pairs=6, cot_check=False)
    assert a["summary"]["head_attr_correlation"] == pytest.approx(1)
    assert torch.equal(a["base"]["head_attr"], a["tuned"]["head_attr"]) and torch.equal(a["base"]["resid"],
                                                                                          a["tuned"]["resid"])
    assert all(p.grad is None for p in base.parameters()) and not any(p.requires_grad for p in frozen.parameters())
