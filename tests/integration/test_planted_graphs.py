"""Attribution graphs and transcoder features of the planted pair, scored against where the mechanism was planted.

Ground truth by construction: adder-direct-parallel holds the sum's ones digit in the residual stream after
block 1 at '=' (the site), so the graph of its answer's ones digit must draw on that site's writer (MLP 1 at '=');
adder-direct-carry holds only the carries there, which the ones digit does not depend on.
"""

import pytest

from probes.planted_graphs import feature_tracking, graph_localisation
from workbench.models.loader import load_model
from workbench.models.zoo import RECIPES, organism_dir
from workbench.saes import load_transcoders


@pytest.fixture(scope="module")
def planted():
    out = {}
    for name in ("adder-direct-carry", "adder-direct-parallel"):
        model = load_model(name)
        out[name] = (model, load_transcoders(organism_dir(name) / "transcoders", model), RECIPES[name])
    return out


def test_the_ones_digit_is_drawn_from_the_site_only_where_it_was_planted_there(planted):
    ones = {name: graph_localisation(*args, n=6)["columns"]["ones"] for name, args in planted.items()}
    par, car = ones["adder-direct-parallel"], ones["adder-direct-carry"]
    assert par["n_graphs"] >= 5 and car["n_graphs"] >= 5  # the models' own correct digits
    assert par["site_writer_share"] > 0.08 and par["localisation_auroc"] >= 0.9
    assert car["site_writer_share"] < 0.03 and par["site_writer_share"] > 5 * car["site_writer_share"]
    assert (car["best"]["mlp_layer"], car["best"]["position"]) != (1, 8)  # the writer is not where it draws most


def test_features_at_the_site_track_the_planted_variables_above_the_noise_floor(planted):
    for name, args in planted.items():
        result = feature_tracking(*args, n=300)
        for var in (al.variable for al in args[2].iit.alignments):
            v = result["variables"][var]
            assert v["planted"] and v["at_site_writer"]["score"] > 3 * v["shuffled_floor"]


def test_circuit_study_planted_writes_the_scores_beside_the_study(tmp_path, capsys):
    import json

    from workbench.cli import main

    out = tmp_path / "cs"
    assert main(["circuit-study", "adder-direct-parallel", "--n", "1", "--digits", "3", "--planted",
                 "--planted-n", "100", "--out", str(out)]) == 0
    saved = json.loads((out / "planted.json").read_text())
    assert saved["graphs"]["site"] == {"mlp_layer": 1, "position": 8, "token": "="}
    assert {"magnitude", "ones", "carry0", "carry1"} == set(saved["features"]["variables"])
    study = json.loads((out / "study.json").read_text())
    assert study["cot"] is False  # a direct answerer: its graphs start at the prompt, not after a CoT
    assert "attribution graphs against the site's writer" in capsys.readouterr().out
