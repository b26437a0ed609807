"""Attribution graphs through circuit-tracer: exact plumbing (weights, transcoder layout, error nodes), graph files
that circuit-tracer's own models accept, refusals of mismatched transcoders, and intervention checks.

Random (seeded) transcoders: nothing here depends on them being good, only on them being used consistently.
"""

import json

import pytest
import torch
from sae_lens import SkipTranscoder, SkipTranscoderConfig, Transcoder, TranscoderConfig

from tests.helpers import tiny_model
from workbench.circuits import (
    GRAPH_INDEX,
    attribute_prompt,
    load_graph_json,
    replacement_model,
    serve_graphs,
    top_features,
    transcoder_set,
    validate_by_intervention,
    write_graph_json,
)
from workbench.errors import WorkbenchError
from workbench.models.loader import load_model
from workbench.models.zoo import ArchConfig

PROMPT = "36+59="


def random_transcoder(d_in: int = 128, d_sae: int = 256, seed: int = 0, cls=Transcoder, cfg_cls=TranscoderConfig,
                      **metadata) -> Transcoder:
    g = torch.Generator().manual_seed(seed)
    tc = cls(cfg_cls(d_in=d_in, d_sae=d_sae, d_out=d_in, dtype="float32", device="cpu", apply_b_dec_to_input=False))
    with torch.no_grad():
        tc.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        tc.b_enc.copy_(torch.full((d_sae,), -0.5))  # about a third of the features fire: a sparse-ish graph
        tc.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) * 0.1)
        tc.b_dec.copy_(torch.randn(d_in, generator=g) * 0.01)
    for key, value in metadata.items():
        tc.cfg.metadata[key] = value
    return tc


@pytest.fixture(scope="module")
def organism():
    model = load_model("adder-direct")
    transcoders = {layer: random_transcoder(seed=layer) for layer in range(model.cfg.n_layers)}
    rm = replacement_model(model, transcoders)
    return model, transcoders, rm


@pytest.fixture(scope="module")
def result(organism):
    return attribute_prompt(organism[2], PROMPT)


def test_replacement_model_reproduces_the_model_logits(organism):
    model, _, rm = organism
    tokens = model.to_tokens(["36+59=", "12+34=", "87+65="])
    with torch.no_grad():
        torch.testing.assert_close(rm(tokens), model(tokens), atol=1e-5, rtol=0)
    assert rm.cfg.dtype == torch.float32 and all(p.dtype == torch.float32 for p in rm.transcoders.parameters())


def test_transcoders_plus_error_nodes_are_the_mlps(organism):
    """Same transcoder in both layouts; error node = mlp_out - transcoder(resid_mid) (none at BOS, which
    circuit-tracer treats as a constant); and a forward pass whose MLPs are replaced by transcoder + error gives
    the model's logits."""
    model, transcoders, rm = organism
    tokens = model.to_tokens(PROMPT)[0]
    ctx = rm.setup_attribution(tokens)
    logits, cache = model.run_with_cache(tokens[None])
    errors = {}
    for layer, tc in transcoders.items():
        x, y = cache[f"blocks.{layer}.hook_resid_mid"][0], cache[f"blocks.{layer}.hook_mlp_out"][0]
        with torch.no_grad():
            recon = tc(x)
            torch.testing.assert_close(rm.transcoders[layer](x), recon, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ctx.error_vectors[layer, 1:] + recon[1:], y[1:], atol=1e-5, rtol=1e-5)
        assert ctx.error_vectors[layer, 0].abs().max() == 0
        errors[layer] = torch.cat([y[:1] - recon[:1], ctx.error_vectors[layer, 1:]])

    resid_mid = {}

    def keep(acts, hook):
        resid_mid[hook.layer()] = acts

    def replace(acts, hook):
        return transcoders[hook.layer()](resid_mid[hook.layer()]) + errors[hook.layer()]

    hooks = [(f"blocks.{layer}.hook_resid_mid", keep) for layer in transcoders]
    hooks += [(f"blocks.{layer}.hook_mlp_out", replace) for layer in transcoders]
    with torch.no_grad():
        torch.testing.assert_close(model.run_with_hooks(tokens[None], fwd_hooks=hooks), logits, atol=1e-4, rtol=0)


