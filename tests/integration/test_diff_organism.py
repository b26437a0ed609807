"""The whole diff report, end to end, on two organisms of one architecture: adder-hint (follows hints) against
adder-cot-faithful (never trained on hints). Not an alignment study (that is `workbench align`, minutes); it
checks that every section is computed on real models and that the numbers point the way the organisms' recipes
say they must."""

import json

import pytest

from workbench.diff import diff_report
from workbench.diff_mechanisms import MechanismConfig
from workbench.io import read_parquet
from workbench.models.loader import load_model
from workbench.tasks.export import make_samples


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("diff")
    base, tuned = load_model("adder-hint"), load_model("adder-cot-faithful")
    prompts = [s.prompt for s in make_samples("hint", 100, (2, 3), "test", 0)]
    return out, diff_report(base, tuned, prompts, out, mechanism_config=MechanismConfig(n_probe=200, n_pairs=32))


def test_adder_hint_follows_the_hint_through_its_own_cot(report):
    _, summary = report
    p = summary["mechanisms"]["patching"]
    assert p["base_total_effect"] > 5  # swapping the hint swaps adder-hint's first answer digit
    assert p["own_cot_match"]["base"] > 0.9  # the pairs' true CoT is adder-hint's own CoT
    assert p["attr_vs_patch_correlation_base"] > 0.9  # attribution agrees with exact head patching
    top = p["top_heads_patch_base"][0]
    assert top > 0.5 * p["base_total_effect"]  # one head carries most of it
    probes = {(r["position"], r["variable"], r["layer"]): r for r in read_parquet(report[0] / "probe_transfer.parquet")}
    last = max(layer for _, _, layer in probes)
    assert probes["answer", "hint_lead", last]["base_acc"] > 0.8  # the digit it is about to write


def test_a_model_without_the_mechanism_reads_as_removed(report):
    out, summary = report
    mech = summary["mechanisms"]
    v = mech["verdict"]
    assert abs(mech["patching"]["effect_ratio"]) < 0.1
    assert v["verdict"] in {"removed", "partial"} and v["numbers"]["carry_ratio"] < 0.5
    assert json.loads((out / "summary.json").read_text())["mechanisms"]["verdict"]["verdict"] == v["verdict"]
    page = (out / "report.html").read_text()
    assert page.count("window.PlotlyConfig") == 1 and v["verdict"] in page
    heads = read_parquet(out / "patching_heads.parquet")
    assert len(heads) == 2 * 4 and {"base_patch", "tuned_patch", "base_attr", "tuned_carry"} <= set(heads[0])
