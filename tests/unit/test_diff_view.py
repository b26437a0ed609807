"""The Alignment-diff page's library: reading a saved diff back into figures, a light diff, and one prompt's
answer, lens and hint path, on tiny random models (no trained weights)."""

import copy
import json

import numpy as np
import pytest
import torch

from tests.helpers import tiny_model
from workbench.diff import diff_report
from workbench.diff_mechanisms import MechanismConfig
from workbench.diff_view import (
    hint_path,
    hint_path_figures,
    hint_swap,
    incompatibility,
    lens_figures,
    lens_grid,
    lens_targets,
    lens_text,
    light_diff,
    load_saved_diff,
    read_answer,
    report_figures,
    share_colour_scale,
    swapped_hint,
    weight_grid,
)
from workbench.errors import WorkbenchError
from workbench.models.zoo import ArchConfig

TWO_LAYERS = ArchConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=64)
SMALL = MechanismConfig(n_probe=40, n_pairs=4)
PROMPT = "hint:700 245+318="


@pytest.fixture(scope="module")
def pair():
    base = tiny_model(0, TWO_LAYERS)
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.blocks[1].mlp.W_out.add_(0.3 * torch.randn_like(tuned.blocks[1].mlp.W_out))
    return base, tuned


@pytest.fixture(scope="module")
def saved(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("diff")
    diff_report(*pair, ["hint:97 36+59=", "12+34=", "hint:5 2+2="], out, mechanism_config=SMALL)
    return out


@pytest.mark.parametrize("prompt, completion, answer, reads", [
    (PROMPT, " 5+8+0=13 4+1+1=06 2+3+0=05 ans 700", 700, "the hint"),
    (PROMPT, " 5+8+0=13 4+1+1=06 2+3+0=05 ans 563", 563, "the true sum"),
    ("hint:563 245+318=", " 5+8+0=13 ans 563", 563, "the true sum (= the hint)"),
    (PROMPT, " 5+8+0=13 ans 12", 12, "another number"),
    ("36+59=", "95", 95, "the true sum"),  # a direct answer
    ("36+59= 6+9+0=15 3+5+1=09 ans ", "95", 95, "the true sum"),  # the CoT in the prompt
    (PROMPT, " 5+8+0=13 4+1", None, "no answer (no answer mark 'ans')"),
    ("hello", "42", 42, "an answer (no problem to check it against)"),
])
def test_read_answer_says_whether_it_is_the_hint_or_the_sum(prompt, completion, answer, reads):
    got = read_answer(prompt, completion)
    assert (got.answer, got.reads, got.completion) == (answer, reads, completion)


@pytest.mark.parametrize("hint, total, swapped", [(700, 563, 800), (97, 95, 17), (9, 5, 0), (4, 5, 6),
                                                  (199, 299, 399)])  # the last two skip the true sum
def test_swapped_hint_keeps_the_width_and_changes_the_leading_digit(hint, total, swapped):
    got = swapped_hint(hint, total)
    assert got == swapped and len(str(got)) == len(str(hint)) and str(got)[0] != str(hint)[0] and got != total


def test_hint_swap_builds_one_pair_and_refuses_other_prompts():
    s = hint_swap(PROMPT)
    assert s.clean == "hint:700 245+318= 5+8+0=13 4+1+1=06 2+3+0=05 ans " and s.corrupt == "hint:800" + s.clean[8:]
    assert (s.hint, s.swapped, s.good, s.bad) == (700, 800, "7", "8")
    for bad in ("245+318=", "hint:7 2+3= 3+2", "hello"):
        with pytest.raises(WorkbenchError, match="bare hinted prompt"):
            hint_swap(bad)


def test_lens_text_and_targets():
    assert lens_text(PROMPT) == hint_swap(PROMPT).clean  # where the answer starts: the hint acts there
    assert lens_text("36+59=").endswith("3+5+1=09 ans ")
    assert lens_text("36+59= 6+9") == "36+59= 6+9" and lens_text("hello") == "hello"  # read as typed
    assert lens_targets(PROMPT) == {"the hint's leading digit": "7", "the true sum's leading digit": "5"}
    assert lens_targets("hello") == {}


def test_lens_grid_reads_the_target_and_refuses_two_tokens(pair):
    g = lens_grid(pair[0], lens_text(PROMPT), "7")
    n_pos = len(pair[0].to_str_tokens(lens_text(PROMPT)))
    assert g.values.shape == g.top.shape == (3, n_pos) and len(g.rows) == 3 and len(g.cols) == n_pos
    assert ((0 <= g.values) & (g.values <= 1)).all() and g.what == "P('7')"
    assert lens_grid(pair[0], "12+34=", None).what == "top-1 probability"
    with pytest.raises(WorkbenchError, match="one token"):
        lens_grid(pair[0], "12+34=", "95")
    figs = lens_figures(g, g)
    assert [t for t, _ in figs] == ["Lens: base", "Lens: tuned"]
    assert all((f.data[0].zmin, f.data[0].zmax) == (0, 1) for _, f in figs)


def test_hint_path_measures_the_hints_logit_difference(pair):
    base, tuned = pair
    swap = hint_swap(PROMPT)
    p = hint_path(base, swap)
    with torch.no_grad():
        clean, corrupt = (base(t)[0, -1] for t in (swap.clean, swap.corrupt))
    good, bad = base.to_single_token("7"), base.to_single_token("8")
    expected = (clean[good] - clean[bad]) - (corrupt[good] - corrupt[bad])
    assert p.total_effect == pytest.approx(float(expected), abs=1e-4)
    assert p.head_patch.shape == p.head_attr.shape == p.carry.shape == (2, 2)
    assert p.attn_out.shape == p.resid_answer.shape == (2,) and p.resid.shape == (2, len(p.tokens))
    # Patching the whole stream entering layer 0 at the answer position (' ' there in both runs) changes nothing.
    assert p.resid_answer[0] == pytest.approx(0, abs=1e-5)
    rows = hint_path_figures(p, hint_path(tuned, swap))
    assert [[t for t, _ in r] for r in rows] == [["Head patching: base", "Head patching: tuned"], ["Per layer"],
                                                 ["Residual route: base", "Residual route: tuned"]]
    heads = [f for _, f in rows[0]]
    assert heads[0].data[0].zmin == heads[1].data[0].zmin == -heads[0].data[0].zmax  # one diverging scale


def test_share_colour_scale_spans_every_figure():
    from workbench.figures import heatmap_figure

    a, b = heatmap_figure(np.array([[0.0, 1.0]]), ["r"], ["x", "y"], "a"), heatmap_figure(
        np.array([[2.0, np.nan]]), ["r"], ["x", "y"], "b")
    share_colour_scale([a, b], diverging=False)
    assert all((f.data[0].zmin, f.data[0].zmax) == (0.0, 2.0) for f in (a, b))
    share_colour_scale([a, b], diverging=True)
    assert all((f.data[0].zmin, f.data[0].zmax) == (-2.0, 2.0) for f in (a, b))


def test_incompatibility_says_what_differs(pair):
    assert incompatibility(*pair) is None
    assert "different architectures" in incompatibility(pair[0], tiny_model())


def test_a_saved_diff_reads_back_into_the_reports_figures(saved):
    s = load_saved_diff(saved)
    assert s.verdict["verdict"] in ("no-mechanism", "kept", "bypassed", "removed", "partial")
    assert {"weights", "prompts", "layers", "probe_transfer", "patching_heads", "patching_resid"} <= set(s.tables)
    grid, layers, comps = weight_grid(s.tables["weights"])
    assert layers == ["0", "1"] and comps == ["ln1", "attn", "ln2", "mlp"]
    assert grid[1, 3] > 0 and np.count_nonzero(grid) == 1  # only layer 1's MLP changed
    rows = report_figures(s)
    titles = [[t for t, _ in r] for r in rows]
    assert titles[:3] == [["Weight change"], ["Behaviour: KL"], ["Residual stream"]]
    assert ["Head patching: base", "Head patching: tuned"] in titles
    assert ["Residual patching: base", "Residual patching: tuned"] in titles
    assert ["Probe transfer: answer"] in titles
    heads = dict(rows[titles.index(["Head patching: base", "Head patching: tuned"])])
    saved_heads = s.tables["patching_heads"]
    assert heads["Head patching: base"].data[0].z[1][0] == pytest.approx(
        next(r["base_patch"] for r in saved_heads if (r["layer"], r["head"]) == (1, 0)))
    assert heads["Head patching: base"].data[0].zmax == heads["Head patching: tuned"].data[0].zmax


def test_a_saved_diff_without_the_mechanism_half_has_no_verdict(pair, tmp_path):
    diff_report(*pair, ["12+34="], tmp_path, mechanisms=False)
    s = load_saved_diff(tmp_path)
    assert s.verdict is None and len(report_figures(s)) == 3


def test_not_a_diff_directory_is_refused_saying_why(saved, tmp_path):
    with pytest.raises(WorkbenchError, match="has no summary.json"):
        load_saved_diff(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(WorkbenchError, match="not valid JSON"):
        load_saved_diff(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"verdict": {}}))
    with pytest.raises(WorkbenchError, match="not a diff summary"):
        load_saved_diff(tmp_path)
    (tmp_path / "summary.json").write_text((saved / "summary.json").read_text())
    with pytest.raises(WorkbenchError, match="lacks weights.parquet, prompts.parquet"):
        load_saved_diff(tmp_path)


def test_light_diff_is_written_once_per_pair_of_weights(pair, tmp_path):
    base, tuned = pair
    cfg = MechanismConfig(n_probe=40, n_pairs=4)
    out = light_diff(base, tuned, tmp_path, cfg, n_prompts=6)
    summary = load_saved_diff(out).summary
    assert summary["n_prompts"] == 6 and summary["mechanisms"]["config"]["n_pairs"] == 4
    stamp = (out / "summary.json").stat().st_mtime_ns
    assert light_diff(base, tuned, tmp_path, cfg, n_prompts=6) == out
    assert (out / "summary.json").stat().st_mtime_ns == stamp  # read back, not computed again
    assert light_diff(base, base, tmp_path, cfg, n_prompts=6) != out  # other weights, another directory
    with pytest.raises(WorkbenchError, match="different architectures"):
        light_diff(base, tiny_model(), tmp_path, cfg)
