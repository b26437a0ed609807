"""Feature dashboards: AUROC against a pairwise reference, labels on planted features, and an end-to-end build on
adder-direct with a seeded random SAE whose numbers are checked against brute force."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig, Transcoder, TranscoderConfig
from sae_lens.saes.sae import SAEMetadata

from workbench.dashboards import (
    _logit_effects,
    auroc,
    auroc_matrix,
    build_dashboards,
    feature_activations,
    feature_labels,
    load_dashboard,
)
from workbench.errors import WorkbenchError
from workbench.io import read_parquet, write_parquet
from workbench.models.loader import load_model
from workbench.tasks.addition import Problem, sample_problems
from workbench.tasks.formats import direct

HOOK = "blocks.0.hook_resid_post"


def pairwise_auroc(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y], s[~y]
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def topk_sae(d_sae: int = 64, d_in: int = 128, hook: str = HOOK, seed: int = 0) -> TopKSAE:
    torch.manual_seed(seed)
    return TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=8, metadata=SAEMetadata(hook_name=hook)))


@pytest.fixture(scope="module")
def model():
    return load_model("adder-direct")


@pytest.fixture(scope="module")
def data():
    problems = sample_problems(200, (2,), "train", 0)
    return [direct(p).prompt + direct(p).completion for p in problems], problems


@pytest.fixture(scope="module")
def sae():
    s = topk_sae()
    with torch.no_grad():  # feature 5 can never fire: a constant negative pre-activation, zeroed by TopK's ReLU
        s.W_enc[:, 5] = 0
        s.b_enc[5] = -1.0
    return s


@pytest.fixture(scope="module")
def built(model, sae, data, tmp_path_factory):
    texts, problems = data
    out = build_dashboards(model, sae, texts, problems, tmp_path_factory.mktemp("dash"), progress=False)
    return out, load_dashboard(out), feature_activations(model, sae, texts)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pairwise_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    s = rng.integers(0, 4, n).astype(float)  # few distinct values: many ties, within and across classes
    y = rng.random(n) < 0.4
    y[:2] = [True, False]
    assert auroc(s, y) == pytest.approx(pairwise_auroc(s, y), abs=1e-12)
    cont = rng.normal(size=(n, 6))
    cont[:, 0] = 0.0  # a constant column is exactly 0.5
    labels = rng.random((n, 3)) < 0.5
    labels[:2] = [[True] * 3, [False] * 3]
    ref = np.array([[pairwise_auroc(cont[:, f], labels[:, c]) for c in range(3)] for f in range(6)])
    np.testing.assert_allclose(auroc_matrix(cont, labels), ref, atol=1e-12)
    assert auroc_matrix(cont, labels)[0] == pytest.approx([0.5] * 3)


def test_auroc_edge_cases_and_bad_input():
    assert auroc(np.array([1.0, 2, 3]), np.array([0, 1, 1])) == 1.0
    assert auroc(np.array([3.0, 2, 1]), np.array([False, True, True])) == 0.0
    with pytest.raises(WorkbenchError, match="both"):
        auroc(np.array([1.0, 2]), np.array([1, 1]))
    with pytest.raises(WorkbenchError, match="one length"):
        auroc(np.array([1.0, 2]), np.array([1, 0, 1]))
    with pytest.raises(WorkbenchError, match="0/1"):
        auroc(np.array([1.0, 2]), np.array([2, 0]))


def test_planted_carry_feature_gets_the_carry_label():
    problems = sample_problems(400, (2,), "train", 1)
    carry0 = np.array([p.columns[0].carry_out for p in problems])
    rng = np.random.default_rng(0)
    scores = np.stack([
        carry0 * rng.uniform(1, 3, len(problems)),  # fires (with varying strength) exactly on carry-out of the ones
        np.zeros(len(problems)),  # dead
        rng.random(len(problems)),  # noise
        (np.array([p.columns[1].a for p in problems]) == 7) * 2.0,  # tens digit of a == 7
    ], 1)
    labels = feature_labels(scores, problems)
    assert labels[0][0] == {"variable": "carry0", "class": 1, "auroc": 1.0, "n_pos": int(carry0.sum())}
    assert ("carry0", 0) not in [(x["variable"], x["class"]) for x in labels[0]]  # the complement scores 0
    assert labels[1] == []
    assert len(labels[2]) == 3 and all(x["auroc"] < 0.75 for x in labels[2])
    assert (labels[3][0]["variable"], labels[3][0]["class"], labels[3][0]["auroc"]) == ("a1", 7, 1.0)


def test_rare_classes_are_not_labels():
    problems = [Problem(55, 55)] * 3 + [Problem(11, 11)] * 97  # total0=10 in only 3 texts
    scores = np.array([1.0] * 3 + [0.0] * 97)[:, None]
    assert all(x["n_pos"] >= 10 for x in feature_labels(scores, problems)[0])
    assert feature_labels(scores, problems, min_count=3)[0][0]["auroc"] == 1.0


def test_feature_activations_rows_match_a_per_text_run(model, sae, data):
    texts = data[0][:40]
    acts, ids, where = feature_activations(model, sae, texts, batch_size=256)
    acts7, ids7, where7 = feature_activations(model, sae, texts, batch_size=7)
    torch.testing.assert_close(acts, acts7)
    assert torch.equal(ids, ids7) and torch.equal(where, where7)
    assert acts.dtype == torch.float32 and acts.shape == (sum(len(t) for t in texts), sae.cfg.d_sae)  # BOS dropped
    for i in (0, 13, 39):
        toks = model.to_tokens(texts[i])
        _, cache = model.run_with_cache(toks, names_filter=HOOK)
        rows = where[:, 0] == i
        assert where[rows, 1].tolist() == list(range(1, toks.shape[1]))
        assert ids[rows].tolist() == toks[0, 1:].tolist()
        torch.testing.assert_close(acts[rows], sae.encode(cache[HOOK][0, 1:]).detach(), atol=1e-5, rtol=1e-5)


def test_density_histogram_and_dead_features(built, sae):
    _, dash, (acts, _, _) = built
    tab = dash.table()
    assert list(tab["id"]) == list(range(sae.cfg.d_sae))
    fired = (acts > 0).sum(0).numpy()
    np.testing.assert_allclose(tab["density"].to_numpy() * len(acts), fired, atol=1e-6)
    np.testing.assert_allclose(tab["max_act"].to_numpy(), acts.max(0).values.numpy(), rtol=1e-6)
    mean = np.array([acts[:, f][acts[:, f] > 0].mean().item() if fired[f] else 0.0 for f in range(acts.shape[1])])
    np.testing.assert_allclose(tab["mean_act"].to_numpy(), mean, rtol=1e-5)
    assert set(np.flatnonzero(tab["dead"].to_numpy())) == set(np.flatnonzero(fired == 0)) and 5 in set(tab.id[tab.dead])
    dead = dash.feature(5)
    assert dead["examples"] == [] and dead["label"] is None and dead["hist_counts"] == [] and dead["density"] == 0
    for f in np.flatnonzero(fired)[:10]:
        row = dash.feature(int(f))
        assert sum(row["hist_counts"]) == fired[f] and len(row["hist_edges"]) == len(row["hist_counts"]) + 1 == 31
        assert row["hist_edges"][0] == pytest.approx(acts[:, f][acts[:, f] > 0].min().item())
        assert row["hist_edges"][-1] == pytest.approx(row["max_act"])
    assert dash.meta["n_dead"] == int((fired == 0).sum()) and dash.meta["n_tokens"] == len(acts)


def test_top_examples_are_the_top_activations(built, model, data):
    _, dash, (acts, _, where) = built
    texts = data[0]
    for f in range(acts.shape[1]):
        ex = dash.feature(f)["examples"]
        col = acts[:, f].numpy()
        want = np.sort(col[col > 0])[::-1][:20]
        np.testing.assert_allclose([e["activation"] for e in ex], want, rtol=1e-6)
        assert [e["rank"] for e in ex] == list(range(len(want)))
        for e in ex[:3]:
            row = int(torch.nonzero((where[:, 0] == e["text"]) & (where[:, 1] == e["position"]))[0, 0])
            assert col[row] == pytest.approx(e["activation"])
            assert e["acts"][e["focus"]] == pytest.approx(e["activation"])
            # the context is the text's own characters, up to 8 left and 3 right of the example's token (BOS out)
            start = max(1, e["position"] - 8)
            assert "".join(e["tokens"]) == texts[e["text"]][start - 1 : e["position"] + 3]
            assert e["focus"] == e["position"] - start
            ctx_rows = row - e["focus"] + np.arange(len(e["tokens"]))
            np.testing.assert_allclose(e["acts"], col[ctx_rows], rtol=1e-6)


def test_logit_effects_are_decoder_times_unembed(built, model, sae):
    _, dash, _ = built
    assert model.cfg.normalization_type == "LN"  # not folded: ln_final's centering and weight are applied
    w_dec = sae.W_dec.detach()
    eff = ((w_dec - w_dec.mean(1, keepdim=True)) * model.ln_final.w.detach()) @ model.W_U.detach()
    vocab = model.tokenizer.convert_ids_to_tokens(list(range(model.cfg.d_vocab)))
    for f in (0, 17, 63):
        row = dash.feature(f)
        vals, idx = eff[f].topk(10)
        np.testing.assert_allclose(row["logits_pos_values"], vals.numpy(), rtol=1e-5)
        assert row["logits_pos"] == [vocab[i] for i in idx.tolist()]
        np.testing.assert_allclose(row["logits_neg_values"], (-eff[f]).topk(10).values.neg().numpy(), rtol=1e-5)
    assert dash.meta["logit_effect"] == "direct"


def test_logit_effect_is_the_logit_change_with_ln_scale_frozen(model):
    """Independently of the formula: add a decoder row to the last residual, keep ln_final's scale as it was."""
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    sae = topk_sae(hook=last, seed=3)
    kind, (vals, ids, neg_vals, _) = _logit_effects(model, sae, last, 5)
    toks = model.to_tokens("12+34=")
    clean, cache = model.run_with_cache(toks, names_filter="ln_final.hook_scale")
    scale = cache["ln_final.hook_scale"]
    for f in (0, 9):
        patched = model.run_with_hooks(toks, fwd_hooks=[
            (last, lambda x, hook, f=f: x + sae.W_dec[f].detach()),
            ("ln_final.hook_scale", lambda x, hook: scale)])
        change = ((patched - clean)[0, -1] * scale[0, -1]).detach()
        torch.testing.assert_close(change[ids[f]], vals[f], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(change.topk(5).values, vals[f], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(change.topk(5, largest=False).values, neg_vals[f], atol=1e-4, rtol=1e-4)
    assert kind == "direct"


def test_files_metadata_labels_and_determinism(built, model, sae, data, tmp_path):
    out, dash, _ = built
    assert {p.name for p in out.iterdir()} == {"features.parquet", "examples.parquet", "dashboard.json"}
    assert dash.meta["hook"] == HOOK and dash.meta["n_texts"] == 200 and dash.meta["sae"]["d_sae"] == 64
    assert dash.meta["sae"]["architecture"] == "topk" and len(dash) == 64
    live = dash.table()[~dash.table().dead]
    assert live.label.notna().all() and ((live.label_auroc >= 0.5) & (live.label_auroc <= 1)).all()
    row = dash.feature(int(live.id.iloc[0]))
    best = row["top_labels"][0]
    assert len(row["top_labels"]) == 3 and row["label"] == f"{best['variable']}={best['class']}"
    again = load_dashboard(build_dashboards(model, sae, *data, tmp_path, progress=False))
    assert again.features.equals(dash.features) and again.examples.equals(dash.examples)
    unlabelled = load_dashboard(build_dashboards(model, sae, data[0][:30], None, tmp_path / "u", progress=False))
    assert unlabelled.table().label.isna().all() and not unlabelled.meta["labelled"]


def test_load_is_fast_for_2048_features(model, data, tmp_path):
    build_dashboards(model, topk_sae(d_sae=2048), data[0][:150], data[1][:150], tmp_path, progress=False)
    start = time.perf_counter()
    dash = load_dashboard(tmp_path)
    table, row = dash.table(), dash.feature(2047)
    assert time.perf_counter() - start < 0.5
    assert len(table) == 2048 and row["id"] == 2047


def test_transcoder_reads_its_input_hook(model, data, tmp_path):
    torch.manual_seed(1)
    tc = Transcoder(TranscoderConfig(d_in=128, d_sae=32, d_out=128, apply_b_dec_to_input=False,
                                     metadata=SAEMetadata(hook_name="blocks.1.ln2.hook_normalized")))
    dash = load_dashboard(build_dashboards(model, tc, data[0][:50], None, tmp_path, progress=False))
    assert dash.meta["hook"] == "blocks.1.ln2.hook_normalized" and dash.meta["logit_effect"] == "direct"
    assert len(dash) == 32


def test_hook_z_sae_reads_heads_concatenated(model, data, tmp_path):
    hook, width = "blocks.0.attn.hook_z", model.cfg.n_heads * model.cfg.d_head
    saes = []
    for reshape in ("hook_z", "none"):
        torch.manual_seed(2)
        saes.append(StandardSAE(StandardSAEConfig(d_in=width, d_sae=24, reshape_activations=reshape,
                                                  metadata=SAEMetadata(hook_name=hook))))
    a, b = (feature_activations(model, s, data[0][:30])[0] for s in saes)
    torch.testing.assert_close(a, b)
    _, cache = model.run_with_cache(model.to_tokens(data[0][0]), names_filter=hook)
    torch.testing.assert_close(a[: cache[hook].shape[1] - 1], saes[1].encode(cache[hook][0, 1:].flatten(1)).detach())
    dash = load_dashboard(build_dashboards(model, saes[0], data[0][:30], None, tmp_path, progress=False))
    assert dash.meta["logit_effect"] == "none" and dash.feature(0)["logits_pos"] == []  # head basis, not W_U's


def test_bad_inputs_raise(model, sae, data, tmp_path):
    texts, problems = data
    with pytest.raises(WorkbenchError, match="not in the model"):
        build_dashboards(model, topk_sae(hook="blocks.9.hook_resid_post"), texts, None, tmp_path, progress=False)
    with pytest.raises(WorkbenchError, match="no cfg.metadata.hook_name"):
        build_dashboards(model, topk_sae(hook=None), texts, None, tmp_path, progress=False)
    with pytest.raises(WorkbenchError, match="d_in is 64 but hook"):
        build_dashboards(model, topk_sae(d_in=64), texts, None, tmp_path, progress=False)
    with pytest.raises(WorkbenchError, match="one problem per text"):
        build_dashboards(model, sae, texts, problems[:-1], tmp_path, progress=False)
    with pytest.raises(WorkbenchError, match="one number of columns"):
        build_dashboards(model, sae, texts[:2], [Problem(1, 2), Problem(10, 2)], tmp_path, progress=False)
    with pytest.raises(WorkbenchError, match="n_top"):
        build_dashboards(model, sae, texts, None, tmp_path, n_top=0, progress=False)
    with pytest.raises(WorkbenchError, match="no texts"):
        build_dashboards(model, sae, [], None, tmp_path, progress=False)
    with pytest.raises(WorkbenchError, match="vocabulary"):
        build_dashboards(model, sae, ["1+1=2", "HELLO"], None, tmp_path, progress=False)
    with pytest.raises(WorkbenchError, match="no dashboard"):
        load_dashboard(tmp_path / "nothing")
    assert not (tmp_path / "dashboard.json").exists()


def test_mixed_builds_and_missing_features_are_refused(built, tmp_path):
    out, dash, _ = built
    with pytest.raises(WorkbenchError, match="features 0..63"):
        dash.feature(64)
    for name in ("features.parquet", "examples.parquet", "dashboard.json"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    assert len(load_dashboard(tmp_path)) == 64
    # a rebuild killed after replacing one table: the json left from the old build does not match it
    write_parquet(tmp_path / "examples.parquet", read_parquet(out / "examples.parquet")[:-1])
    with pytest.raises(WorkbenchError, match="rebuild"):
        load_dashboard(tmp_path)


def test_an_all_dead_sae_still_builds_and_loads(model, data, tmp_path):
    dead = topk_sae(d_sae=16)
    with torch.no_grad():
        dead.W_enc.zero_()
        dead.b_enc.fill_(-1.0)
    dash = load_dashboard(build_dashboards(model, dead, data[0][:20], data[1][:20], tmp_path, progress=False))
    assert dash.table().dead.all() and dash.meta["n_dead"] == 16 and dash.feature(3)["examples"] == []
