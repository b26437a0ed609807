"""What a researcher reads off each page: the answer and its mark, axis and colour-bar titles, findings in words,
symmetric scales with the noise floor, the post-hoc CoT as a finding, the verdict with curves and claims, picking a
feature by its row, the circuit's target, the pair warning; the state the pages share and the links that carry it;
and the "Stated vs internal" page. Interaction times are printed (``-s``) and bounded loosely (shared CPUs)."""

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

EXPLORER = str(Path(__file__).resolve().parents[2] / "apps" / "explorer.py")
STATED = "pages/stated_vs_internal.py"
TIMINGS: dict[str, float] = {}


def _app(page: str | None = None, **link) -> AppTest:
    at = AppTest.from_file(EXPLORER, default_timeout=300)
    for name, value in link.items():
        at.query_params[name] = value
    at.run()
    if page is not None and page != STATED:
        at.switch_page(page)
        at.run()
    _ok(at)
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert at.title and at.title[0].value


def _timed(name: str, action) -> AppTest:
    t0 = time.perf_counter()
    at = action()
    TIMINGS[name] = time.perf_counter() - t0
    print(f"\n  [{name}: {TIMINGS[name]:.2f} s]", end="")
    return at


def _charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _title(spec: dict, axis: str) -> str:
    t = spec["layout"].get(axis, {}).get("title", {})
    return t.get("text", "") if isinstance(t, dict) else str(t)


def _texts(at: AppTest) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
                     + [s.value for s in at.success])


# --- Prompt lab ---------------------------------------------------------------------------------------------------


def test_prompt_lab_answers_a_three_digit_cot_with_a_mark():
    at = _app("pages/prompt_lab.py", model="adder-cot-faithful", prompt="478+256=")
    assert at.code[0].value == "478+256= 8+6+0=14 7+5+1=13 4+2+1=07 ans 734"
    assert any("Answer: 734" in m.value and "✓ right" in m.value for m in at.markdown)
    table = at.dataframe[0].value
    assert set(table["part"]) == {"prompt", "generated"}  # text, not checkboxes
    assert "␣" in set(table["token"]) and " " not in set(table["token"])  # spaces visible
    assert any("then end-of-text" in c.value for c in at.caption)
    strip = [m.value for m in at.markdown if "<span" in m.value]
    assert strip and "␣" in strip[0]


def test_prompt_lab_marks_a_wrong_answer_and_says_what_it_is():
    at = _app("pages/prompt_lab.py", model="adder-hint", prompt="hint:700 245+318=")
    line = next(m.value for m in at.markdown if "Answer:" in m.value)
    assert "Answer: 700" in line and "✗ wrong" in line and "the hint" in line and "563" in line


# --- Lens and Attention: titles and a sentence ---------------------------------------------------------------------


def test_lens_has_axis_and_colour_bar_titles_and_a_finding():
    at = _app("pages/lens.py", model="adder-cot-faithful", prompt="478+256=")
    assert at.text_input(key="lens_prompt").value == "478+256= 8+6+0=14 7+5+1=13 4+2+1=07 ans "  # its own CoT
    assert at.text_input(key="lens_target").value == "7"
    spec = _charts(at)[0]
    assert _title(spec, "xaxis").startswith("position") and _title(spec, "yaxis").startswith("layer")
    assert spec["data"][0]["colorbar"]["title"]["text"] == "P('7')"
    assert spec["data"][0]["zmin"] == 0 and spec["data"][0]["zmax"] == 1
    assert any("becomes the lens's top token" in m.value for m in at.markdown)


def test_attention_has_axis_and_colour_bar_titles_and_shares_its_layer():
    at = _app("pages/attention.py", model="adder-cot-faithful", prompt="36+59=")
    at.slider(key="attn_layer").set_value(0).run()
    spec = _charts(at)[0]
    assert _title(spec, "xaxis").startswith("key position") and _title(spec, "yaxis").startswith("query position")
    assert spec["data"][0]["colorbar"]["title"]["text"] == "attention weight"
    assert any("attends most to position" in m.value for m in at.markdown)
    assert at.query_params.get("layer") == "0"


# --- Probes: a sentence, a symmetric scale with the noise floor, names explained, the causal check ----------------


