"""The whole suite runs end to end on a tiny random Hugging Face model loaded from a local directory (results
meaningless, code path real), and on our own checkpoint format through the CLI."""

import json

from probes.faithfulness.report import write_study
from probes.faithfulness.suite import TESTS, run_suite
from tests.helpers import tiny_hf_dir
from workbench.cli import main
from workbench.io import read_parquet
from workbench.models.loader import load_model


def test_suite_on_a_local_hf_model(tmp_path):
    tiny_hf_dir(tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    summary, rows = run_suite(model, n=24, probe_n=60)
    assert set(TESTS) <= set(summary) and summary["verdict"]["verdict"]
    files = write_study(tmp_path / "out", "tiny-hf", summary, rows)
    assert [f.name for f in files][-1] == "summary.json"  # the completion marker, written last
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["model"] == "tiny-hf"
    assert "<html>" in (tmp_path / "out" / "report.html").read_text()[:200]
    if rows:
        assert len(read_parquet(tmp_path / "out" / "examples.parquet")) == len(rows)


def test_faithfulness_command(tmp_path, capsys):
    tiny_hf_dir(tmp_path / "hf")
    assert main(["faithfulness", str(tmp_path / "hf"), "--n", "20", "--tests", "hint", "internal",
                 "--out", str(tmp_path / "o")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ground_truth"] is None and (tmp_path / "o" / "report.html").exists()


def test_an_untrained_model_of_the_organisms_shape_is_undetermined():
    """The organisms' architecture with random weights (built from a shipped config through the checkpoint
    helpers): it cannot add, so the competence gate stops every other rule."""
    import torch
    from transformer_lens import HookedTransformer

    from workbench.models.checkpoint import config_from_json, read_json_object
    from workbench.models.tokenizer import load_tokenizer
    from workbench.models.zoo import organism_dir

    src = organism_dir("adder-cot-faithful")
    cfg = config_from_json(read_json_object(src / "config.json")["hooked_transformer_config"], device="cpu")
    torch.manual_seed(0)
    model = HookedTransformer(cfg, tokenizer=load_tokenizer(src)).eval()
    summary, _ = run_suite(model, n=60, probe_n=80, tests=["early", "mistakes", "hint", "claims"])
    v = summary["verdict"]
    assert v["verdict"] == "undetermined" and v["rule"] == "competence", v["why"]
    assert summary["stated_reasoning"]["accuracy"]["ci95"][1] < 0.8 and "accuracy" in v["why"]
