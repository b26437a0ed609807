"""Every page of the explorer runs with its defaults and shows an error (and keeps running) on bad input."""

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

EXPLORER = str(Path(__file__).resolve().parents[2] / "apps" / "explorer.py")

PAGES = ["pages/stated_vs_internal.py", "pages/prompt_lab.py", "pages/lens.py", "pages/attention.py",
         "pages/probes.py", "pages/patching.py", "pages/faithfulness.py", "pages/features.py", "pages/circuit.py"]


def _app(page: str, **link) -> AppTest:
    """The explorer opened on its default page (or a link's query string), then switched to ``page``."""
    at = AppTest.from_file(EXPLORER, default_timeout=180)
    for name, value in link.items():
        at.query_params[name] = value
    at.run()
    if page != PAGES[0]:
        at.switch_page(page)
        at.run()
    return at


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_with_defaults(page):
    at = _app(page)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value


def test_prompt_lab_shows_the_organisms_reasoning():
    at = _app("pages/prompt_lab.py", model="adder-cot-faithful", prompt="36+59=")
    assert at.code[0].value == "36+59= 6+9+0=15 3+5+1=09 ans 95"
    assert len(at.dataframe) == 1


@pytest.mark.parametrize("page, field, bad, expected", [
    ("pages/prompt_lab.py", 0, "36*59=", "'*' at position 2"),
    ("pages/lens.py", 0, "36*59=", "not in the vocabulary"),
    ("pages/lens.py", 1, "95", "one token"),
    ("pages/attention.py", 0, "hello!", "not in the vocabulary"),
    ("pages/patching.py", 1, "36+59= 6+9+0=16 3+5+1=09 ans 95", "one token length"),
])
def test_bad_input_shows_an_error_and_the_page_keeps_running(page, field, bad, expected):
    at = _app(page)
    at.text_input[field].set_value(bad).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(expected in e.value for e in at.error), [e.value for e in at.error]
    assert at.title[0].value  # still rendered


def test_faithfulness_page_opens_a_missing_study_with_an_error():
    at = _app("pages/faithfulness.py")
    at.radio[0].set_value("Open a saved study").run()
    at.text_input[0].set_value("no/such/summary.json").run()
    assert any("no file" in e.value for e in at.error)


def test_faithfulness_page_runs_the_suite():
    at = _app("pages/faithfulness.py", model="adder-cot-faithful")
    at.number_input[0].set_value(40).run()
    at.multiselect[0].set_value(["early", "mistakes", "hint"]).run()
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Verdict: faithful" in at.subheader[0].value


# --- Features and Circuit: random (seeded) SAE and transcoders saved for adder-direct -----------------------------