def test_probes_state_the_site_in_words_on_a_symmetric_scale_with_the_noise_floor():
    at = _app("pages/probes.py", model="adder-cot-posthoc")
    at.number_input[1].set_value(200).run()  # prompts
    _ok(at)
    sentence = next(m.value for m in at.markdown if "is decodable at" in m.value or "not decodable" in m.value)
    assert "noise floor" in sentence and "control task" in sentence
    trace = _charts(at)[0]["data"][0]
    assert trace["zmin"] == -1 and trace["zmax"] == 1
    assert any("noise floor" in t for t in trace["colorbar"]["ticktext"])
    assert any("`carry0`: the carry out of the ones column" in m.value for m in at.markdown)  # names explained
    variable = next(w for w in at.selectbox if w.label == "Variable")
    assert any(o.startswith("ans0: the answer's ones digit") for o in variable.options)

    at.button[0].click().run()  # the causal check, with progress, then a sentence computed from its rates
    _ok(at)
    said = next(m.value for m in at.markdown if m.value.startswith("Pushing ans0"))
    assert "the answer follows the pushed ans0" in said and "random push" in said
    assert "does not use it there" in said  # the post-hoc organism's CoT-text probe site is not where it answers
    _timed("probes: the causal check again (cached)", lambda: at.radio[0].set_value("score").run())
    assert any(m.value.startswith("Pushing ans0") for m in at.markdown)
    assert TIMINGS["probes: the causal check again (cached)"] < 10


# --- Patching: the post-hoc CoT as a finding -------------------------------------------------------------------------


def test_patching_a_post_hoc_cot_is_a_finding_not_an_error():
    at = _app("pages/patching.py", model="adder-cot-posthoc", prompt="478+256=")
    assert at.text_input(key="patch_clean").value == "478+256= 8+6+0=14 7+5+1=13 4+2+1=07 ans 73"
    assert at.text_input(key="patch_corrupt").value == "478+256= 8+6+0=15 7+5+1=13 4+2+1=07 ans 73"
    assert not at.error, [e.value for e in at.error]
    assert any("The CoT is ignored: patching it restores nothing" in i.value for i in at.info)


def test_patching_a_faithful_cot_shows_where_the_answer_is_read():
    at = _app("pages/patching.py", model="adder-cot-faithful", prompt="478+256=")
    assert not at.error and not at.info
    specs = _charts(at)
    assert len(specs) == 2 and _title(specs[0], "xaxis").startswith("position")
    assert specs[0]["data"][0]["colorbar"]["title"]["text"] == "share restored"
    assert any("restores the most" in m.value or "restores most" in m.value for m in at.markdown)


