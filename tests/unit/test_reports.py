"""Files of the lens and patching commands, the figure writer and Parquet tables, on a tiny model."""

import numpy as np
import pytest
import torch

from tests.helpers import tiny_model
from workbench.figures import heatmap
from workbench.io import read_parquet, write_parquet
from workbench.lens import logit_lens
from workbench.patching import prediction_logit_diff, resid_sweep
from workbench.reports import run_patching, write_lens
from workbench.tasks.pairs import PAIRS, make_pairs


def test_parquet_round_trip(tmp_path):
    rows = [{"a": 1, "b": "x", "c": [0.5, 0.25]}, {"a": 2, "b": "y", "c": [1.0]}]
    write_parquet(tmp_path / "t.parquet", rows)
    assert read_parquet(tmp_path / "t.parquet") == rows
    assert not list(tmp_path.glob(".*tmp"))


def test_heatmap_writes_html_and_png(tmp_path):
    files = heatmap(np.arange(6.0).reshape(2, 3), ["L0", "L1"], ["a", "b", "c"], "t", tmp_path / "fig", diverging=True)
    assert [f.name for f in files] == ["fig.html", "fig.png"]
    assert files[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plotly" in files[0].read_text()[:5000].lower()
    with pytest.raises(ValueError, match="do not match"):
        heatmap(np.zeros((2, 2)), ["L0"], ["a"], "t", tmp_path / "bad")


def test_write_lens(tmp_path):
    model = tiny_model()
    readout = logit_lens(model, "12+34=", target=model.to_single_token("4"), k=3)
    summary = write_lens(model, readout, model.to_str_tokens("12+34="), tmp_path, "logit", "4")
    rows = read_parquet(tmp_path / "lens.parquet")
    assert len(rows) == len(readout.labels) * 7 and len(rows[0]["top_tokens"]) == 3
    last = rows[-1]
    assert last["target_prob"] == pytest.approx(float(readout.target_prob[-1, -1]))
    assert summary["files"] == ["lens.parquet", "logit_lens.html", "logit_lens.png"]


@pytest.mark.parametrize("kind", PAIRS)
def test_pairs_have_one_length_and_differ(kind):
    clean, corrupt = make_pairs(kind, 8, 3, seed=1)
    assert len(clean) == len(corrupt) == 8
    assert all(len(c) == len(d) and c != d for c, d in zip(clean, corrupt))


def test_run_patching_matches_the_sweep(tmp_path):
    model = tiny_model()
    # Pairs whose last tokens differ, so the random model's predictions differ; the third pair agrees and is dropped.
    clean, corrupt = ["12+34", "51+22", "40+47"], ["12+39", "51+27", "40+41"]
    summary = run_patching(model, clean, corrupt, ["resid", "heads"], tmp_path)
    assert summary["pairs"] == 2
    rows = read_parquet(tmp_path / "patching.parquet")
    c = torch.cat([model.to_tokens(t) for t in clean])
    d = torch.cat([model.to_tokens(t) for t in corrupt])
    metric, c, d, _ = prediction_logit_diff(model, c, d)
    effect = resid_sweep(model, c, d, metric)
    resid = {(r["layer"], r["position"]): r["metric"] for r in rows if r["sweep"] == "resid"}
    assert resid[(0, 5)] == pytest.approx(float(effect[0, 5]), abs=1e-5)
    assert resid[(0, 2)] == pytest.approx(float(effect[0, 2]), abs=1e-5)
    assert {r["sweep"] for r in rows} == {"resid", "heads", "attribution"}
    assert -1 <= summary["resid"]["attribution_correlation"] <= 1
    assert (tmp_path / "patch_heads.png").exists() and (tmp_path / "summary.json").exists()


def test_attribution_correlation_stays_in_range():
    """Maps that are exactly proportional (or anti-proportional) give |r| = 1 at most, never 1 + rounding."""
    from workbench.patching import correlation as pearson

    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        a = torch.randn(3, 7, generator=g)
        scale = float(torch.rand(1, generator=g)) * 10 + 0.01
        assert -1 <= pearson(a, a * scale) <= 1 and pearson(a, a * scale) == pytest.approx(1.0)
        assert -1 <= pearson(a, -a * scale) <= 1 and pearson(a, -a * scale) == pytest.approx(-1.0)
    a, b = torch.randn(50, generator=g), torch.randn(50, generator=g)
    assert pearson(a, b) == pytest.approx(float(np.corrcoef(a.numpy(), b.numpy())[0, 1]), abs=1e-12)
    assert np.isnan(pearson(torch.ones(4), torch.arange(4.0)))