def test_attribution_result(result, organism):
    model = organism[0]
    assert result.tokens == model.to_tokens(PROMPT)[0].tolist() and result.str_tokens[0] == "<bos>"
    assert result.top_token == model.to_string(model(PROMPT)[0, -1].argmax())
    assert 0 <= result.replacement_score <= 1 and 0 <= result.completeness_score <= 1
    assert result.n_feature_nodes == result.n_active_features > 0
    n = result.n_feature_nodes + (model.cfg.n_layers + 1) * len(result.tokens) + len(result.graph.logit_targets)
    assert result.graph.adjacency_matrix.shape == (n, n)
    summary = json.loads(json.dumps(result.summary()))
    assert summary["logit_targets"][0]["token"] == result.top_token


def test_attribution_is_deterministic(organism, result):
    again = attribute_prompt(organism[2], PROMPT)
    assert torch.equal(again.graph.adjacency_matrix, result.graph.adjacency_matrix)
    assert again.replacement_score == result.replacement_score


def test_max_feature_nodes_caps_the_graph(organism):
    capped = attribute_prompt(organism[2], PROMPT, max_feature_nodes=50, max_n_logits=2)
    assert capped.n_feature_nodes == 50 < capped.n_active_features
    assert len(capped.graph.logit_targets) <= 2


def test_attribution_targets(organism):
    """A chosen token's logit, or a logit difference (circuit-tracer's CustomTarget): one logit node each."""
    model, _, rm = organism
    tok = model.to_single_token("7")
    one = attribute_prompt(rm, PROMPT, target=("token", tok))
    assert [t.token_str for t in one.graph.logit_targets] == ["7"]
    diff = attribute_prompt(rm, PROMPT, target=("diff", tok, model.to_single_token("3")))
    assert len(diff.graph.logit_targets) == 1 and "logit('7') - logit('3')" in diff.graph.logit_targets[0].token_str
    for bad in [("token",), ("token", 10**6), ("diff", tok), ("sum", 1, 2), "7"]:
        with pytest.raises(WorkbenchError, match="target"):
            attribute_prompt(rm, PROMPT, target=bad)


@pytest.mark.parametrize("prompt", ["", "36*59="])
def test_attribute_refuses_bad_prompts(organism, prompt):
    with pytest.raises(WorkbenchError):
        attribute_prompt(organism[2], prompt)


def test_graph_json_validates_against_circuit_tracer_models(result, tmp_path):
    path = write_graph_json(result, tmp_path, "adder-a")
    assert path == tmp_path / "adder-a.json"
    graph = load_graph_json(path)  # circuit-tracer's pydantic Model: raises if the file does not fit it
    ids = {node.node_id for node in graph.nodes}
    assert graph.links and all(link["source"] in ids and link["target"] in ids for link in graph.links)
    assert {"embedding", "logit"} <= {node.feature_type for node in graph.nodes}
    target = [node for node in graph.nodes if node.is_target_logit]
    assert len(target) == 1 and target[0].feature == result.graph.logit_targets[0].vocab_idx
    assert graph.metadata.slug == "adder-a" and graph.metadata.prompt_tokens == result.str_tokens
    assert graph.metadata.scan.startswith("workbench-tc-")

    write_graph_json(result, tmp_path, "adder-b", node_threshold=0.5)
    write_graph_json(result, tmp_path, "adder-a")  # rewriting a slug replaces its index entry
    index = json.loads((tmp_path / GRAPH_INDEX).read_text())
    assert sorted(g["slug"] for g in index["graphs"]) == ["adder-a", "adder-b"]
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


@pytest.mark.parametrize("kwargs", [{"slug": "../x"}, {"slug": ""}, {"slug": "a", "node_threshold": 1.5},
                                    {"slug": "a", "edge_threshold": -0.1}])
def test_graph_json_refusals(result, tmp_path, kwargs):
    with pytest.raises(WorkbenchError):
        write_graph_json(result, tmp_path, **kwargs)


def test_top_features(result):
    rows = top_features(result, n=8)
    assert len(rows) == 8
    assert [r["influence"] for r in rows] == sorted((r["influence"] for r in rows), reverse=True)
    for r in rows:
        assert r["activation"] > 0 and r["token"] == result.str_tokens[r["pos"]] and r["pos"] > 0
    assert len(top_features(result, n=10_000, node_threshold=0.3)) <= len(top_features(result, n=10_000))
    with pytest.raises(WorkbenchError):
        top_features(result, node_threshold=2.0)


