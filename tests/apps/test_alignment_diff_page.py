"""The Alignment-diff page: runs with its defaults, shows a saved diff's figures and one prompt through a base and
a tuned model, computes a light diff, and answers bad input with an error while the rest keeps running. The tuned
model is adder-hint with slightly perturbed (seeded) weights, saved as a checkpoint; the diff is computed on it."""

import copy
import json
import tempfile
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

EXPLORER = str(Path(__file__).resolve().parents[2] / "apps" / "explorer.py")
PAGE = "pages/alignment_diff.py"
HOW_TO = "workbench align --out runs/align"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """``tuned/``: adder-hint, every weight moved by 2% of its own spread; ``diff/``: their diff on 8 prompts."""
    from workbench.diff import diff_report
    from workbench.diff_mechanisms import MechanismConfig
    from workbench.models.checkpoint import save_checkpoint
    from workbench.models.loader import load_model
    from workbench.tasks.preferences import hint_preferences

    root = tmp_path_factory.mktemp("alignment_diff")
    base = load_model("adder-hint")
    tuned = copy.deepcopy(base)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tuned.parameters():
            if p.numel() > 1:
                p.add_(0.02 * p.std() * torch.randn(p.shape, generator=g))
    save_checkpoint(tuned, root / "tuned")
    prompts = [r["prompt"] for r in hint_preferences(8, split="test", seed=1)]
    cfg = MechanismConfig(n_probe=40, n_pairs=4, resid_sweep=True)
    diff_report(base, tuned, prompts, root / "diff", mechanisms=True, mechanism_config=cfg)
    return root


def _app() -> AppTest:
    at = AppTest.from_file(EXPLORER, default_timeout=180)
    at.run()
    at.switch_page(PAGE)
    at.run()
    return at


def _configured(made) -> AppTest:
    """The page with the perturbed checkpoint as the tuned model and the fixture's diff directory."""
    at = _app()
    at.text_input(key="diff_tuned_dir").set_value(str(made / "tuned")).run()
    at.text_input(key="diff_dir").set_value(str(made / "diff")).run()
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Alignment diff"


def _titles(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def _metrics(at: AppTest) -> dict:
    return {m.label: (m.value, m.delta) for m in at.metric}


def test_page_runs_with_defaults():
    at = _app()  # the study's directories may or may not exist here: either way no exception and no error
    _ok(at)
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="diff_base").value == "adder-hint"
    assert at.text_input(key="diff_tuned_dir").value == "runs/align/dpo/model"


def test_before_the_study_the_page_says_how_to_run_it(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a checkout where `workbench align` has not run
    at = _app()
    _ok(at)
    assert not at.error, [e.value for e in at.error]
    infos = [i.value for i in at.info]
    assert any("runs/align/dpo/model" in i and HOW_TO in i for i in infos), infos
    assert any("runs/align/diff" in i and HOW_TO in i for i in infos), infos


def test_shows_the_saved_diff_and_one_prompt_through_both(made):
    at = _configured(made)
    _ok(at)
    assert not at.error, [e.value for e in at.error]
    summary = json.loads((made / "diff" / "summary.json").read_text())
    verdict = summary["mechanisms"]["verdict"]
    assert at.subheader[0].value == f"Verdict: {verdict['verdict']} (representation: {verdict['representation']})"
    assert any(verdict["evidence"][0] in m.value for m in at.markdown)
    metrics = _metrics(at)
    assert metrics["Prompts"][0] == "8" and metrics["Mean KL (base || tuned)"][0] == f"{summary['kl_mean']:.3f}"

    titles = _titles(at)
    for expected in ("Weight change ||dW|| by layer and component", "Residual stream, tuned vs base, per layer",
                     "Per-prompt mean KL(base || tuned) of the next-token distributions",
                     "Probe transfer at the answer position (held-out accuracy)",
                     "base: P('7')", "tuned: P('7')"):
        assert expected in titles, titles
    assert sum(t.startswith(("base: head patching", "tuned: head patching")) for t in titles) == 4  # report + prompt
    assert len(titles) == 17

    # One prompt: adder-hint copies the hint; the perturbed copy still answers something; the hint moves both.
    assert metrics["Base answers"] == ("700", "the hint")
    assert metrics["Tuned answers"][0].isdigit()
    assert [c.value.split(" ans ")[0] for c in at.code] == ["hint:700 245+318= 5+8+0=13 4+1+1=06 2+3+0=05"] * 2
    assert float(metrics["Base: hint effect (logits)"][0]) > 5
    assert metrics["Tuned: hint effect (logits)"][1].endswith("x base")

    at.radio[1].set_value("the true sum's leading digit").run()
    _ok(at)
    assert {"base: P('5')", "tuned: P('5')"} <= set(_titles(at))
    at.text_input(key="diff_prompt").set_value("245+318=").run()  # no hint: answers and lens, no hint path
    _ok(at)
    assert _metrics(at)["Base answers"] == ("563", "the true sum")
    assert any("bare hinted prompt" in i.value for i in at.info)


def test_compute_the_diff_of_the_two_models(made, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the light diff's cache directory
    at = _configured(made)
    at.radio(key="diff_source").set_value("Compute a light diff of the two models").run()
    assert not at.subheader or not at.subheader[0].value.startswith("Verdict")
    at.button[0].click().run()
    _ok(at)
    assert not at.error, [e.value for e in at.error]
    assert at.subheader[0].value.startswith("Verdict: ")
    assert _metrics(at)["Prompts"][0] == "64"
    assert any(c.value.startswith(f"Written to {tmp_path}") for c in at.caption)
    at.text_input(key="diff_prompt").set_value("hint:97 36+59=").run()  # another interaction keeps the report
    assert at.subheader[0].value.startswith("Verdict: ") and _metrics(at)["Base answers"] == ("97", "the hint")


@pytest.mark.parametrize("key, bad, expected", [
    ("diff_tuned_dir", "no/such/dir", HOW_TO),
    ("diff_dir", "no/such/diff", HOW_TO),
    ("diff_dir", "TUNED", "has no summary.json"),  # a directory, but a model's, not a diff's
    ("diff_prompt", "hint:7 2+2=é", "not in the vocabulary"),
    ("diff_tuned", "adder-direct", "different architectures"),  # 3 layers against adder-hint's 2
])
def test_bad_input_shows_an_error_and_the_page_keeps_running(made, key, bad, expected):
    at = _configured(made)
    bad = str(made / "tuned") if bad == "TUNED" else bad
    widget = at.selectbox(key=key) if key == "diff_tuned" else at.text_input(key=key)
    widget.set_value(bad).run()
    _ok(at)
    assert any(expected in e.value for e in at.error), [e.value for e in at.error]
    if key == "diff_prompt":  # the saved report still shows
        assert at.subheader[0].value.startswith("Verdict: ")
    if key.startswith("diff_tuned"):  # no pair: the saved report still shows, the prompt section says why not
        assert at.subheader[0].value.startswith("Verdict: ")
        assert any("Pick a base and a tuned model" in i.value for i in at.info)
