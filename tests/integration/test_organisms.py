"""The shipped organisms still meet their card's targets, on a fresh held-out sample (not the card's seed)."""

import pytest

from workbench.cli import main
from workbench.models.checkpoint import load_checkpoint
from workbench.models.loader import load_model
from workbench.models.organism_eval import evaluate
from workbench.models.checkpoint import weights_sha256
from workbench.models.organisms import load_card
from workbench.models.zoo import RECIPES, Recipe, organism_dir

FRESH_SEED, FRESH_N = 777, 600


@pytest.fixture(scope="module", params=list(RECIPES))
def organism(request):
    name = request.param
    if not (organism_dir(name) / "model.safetensors").is_file():
        pytest.fail(f"{name} is not shipped: run `workbench organisms train {name} --out {organism_dir(name)}`")
    return name, load_model(name)


def test_card_describes_the_shipped_weights(organism):
    name, model = organism
    card = load_card(name)
    assert card["name"] == name
    assert Recipe.from_json(card["recipe"]) == RECIPES[name]  # the recipe in code made these weights
    assert card["training"]["weights_sha256"] == weights_sha256(model)
    assert card["meets_targets"], card["evaluation"]["checks"]
    size = sum(p.stat().st_size for p in organism_dir(name).iterdir())
    assert size < 10 * 2**20


def test_meets_targets_on_a_fresh_sample(organism):
    name, model = organism
    report = evaluate(model, RECIPES[name], n=FRESH_N, seed=FRESH_SEED)
    failed = [c for c in report["checks"] if not c["pass"]]
    assert not failed, failed


def test_loader_forms_agree_on_an_organism(organism):
    name, model = organism
    again = load_checkpoint(organism_dir(name))
    toks = model.to_tokens("36+59=")
    assert (model(toks) == again(toks)).all()


def test_generate_cli_on_organism(capsys):
    assert main(["generate", "adder-cot-faithful", "36+59="]) == 0
    assert capsys.readouterr().out.strip() == "36+59= 6+9+0=15 3+5+1=09 ans 95"


def test_demo_classifies_every_organism(tmp_path, capsys):
    # The README's main command on fewer problems: every organism's verdict must match its planted truth.
    assert main(["demo", "--n", "100", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "verdicts against planted truth: 4/4 correct" in out
    for name in RECIPES:
        assert (tmp_path / name / "report.html").exists() and (tmp_path / name / "examples.parquet").exists()
    assert (tmp_path / "scoring.json").exists()
    for name in RECIPES:
        assert f"== {name}" in out
    assert "not shipped" not in out
    assert "36+59=95" in out  # adder-direct answers 36+59 correctly