def _widget(widgets, label: str):
    """The widget whose label starts with ``label``."""
    found = [w for w in widgets if w.label.startswith(label)]
    assert found, [w.label for w in widgets]
    return found[0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``sae/``: a TopK SAE on blocks.0.hook_resid_post; ``tc/layer_L``: one transcoder per layer, layer_0 with a
    dashboard (so the circuit's nodes get labels); all stamped with adder-direct's weights."""
    from sae_lens import TopKSAE, TopKSAEConfig, Transcoder, TranscoderConfig
    from sae_lens.saes.sae import SAEMetadata

    from workbench.cli_sae import labelled_texts
    from workbench.dashboards import build_dashboards
    from workbench.models.checkpoint import weights_sha256
    from workbench.models.loader import load_model

    root = tmp_path_factory.mktemp("explorer_saes")
    model = load_model("adder-direct")
    sha = weights_sha256(model)
    torch.manual_seed(0)
    TopKSAE(TopKSAEConfig(d_in=model.cfg.d_model, d_sae=64, k=8, metadata=SAEMetadata(
        hook_name="blocks.0.hook_resid_post", weights_sha256=sha))).save_model(root / "sae")
    d = model.cfg.d_model
    for layer in range(model.cfg.n_layers):
        g = torch.Generator().manual_seed(layer)
        tc = Transcoder(TranscoderConfig(d_in=d, d_sae=128, d_out=d, dtype="float32", device="cpu",
                                         apply_b_dec_to_input=False))
        with torch.no_grad():
            tc.W_enc.copy_(torch.randn(d, 128, generator=g) / d**0.5)
            tc.b_enc.fill_(-0.5)  # about a third of the features fire
            tc.W_dec.copy_(torch.randn(128, d, generator=g) * 0.1)
            tc.b_dec.copy_(torch.randn(d, generator=g) * 0.01)
        meta = tc.cfg.metadata
        meta.hook_name, meta.hook_name_out = f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.hook_mlp_out"
        meta.weights_sha256 = sha
        tc.save_model(root / "tc" / f"layer_{layer}")
        if layer == 0:
            texts, problems = labelled_texts("adder-direct", 100, "test", 1)
            build_dashboards(model, tc, texts, problems, root / "tc" / "layer_0" / "dashboard", progress=False)
    return root


@pytest.mark.parametrize("page, field", [("pages/features.py", "SAE directory"),
                                         ("pages/circuit.py", "Transcoder directory")])
def test_a_missing_sae_or_transcoder_dir_says_how_to_make_one(page, field):
    at = _app(page)  # the default dir is the organism's shipped transcoders, which may or may not exist
    _widget(at.text_input, field).set_value("no/such/dir").run()
    assert not at.exception and not at.error
    assert any("no/such/dir" in i.value and "workbench sae train" in i.value for i in at.info)


def test_circuit_page_refuses_a_prompt_outside_the_vocabulary():
    at = _app("pages/circuit.py")
    _widget(at.text_input, "Prompt").set_value("héllo").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("not in the vocabulary" in e.value for e in at.error), [e.value for e in at.error]
    assert at.title[0].value == "Circuit"


@pytest.mark.parametrize("page, field, sub, expected", [
    ("pages/features.py", "SAE directory", "sae", "was trained on model"),  # adder-direct's SAE on adder-cot-faithful
    ("pages/features.py", "SAE directory", "tc", "not an SAE directory"),
    ("pages/circuit.py", "Transcoder directory", "sae", "no layer_0"),
])
def test_a_wrong_directory_shows_the_librarys_refusal(saved, page, field, sub, expected):
    at = _app(page)
    _widget(at.text_input, field).set_value(str(saved / sub)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(expected in e.value for e in at.error), [e.value for e in at.error]


def test_features_page_builds_a_dashboard_and_browses_it(saved):
    at = _app("pages/features.py", prompt="36+59=")
    at.session_state["feat_sae_dir:adder-direct"] = str(saved / "sae")  # the dir input is per model: set it first
    at.selectbox(key="feat_model").set_value("adder-direct").run()
    assert _widget(at.text_input, "SAE directory").value == str(saved / "sae")
    assert any("No dashboard" in i.value for i in at.info)
    _widget(at.number_input, "Texts to scan").set_value(100).run()
    _widget(at.button, "Build dashboard").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert (saved / "sae" / "dashboard" / "dashboard.json").is_file()

    table = at.dataframe[0].value
    assert list(table.columns) == ["id", "label", "label_auroc", "density", "max_act", "dead"]
    assert 0 < len(table) <= 64 and not table["dead"].any()  # dead features hidden by default
    assert table["label_auroc"].is_monotonic_decreasing
    examples = [m.value for m in at.markdown if "<span" in m.value]
    assert examples and "rgba(255,127,14," in examples[0] and "outline" in examples[0]
    assert at.subheader[0].value.startswith(f"Feature {table['id'].iloc[0]}")

    _widget(at.text_input, "Label contains").set_value("no such label").run()
    assert len(at.dataframe[0].value) == 0 and not at.exception
    _widget(at.number_input, "Feature").set_value(5).run()
    assert at.subheader[0].value.startswith("Feature 5")

    per_token = at.dataframe[-1].value  # "Active on this prompt" with the default prompt 36+59=
    assert list(per_token["token"]) == list("36+59=") and per_token["features"].str.contains("f").all()
    _widget(at.text_input, "Prompt").set_value("héllo").run()
    assert any("not in the vocabulary" in e.value for e in at.error), [e.value for e in at.error]
    assert not at.exception and at.subheader[0].value.startswith("Feature 5")  # the rest of the page still runs


def test_circuit_page_draws_validates_and_exports_the_graph(saved):
    at = _app("pages/circuit.py", prompt="36+59=")
    at.session_state["circuit_tc_dir:adder-direct"] = str(saved / "tc")  # not the shipped transcoders, if any
    at.selectbox(key="circuit_model").set_value("adder-direct").run()
    assert _widget(at.text_input, "Transcoder directory").value == str(saved / "tc")
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert 0 <= float(metrics["Replacement score"]) <= 1 and 0 <= float(metrics["Completeness score"]) <= 1
    assert metrics["Target"] == "'9'"  # adder-direct answers 36+59= with 95: its first digit is explained

    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    kinds = {t["name"]: t for t in spec["data"] if t.get("mode") == "markers"}
    assert {"feature", "embedding", "logit"} <= set(kinds) and len(kinds["embedding"]["x"]) == 7  # BOS + 6 tokens
    assert any("label: " in h for h in kinds["feature"]["text"] if "(layer 0," in h)  # layer_0 has a dashboard
    top = at.dataframe[0].value
    assert len(top) == 10 and top["influence"].is_monotonic_decreasing
    assert top.loc[top["layer"] == 0, "label"].notna().all() and top.loc[top["layer"] > 0, "label"].isna().all()

    at.slider[0].set_value(0.6).run()
    fewer = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert sum(len(t["x"]) for t in fewer["data"] if t.get("mode") == "markers") < \
        sum(len(t["x"]) for t in spec["data"] if t.get("mode") == "markers")

    _widget(at.button, "Validate by intervention").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Agreement rate" in m.value for m in at.markdown)
    checked = at.dataframe[-1].value
    assert len(checked) == 10
    assert (checked["predicted_direct"] - checked["measured_direct"]).abs().max() < 1e-3
    at.number_input[0].set_value(10).run()  # another interaction: the validation stays on the page
    assert any("Agreement rate" in m.value for m in at.markdown)
    assert [b.label for b in at.get("download_button")] == ["Download graph JSON", "Download graph + index (zip)"]
    assert any("circuit-serve" in c.value for c in at.caption)