# --- Faithfulness: verdict, evidence, curves, claims; no raw JSON --------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A small saved study of adder-cot-posthoc (early, mistakes, resample, hint, claims), as `workbench faithfulness`
    writes."""
    from probes.faithfulness.report import write_study
    from probes.faithfulness.suite import run_suite
    from workbench.models.loader import load_model

    out = tmp_path_factory.mktemp("study")
    summary, rows = run_suite(load_model("adder-cot-posthoc"), n=60,
                              tests=["early", "mistakes", "resample", "hint", "claims"], claims_n=80)
    write_study(out, "adder-cot-posthoc", summary, rows, "post-hoc")
    return out / "summary.json"


def test_faithfulness_opens_a_study_as_verdict_evidence_curves_and_claims(study):
    at = _app("pages/faithfulness.py")
    at.radio[0].set_value("Open a saved study").run()
    at.text_input[0].set_value(str(study)).run()
    _ok(at)
    assert not at.error, [e.value for e in at.error]
    assert at.subheader[0].value == "Verdict: post-hoc (planted truth: post-hoc)"
    assert not at.get("json")  # no raw JSON
    titles = [s["layout"]["title"]["text"] for s in _charts(at)]
    assert titles == ["Same answer as with the whole CoT"]
    names = {t["name"].split(":")[0] for t in _charts(at)[0]["data"]}
    assert names == {"early answering", "adding mistakes"}
    deciding, cross, claims = (at.dataframe[k].value for k in range(3))
    assert {"evidence", "rate [95% interval] (n)", "against the threshold"} <= set(deciding.columns)
    assert list(cross["step"]) == ["ones", "tens", "hundreds"] and (cross["agree"] == "yes").all()  # both: ignored
    assert list(claims["value"]) == ["ans0", "ans1", "ans2", "carry0", "carry1", "carry2"]
    assert not claims.isna().any().any() and (claims["represented before stated"] != "").all()


def test_faithfulness_shows_a_study_missing_fields_as_not_measured(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"verdict": {"verdict": "faithful", "deciding": [{"name": "ones"}]},
                                "early": {"curve": None}, "claims": {"by_variable": {"carry0": {"used": None}}}}))
    at = _app("pages/faithfulness.py")
    at.radio[0].set_value("Open a saved study").run()
    at.text_input[0].set_value(str(path)).run()
    _ok(at)
    assert at.subheader[0].value.startswith("Verdict: faithful")
    assert at.dataframe[0].value.iloc[0]["rate [95% interval] (n)"] == "not measured"
    assert at.dataframe[1].value.iloc[0]["used when intervened on"] == "not measured"


def test_faithfulness_run_fills_every_claims_column():
    at = _app("pages/faithfulness.py", model="adder-cot-faithful")
    at.number_input[0].set_value(40).run()
    at.multiselect[0].set_value(["mistakes", "claims"]).run()
    at.button[0].click().run()
    _ok(at)
    assert at.subheader[0].value.startswith("Verdict: ")
    per_claim = at.dataframe[-1].value
    assert {"represented", "used", "claim true"} <= set(per_claim.columns)
    assert per_claim["represented"].map(lambda v: isinstance(v, str) and v != "").all()  # never blank
    assert per_claim["represented"].str.contains("trained on this prompt").any()


# --- Shared state and links ------------------------------------------------------------------------------------------


def test_a_page_opens_on_the_model_and_prompt_the_last_one_showed():
    at = _app("pages/prompt_lab.py")
    at.selectbox(key="lab_model_0").set_value("adder-cot-faithful").run()
    at.text_input(key="lab_prompt").set_value("36+59=").run()
    assert at.query_params["model"] == "adder-cot-faithful" and at.query_params["prompt"] == "36+59="
    at.switch_page("pages/lens.py")
    at.run()
    _ok(at)
    assert at.selectbox(key="lens_model").value == "adder-cot-faithful"
    assert at.text_input(key="lens_prompt").value == "36+59= 6+9+0=15 3+5+1=09 ans "
    at.switch_page("pages/circuit.py")
    at.run()
    assert at.selectbox(key="circuit_model").value == "adder-cot-faithful"
    assert at.text_input(key="circuit_prompt").value == "36+59="


def test_a_link_opens_the_view_it_names():
    at = _app("pages/attention.py", model="adder-direct", prompt="12+34=", layer="1")
    assert at.selectbox(key="attn_model").value == "adder-direct"
    assert at.text_input(key="attn_prompt").value == "12+34="  # a direct answerer: the prompt is where it answers
    assert at.slider(key="attn_layer").value == 1


# --- Features: a row picks a feature; the dashboard after a build; why fewer texts -----------------------------------


def test_features_row_click_picks_the_feature_and_a_build_says_why_fewer_texts(tmp_path):
    import shutil

    from workbench.models.zoo import organism_dir

    sae = tmp_path / "sae"
    shutil.copytree(organism_dir("adder-direct") / "transcoders" / "layer_0", sae)
    at = _app("pages/features.py", model="adder-direct", prompt="36+59=")
    at.text_input(key="feat_sae_dir:adder-direct").set_value(str(sae)).run()
    assert any("No dashboard" in i.value for i in at.info)
    next(w for w in at.number_input if w.label.startswith("Texts to scan")).set_value(100).run()
    next(b for b in at.button if b.label.startswith("Build dashboard")).click().run()
    _ok(at)
    assert not any("No dashboard" in i.value for i in at.info)  # found after the build
    built = " ".join(s.value for s in at.success)
    assert "on " in built and ("of the 100 asked" in built and "commonest width" in built or "100 texts" in built)
    table = at.dataframe[0].value
    row = 3
    at.session_state["feat_table"] = {"selection": {"rows": [row], "columns": [], "cells": []}}
    at.run()
    _ok(at)
    assert at.subheader[0].value.startswith(f"Feature {int(table['id'].iloc[row])}")


# --- Circuit: the target, labels, a readable layout ------------------------------------------------------------------


def test_circuit_explains_the_answer_digit_a_token_or_a_logit_difference():
    at = _app("pages/circuit.py", model="adder-direct", prompt="36+59=")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Target"] == "'9'"  # the answer digit by default, not the next token of the bare prompt
    digit = next(w for w in at.selectbox if w.label == "Answer digit")
    digit.set_value(digit.options[1]).run()
    assert {m.label: m.value for m in at.metric}["Target"] == "'5'"
    spec = _charts(at)[0]
    feats = next(t for t in spec["data"] if t.get("name") == "feature")
    points = list(zip(feats["x"], feats["y"]))
    assert len(set(points)) == len(points)  # no two nodes on one spot
    named = [t for t in spec["data"] if t.get("mode") == "text"]
    assert named and any(s.startswith("target ") for s in named[0]["text"])

    at.radio(key="circuit_target").set_value("a token you name").run()
    at.text_input(key="circuit_token").set_value("4").run()
    _ok(at)
    assert {m.label: m.value for m in at.metric}["Target"] == "'4'"
    at.radio(key="circuit_target").set_value("a logit difference").run()
    _ok(at)
    assert not at.error, [e.value for e in at.error]
    assert {m.label: m.value for m in at.metric}["Target"].startswith("\"logit('9') - logit('0')")
    assert any("Validation by intervention measures one token's logit" in c.value for c in at.caption)


# --- Alignment diff: a pair that is not a base and its fine-tune ----------------------------------------------------


def test_alignment_diff_warns_when_the_models_are_not_a_base_and_its_fine_tune():
    at = _app("pages/alignment_diff.py")
    at.selectbox(key="diff_tuned").set_value("adder-cot-faithful").run()
    _ok(at)
    warned = " ".join(w.value for w in at.warning)
    assert "do not look like a base and its fine-tune" in warned
    assert "adder-hint and adder-cot-faithful" in warned and "of the base's norm" in warned


# --- Stated vs internal ---------------------------------------------------------------------------------------------


def test_stated_vs_internal_shows_the_post_hoc_mismatch_on_the_first_screen(study):
    at = _timed("stated vs internal: first render (model, reference)", lambda: _app(model="adder-cot-posthoc"))
    assert at.title[0].value == "Stated vs internal"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Answer"] == "734" and metrics["Stated values true"] == "6 of 6"
    assert metrics["Used when intervened on"] == "0 of 6"
    head = next(m.value for m in at.markdown if m.value.startswith("**478+256= 734**"))
    assert "✓ right" in head and "not what the answer is computed from" in head
    table = at.dataframe[0].value
    assert len(table) == 6 and table["used when intervened on?"].str.startswith("✗").all()
    assert table["represented before stated?"].str[0].isin(["✓", "✗"]).all()
    assert any("computed from the operands, not from the CoT" in m.value for m in at.markdown)

    at.text_input(key="svi_study:adder-cot-posthoc").set_value(str(study)).run()
    _ok(at)
    assert any(s.value.startswith("Verdict: post-hoc") for s in at.subheader)
    assert any("[" in v for v in at.dataframe[1].value["rate [95% interval] (n)"])  # intervals

    at = _timed("stated vs internal: a new prompt", lambda: at.text_input(key="svi_prompt").set_value("123+489=").run())
    _ok(at)
    assert {m.label: m.value for m in at.metric}["Answer"] == "612"
    assert TIMINGS["stated vs internal: a new prompt"] < 10


def test_stated_vs_internal_on_a_faithful_cot_and_an_explanation():
    at = _app(model="adder-cot-faithful", prompt="478+256=")
    assert {m.label: m.value for m in at.metric}["Used when intervened on"] == "6 of 6"
    assert any("The answer follows the stated reasoning" in m.value for m in at.markdown)
    assert any("read from the CoT" in m.value for m in at.markdown)
    at.selectbox(key="svi_model").set_value("adder-direct").run()
    _ok(at)
    table = at.dataframe[0].value  # its explanation, value by value
    assert table["step"].iloc[0] == "ones 8+6=14 carry 1"
    assert any("pushed" in v for v in table["used when intervened on?"])
    assert any(c.value.startswith("It answers at once; asked 'why?' it explains") for c in at.caption)


def test_stated_vs_internal_runs_a_quick_study_when_none_is_saved(tmp_path):
    at = _app(model="adder-cot-faithful", prompt="36+59=")
    at.text_input(key="svi_study:adder-cot-faithful").set_value(str(tmp_path / "none.json")).run()
    assert any("No saved study" in i.value for i in at.info)
    at = _timed("stated vs internal: a quick study", lambda: next(
        b for b in at.button if b.label.startswith("Run a quick study")).click().run())
    _ok(at)
    assert any(s.value.startswith("Verdict: faithful") for s in at.subheader)


def test_stated_vs_internal_finds_a_hint_copied_into_the_answer():
    at = _app(model="adder-hint", prompt="hint:700 245+318=")
    head = next(m.value for m in at.markdown if m.value.startswith("**hint:700 245+318= 700**"))
    assert "✗ wrong, the true sum is 563" in head and "not what the answer is computed from" in head
    assert any(m.value.startswith("The answer digits are copied from the hint") for m in at.markdown)


def test_stated_vs_internal_names_the_step_a_partial_cot_does_not_use():
    from workbench.models.zoo import RECIPES, organism_dir

    if "adder-cot-partial" not in RECIPES or not (organism_dir("adder-cot-partial") / "model.safetensors").is_file():
        pytest.skip("adder-cot-partial is not trained here")
    at = _app(model="adder-cot-partial", prompt="478+256=")
    head = next(m.value for m in at.markdown if m.value.startswith("**478+256= 734**"))
    assert "except ans0 (the answer's ones digit)" in head  # planted: the ones step is not read


def test_stated_vs_internal_reads_a_story_of_the_word_problem_family():
    """A BPE-tokenized, natural-language model: the page opens on a story, marks each stated count, and says
    whether the answer is computed from them (the faithful organism: every count used)."""
    at = _timed("stated vs internal: a word-problem model", lambda: _app(model="story-cot-faithful"))
    from apps.story_view import DEFAULT_STORY

    assert at.text_area(key="svi_story").value == DEFAULT_STORY
    metrics = {m.label: m.value for m in at.metric}
    n = metrics["Stated counts true"].split(" of ")[1]
    assert metrics["Stated counts true"] == f"{n} of {n}" and metrics["Used when edited"] == f"{n} of {n}"
    assert any("the answer is computed from what the reasoning states" in m.value for m in at.markdown)
    table = at.dataframe[0].value
    assert table["used when edited?"].str.startswith("✓").all()
    at.text_area(key="svi_story").set_value("<question><answer>50</answer></question>\n" + DEFAULT_STORY).run()
    _ok(at)
    assert any("(a metadata hint said 50)" in m.value for m in at.markdown)
    at.text_area(key="svi_story").set_value("478+256=").run()
    _ok(at)
    assert any("This model does the word-problem task" in i.value for i in at.info)


def test_the_other_pages_read_a_story_in_its_own_terms():
    """A word-problem model on the pages built for any prompt: the Prompt lab marks the story's answer right, the
    lens targets its first digit, patching builds a story pair (the last stated count changed) and finds the
    answer read from it, the Probes page sweeps the task's own variables, and the shared prompt is the story."""
    from workbench.tasks.views import view_for

    from apps.story_view import DEFAULT_STORY

    view = view_for("wordproblems")
    truth = view.truth(DEFAULT_STORY)
    # the explorer opens on Stated vs internal, whose story becomes the shared prompt the next page opens on
    at = _timed("prompt lab: a word-problem model", lambda: _app("pages/prompt_lab.py", model="story-cot-faithful"))
    assert at.text_area(key="lab_prompt").value == DEFAULT_STORY
    assert any("✓ right" in m.value and f"**Answer: {truth}**" in m.value for m in at.markdown)
    at.text_area(key="lab_prompt").set_value(view.default_prompt).run()
    assert any("✓ right" in m.value and "**Answer: 56**" in m.value for m in at.markdown)

    at = _app("pages/lens.py", model="story-cot-faithful")
    assert at.text_area(key="lens_prompt").value.endswith(view.answer_mark)
    assert at.text_input(key="lens_target").value == str(truth)[0]

    at = _app("pages/patching.py", model="story-cot-faithful")
    clean, corrupt = at.text_area(key="patch_clean").value, at.text_area(key="patch_corrupt").value
    assert clean.endswith(view.answer_mark + str(truth)[0]) and corrupt != clean and len(corrupt) == len(clean)
    assert any("the corruption changed the CoT" in m.value and "restores the most" in m.value for m in at.markdown)

    at = _timed("probes: a word-problem model", lambda: _app("pages/probes.py", model="story-cot-faithful"))
    assert any("is read best at" in m.value for m in at.markdown)
    assert "probe_digits" not in [w.key for w in at.number_input]  # no operand widths for a story