def test_validate_by_intervention(organism, result):
    report = validate_by_intervention(organism[2], result, n_features=6)
    assert 0.0 <= report["agreement_rate"] <= 1.0
    assert report["spearman"] is None or -1.0 <= report["spearman"] <= 1.0
    assert report["n_features"] == len(report["features"]) == 6
    assert report["target_token"] == result.top_token
    # Zeroing a feature with everything else frozen changes the logit by exactly minus its direct edge.
    assert report["direct_max_abs_error"] < 1e-4
    last = [r for r in report["features"] if r["layer"] == organism[0].cfg.n_layers - 1]
    assert last  # nothing runs after the last MLP but the (frozen) final LayerNorm: the graph is exact there
    for row in last:
        assert abs(row["measured_total"] - row["predicted_total"]) < 1e-4
    json.dumps(report)
    free = validate_by_intervention(organism[2], result, n_features=3, freeze_layernorm=False)
    assert free["freeze_layernorm"] is False and len(free["features"]) == 3
    with pytest.raises(WorkbenchError):
        validate_by_intervention(organism[2], result, n_features=0)


def test_serve_graphs_refuses_a_directory_without_graphs(tmp_path):
    with pytest.raises(WorkbenchError, match=GRAPH_INDEX):
        serve_graphs(tmp_path, 8032)


# ---- refusals of transcoders that do not fit ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    return tiny_model(seed=3, arch=ArchConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=64))


@pytest.mark.parametrize("make, message", [
    (dict, "non-empty"),
    (lambda: {0: random_transcoder(32, 64), 2: random_transcoder(32, 64)}, "0..n-1"),
    (lambda: {0: random_transcoder(32, 64), 1: random_transcoder(32, 48)}, "share d_in and d_sae"),
    (lambda: {0: random_transcoder(32, 64), 1: "not a transcoder"}, "only plain ReLU"),
    (lambda: {0: random_transcoder(32, 64), 1: random_transcoder(32, 64, cls=SkipTranscoder,
                                                                 cfg_cls=SkipTranscoderConfig)}, "skip_transcoder"),
    (lambda: {0: random_transcoder(32, 64, hook_name="blocks.0.hook_resid_pre"), 1: random_transcoder(32, 64)},
     "hook_resid_mid"),
])
def test_transcoder_set_refusals(make, message):
    with pytest.raises(WorkbenchError, match=message):
        transcoder_set(make())


@pytest.mark.parametrize("make, message", [
    (lambda: {i: random_transcoder(32, 64) for i in range(3)}, "2 layers"),
    (lambda: {i: random_transcoder(64, 64) for i in range(2)}, "d_in 64"),
])
def test_replacement_model_refuses_mismatched_transcoders(tiny, make, message):
    with pytest.raises(WorkbenchError, match=message):
        replacement_model(tiny, make())


def test_transcoder_set_accepts_matching_metadata(tiny):
    tcs = {i: random_transcoder(32, 64, seed=i, hook_name=f"blocks.{i}.hook_resid_mid",
                                hook_name_out=f"blocks.{i}.hook_mlp_out") for i in range(2)}
    rm = replacement_model(tiny, tcs, scan="my-scan")
    assert rm.scan == "my-scan" and len(rm.transcoders) == 2
    assert not any(p.requires_grad is False for p in tcs[0].parameters())  # the caller's transcoders untouched


def test_frontend_serves_a_written_graph(result, tmp_path):
    """circuit-tracer's own frontend, started on a free port, serves its page and a graph written after it
    started (what the explorer's Circuit page embeds)."""
    import urllib.request

    from workbench.circuits import frontend_url, start_frontend

    import gzip

    def get(url):
        with urllib.request.urlopen(url, timeout=10) as r:  # the server gzips files over 1 MB
            body = r.read()
            return gzip.decompress(body) if r.headers.get("Content-Encoding") == "gzip" else body

    directory, port, server = start_frontend(tmp_path / "graphs")
    try:
        write_graph_json(result, directory, "g1")
        assert "attribution graph" in get(frontend_url(port, "g1")).decode().lower()
        graph = json.loads(get(f"http://localhost:{port}/graph_data/g1.json"))
        assert graph["metadata"]["slug"] == "g1"
        index = json.loads(get(f"http://localhost:{port}/data/graph-metadata.json"))
        assert [g["slug"] for g in index["graphs"]] == ["g1"]
    finally:
        server.stop()
