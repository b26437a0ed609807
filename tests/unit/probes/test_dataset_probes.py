"""Probes of a user's own labelled prompts (``workbench probe --dataset``): checked against the built-in study on
the same prompts, against labels the prompt cannot hold, and for what a bad dataset is told."""

import json

import numpy as np
import pytest

from probes.dataset import dataset_variables, run_dataset_probe_study
from probes.linear import ProbeConfig
from probes.study import probe_texts, run_probe_study
from workbench.cli import main
from workbench.errors import WorkbenchError
from workbench.models.loader import load_model


@pytest.fixture(scope="module")
def model():
    return load_model("adder-direct")


def _rows(problems, texts, rng):
    return [{"prompt": t, "labels": {"hundreds_a": p.columns[2].a, "carry0": bool(p.columns[0].carry_out),
                                     "coin": bool(rng.integers(2)), "total": p.total}}
            for p, t in zip(problems, texts)]


def test_scores_equal_the_built_in_study_and_a_label_the_prompt_does_not_hold_stays_at_chance(model, tmp_path):
    problems, texts = probe_texts(3, 300, "prompt", seed=0)
    rows = _rows(problems, texts, np.random.default_rng(0))
    cfg = ProbeConfig(seed=0)
    summary = run_dataset_probe_study(model, rows, tmp_path / "d", regress=["total"], cfg=cfg)
    run_probe_study(model, tmp_path / "b", 3, 300, "prompt", ["a2", "carry0", "answer"], cfg=cfg)
    import pandas as pd

    key = ["variable", "layer", "position"]
    ours = pd.read_parquet(tmp_path / "d" / "probes.parquet").set_index(key).sort_index()
    ref = pd.read_parquet(tmp_path / "b" / "probes.parquet").set_index(key).sort_index()
    # Same prompts, split and probes: the scores are the built-in study's (only the controls differ).
    for mine, theirs in [("hundreds_a", "a2"), ("carry0", "carry0"), ("total", "answer")]:
        np.testing.assert_allclose(ours.loc[mine, "score"].to_numpy(), ref.loc[theirs, "score"].to_numpy(),
                                   atol=1e-6)
    a = summary["best_sites"]["hundreds_a"]
    assert a["score"] > 0.95 and a["selectivity"] > 0.5
    assert ours.loc[("hundreds_a", "0_pre", 1), "score"] > 0.95  # at its own token, as it enters the first block
    coin = ours.loc["coin"]
    assert coin["selectivity"].abs().max() < 0.15 and coin["score"].max() < 0.65  # a fair coin: nothing to read
    assert summary["best_sites"]["total"]["metric"] == "r2" and summary["positions"].startswith("every position")


def test_prompts_of_several_lengths_are_aligned_at_their_end(model, tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(240):
        a, b = int(rng.integers(1, 1000)), int(rng.integers(0, 10))
        rows.append({"prompt": f"{a}+{b}=", "labels": {"b": b}})  # b is always the second-to-last token
    summary = run_dataset_probe_study(model, rows, tmp_path, cfg=ProbeConfig(seed=0))
    best = summary["best_sites"]["b"]
    assert best["token"] == "[-2]" and best["position_from_end"] == -2 and best["score"] > 0.95
    assert "counted from each prompt's end" in summary["positions"]


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "1+2="}] * 30, "no 'labels' object"),
    ([{"prompt": "1+2=", "labels": {"x": 1}}] * 30, "one value on every line"),
    ([{"prompt": "1+2=", "labels": {"x": i / 3}} for i in range(30)], "--regress x"),
    ([{"prompt": "1+2=", "labels": {"x": i % 2}} for i in range(29)] + [{"prompt": "1+2=", "labels": {}}],
     "no 'labels' object"),
    ([{"prompt": "1+2=", "labels": {"x": i % 2, "y": 1}} for i in range(29)] + [{"prompt": "1+2=", "labels": {"x": 0}}],
     "'y' is missing on rows [30]"),
])
def test_bad_labels_say_what_a_line_must_hold(rows, message):
    with pytest.raises(WorkbenchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        dataset_variables(rows)


def test_regressed_values_must_be_numbers():
    rows = [{"prompt": "1+2=", "labels": {"x": "a" if i else 1.5}} for i in range(30)]
    with pytest.raises(WorkbenchError, match="no finite number"):
        dataset_variables(rows, regress=["x"])
    with pytest.raises(WorkbenchError, match="not among the variables"):
        dataset_variables(rows, regress=["z"])


def test_cli_probe_and_patch_read_a_users_file(tmp_path, capsys):
    problems, texts = probe_texts(2, 60, "prompt", seed=3)
    data = tmp_path / "probe.jsonl"
    data.write_text("".join(json.dumps({"prompt": t, "labels": {"tens_a": p.columns[1].a}}) + "\n"
                            for p, t in zip(problems, texts)))
    assert main(["probe", "adder-direct", "--dataset", str(data), "--out", str(tmp_path / "p")]) == 0
    assert json.loads((tmp_path / "p" / "summary.json").read_text())["n_prompts"] == 60
    capsys.readouterr()
    code = main(["probe", "adder-direct", "--dataset", str(data), "--causal", "tens_a", "--out", str(tmp_path / "q")])
    assert code == 2 and "probes only" in capsys.readouterr().err
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"clean": c, "corrupt": k}) + "\n"
                             for c, k in [("12+34=", "52+34="), ("47+21=", "17+21="), ("30+55=", "80+55=")]))
    assert main(["patch", "adder-direct", "--dataset", str(pairs), "--sweeps", "resid", "--out",
                 str(tmp_path / "patch")]) == 0
    assert json.loads((tmp_path / "patch" / "summary.json").read_text())["pairs"] == 3
