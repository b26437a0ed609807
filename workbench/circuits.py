"""Attribution graphs (circuit-tracer) of a workbench model with per-layer SAELens transcoders.

A transcoder for layer L reads ``blocks.L.hook_resid_mid`` and writes ``blocks.L.hook_mlp_out`` (circuit-tracer's
TransformerLens convention). :func:`replacement_model` builds circuit-tracer's replacement model carrying our
model's exact weights: its forward pass still runs the real MLPs, so its logits equal the model's; the transcoders
only define the graph's nodes, and each MLP's residual ``mlp_out - transcoder(resid_mid)`` becomes an error node.

Graph edges are direct effects in the *local replacement model* (attention patterns, LayerNorm scales and error
nodes frozen at the prompt; MLPs replaced by the transcoders). Edges into a feature are in units of its
pre-activation, edges out of it are scaled by its activation; logit nodes are demeaned logits (logit - mean logit).
The graph explains exactly the token ids the rest of the workbench uses (``model.to_tokens(prompt)``):
circuit-tracer's own tokenization, which prepends a dummy special token to a sequence that does not start with
one (a model without BOS would then be explained on another input) and fails when the only special token has id
0, is replaced. When ``to_tokens`` prepends a BOS, position 0 (the BOS) has no feature or error nodes:
circuit-tracer treats its MLP output as a constant; a model without BOS has nodes at every position.
"""

from __future__ import annotations

import atexit
import copy
import json
import math
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from workbench.deps import check_tested

check_tested("circuit-tracer")  # the only one on PyPI is a fork: use it only at the release and code tested

from circuit_tracer.attribution.attribute import attribute  # noqa: E402
from circuit_tracer.frontend.graph_models import Model as GraphModel
from circuit_tracer.graph import Graph, compute_graph_scores, compute_node_influence, find_threshold, prune_graph
from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
from circuit_tracer.transcoder import SingleLayerTranscoder, TranscoderSet
from circuit_tracer.utils.create_graph_files import build_model, create_nodes, create_used_nodes_and_edges
from sae_lens import Transcoder
from torch import Tensor
from transformer_lens import HookedTransformer

from workbench.errors import WorkbenchError
from workbench.io import atomic_write, write_json
from workbench.models.checkpoint import weights_sha256
from workbench.models.tokenizer import tokenize_prompts
from workbench.patching import spearman

FEATURE_INPUT_HOOK = "hook_resid_mid"
FEATURE_OUTPUT_HOOK = "hook_mlp_out"
GRAPH_INDEX = "graph-metadata.json"  # the index circuit-tracer's frontend lists graphs from
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def transcoder_set(transcoders: dict[int, Transcoder], scan: str | None = None) -> TranscoderSet:
    """Copy SAELens ReLU transcoders (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]``) into circuit-tracer's
    ``SingleLayerTranscoder`` layout (``W_enc [d_sae, d_in]``), float32, one per layer 0..n-1.

    ``scan`` names the set in graph files; by default a digest of the weights, so a graph says which set made it.
    """
    if not isinstance(transcoders, dict) or not transcoders:
        raise WorkbenchError("transcoders must be a non-empty dict {layer: sae_lens.Transcoder}")
    layers = sorted(transcoders)
    if layers != list(range(len(layers))):
        raise WorkbenchError(f"transcoders must cover layers 0..n-1 with no gap, got layers {layers}")
    shapes = set()
    for layer, tc in transcoders.items():
        if not isinstance(tc, Transcoder) or tc.cfg.architecture() != "transcoder":
            kind = tc.cfg.architecture() if isinstance(tc, Transcoder) else type(tc).__name__
            raise WorkbenchError(f"layer {layer}: only plain ReLU sae_lens.Transcoder (architecture 'transcoder') "
                                 f"is supported, got {kind}")
        if tc.cfg.normalize_activations != "none" or tc.cfg.reshape_activations != "none":
            raise WorkbenchError(f"layer {layer}: transcoders with input normalization or reshaping are not "
                                 f"supported (need normalize_activations='none', reshape_activations='none')")
        if tc.cfg.d_in != tc.cfg.d_out:
            raise WorkbenchError(f"layer {layer}: d_in {tc.cfg.d_in} != d_out {tc.cfg.d_out}; a transcoder from "
                                 f"resid_mid to mlp_out maps d_model to d_model")
        if not all(torch.isfinite(p).all() for p in (tc.W_enc, tc.b_enc, tc.W_dec, tc.b_dec)):
            raise WorkbenchError(f"layer {layer}: the transcoder's weights hold nan or inf")
        for key, want in (("hook_name", FEATURE_INPUT_HOOK), ("hook_name_out", FEATURE_OUTPUT_HOOK)):
            got = tc.cfg.metadata.get(key)
            if got is not None and got != f"blocks.{layer}.{want}":
                raise WorkbenchError(f"layer {layer}: transcoder {key} is {got!r}, expected 'blocks.{layer}.{want}'")
        shapes.add((tc.cfg.d_in, tc.cfg.d_sae))
    if len(shapes) > 1:
        raise WorkbenchError(f"all transcoders must share d_in and d_sae, got (d_in, d_sae) = {sorted(shapes)}")
    out = {}
    for layer, tc in transcoders.items():
        slt = SingleLayerTranscoder(tc.cfg.d_in, tc.cfg.d_sae, F.relu, layer, device="cpu", dtype=torch.float32)
        with torch.no_grad():  # copies: the replacement model turns off requires_grad on every parameter it holds
            slt.W_enc.copy_(tc.W_enc.detach().T)
            slt.W_dec.copy_(tc.W_dec.detach())
            slt.b_enc.copy_(tc.b_enc.detach())
            slt.b_dec.copy_(tc.b_dec.detach())
        out[layer] = slt
    tset = TranscoderSet(out, feature_input_hook=FEATURE_INPUT_HOOK, feature_output_hook=FEATURE_OUTPUT_HOOK)
    tset.scan = scan or f"workbench-tc-{weights_sha256(tset)[:12]}"
    return tset


def _replacement_key(key: str) -> str:
    """Our weight name -> the replacement model's: from_config wraps each MLP (``ReplacementMLP.old_mlp``) and the
    unembedding (``ReplacementUnembed.old_unembed``) to add hook points around them."""
    key = re.sub(r"^(blocks\.\d+\.mlp)\.", r"\1.old_mlp.", key)
    return re.sub(r"^unembed\.", "unembed.old_unembed.", key)


class _ReplacementModel(TransformerLensReplacementModel):
    """circuit-tracer's replacement model, reading prompts as the workbench does: a string becomes
    ``to_tokens(prompt)`` (with the model's own BOS, or none), and token ids are used as given, never with a
    dummy BOS prepended (circuit-tracer's ``ensure_tokenized`` adds one to any sequence that does not start with
    a special token, and picks it with ``next(filter(None, ids))``, which fails when that token's id is 0)."""

    def ensure_tokenized(self, prompt: str | Tensor | list[int]) -> Tensor:
        if isinstance(prompt, str):
            return tokenize_prompts(self, [prompt])[0]
        tokens = torch.as_tensor(prompt, dtype=torch.long)
        if tokens.ndim == 2 and tokens.shape[0] == 1:
            tokens = tokens[0]
        if tokens.ndim != 1 or tokens.numel() == 0:
            raise WorkbenchError(f"a prompt's token ids must be one non-empty sequence, got shape "
                                 f"{tuple(tokens.shape)}")
        return tokens.to(self.cfg.device)


def bos_positions(model: HookedTransformer) -> int:
    """How many positions ``model.to_tokens`` puts before a prompt's text: 1 (its BOS) or 0 (a model without
    BOS, such as Qwen2's, or one whose ``default_prepend_bos`` is off)."""
    return 1 if model.cfg.default_prepend_bos else 0


def replacement_model(model: HookedTransformer, transcoders: dict[int, Transcoder],
                      scan: str | None = None) -> TransformerLensReplacementModel:
    """circuit-tracer's TransformerLens replacement model with ``model``'s config, weights and tokenizer, reading
    prompts exactly as ``model.to_tokens`` does."""
    cfg = model.cfg
    if cfg.attn_only or cfg.parallel_attn_mlp:
        raise WorkbenchError("attribution graphs need sequential attention-then-MLP blocks (hook_resid_mid); "
                             "this model is attention-only or runs attention and MLP in parallel")
    tset = transcoder_set(transcoders, scan)
    d_in = tset[0].d_model
    if len(tset) != cfg.n_layers or d_in != cfg.d_model:
        raise WorkbenchError(f"the model has {cfg.n_layers} layers of d_model {cfg.d_model}; got transcoders for "
                             f"{len(tset)} layers with d_in {d_in} (need one per layer, d_in = d_model)")
    if model.tokenizer is None:
        raise WorkbenchError("the model has no tokenizer; attribution graphs need one to label tokens")
    rm = _ReplacementModel.from_config(copy.deepcopy(cfg), tset, tokenizer=model.tokenizer)
    # Position 0 is left out of the graph only where it is the BOS to_tokens prepends; circuit-tracer decides by
    # the model's name (its "gemma-3...-it" case drops four positions), which for a local model is a path.
    rm.zero_positions = slice(0, bos_positions(model))
    state = {_replacement_key(k): v for k, v in model.state_dict().items()}
    missing, unexpected = rm.load_state_dict(state, strict=False)  # the transcoders are already in place
    if unexpected or any(not k.startswith("transcoders.") for k in missing):
        raise RuntimeError(f"weight names did not map onto the replacement model: missing {missing}, "
                           f"unexpected {unexpected}")
    return rm.eval()


@dataclass
class CircuitResult:
    """One attribution graph and what it says about itself."""

    graph: Graph
    prompt: str
    tokens: list[int]  # [pos], as model.to_tokens(prompt) gives them (BOS first where the model has one)
    str_tokens: list[str]
    replacement_score: float  # fraction of token->logit influence through features, not error nodes
    completeness_score: float  # influence-weighted fraction of node inputs that are not error nodes
    seconds: float
    n_active_features: int
    n_feature_nodes: int  # features given rows in the graph (max_feature_nodes caps it)
    top_token: str
    top_prob: float
    tokenizer: object = field(repr=False, default=None)

    def summary(self) -> dict:
        """The JSON-able fields, and the logit targets the graph explains with their probabilities."""
        out = {k: getattr(self, k) for k in ("prompt", "str_tokens", "replacement_score", "completeness_score",
                                             "seconds", "n_active_features", "n_feature_nodes", "top_token",
                                             "top_prob")}
        probs = self.graph.logit_probabilities.tolist()
        out["logit_targets"] = [{"token": t.token_str, "id": t.vocab_idx, "prob": p}
                                for t, p in zip(self.graph.logit_targets, probs)]
        return out


def attribution_targets(rm: TransformerLensReplacementModel, target: tuple | None):
    """circuit-tracer's ``attribution_targets`` for a target: ``("token", id)`` explains that token's logit,
    ``("diff", a, b)`` the logit difference logit(a) - logit(b) (a custom unembedding direction, circuit-tracer's
    ``CustomTarget``); None: the salient logits (circuit-tracer's default)."""
    if target is None:
        return None
    kinds = {"token": 2, "diff": 3}
    if not isinstance(target, tuple) or not target or target[0] not in kinds or len(target) != kinds[target[0]]:
        raise WorkbenchError(f"target must be None, ('token', id) or ('diff', id_a, id_b); got {target!r}")
    ids = target[1:]
    if not all(isinstance(t, int) and 0 <= t < rm.cfg.d_vocab for t in ids):
        raise WorkbenchError(f"target token ids {list(ids)} are outside the vocabulary (0..{rm.cfg.d_vocab - 1})")
    if target[0] == "token":
        return torch.tensor([target[1]])
    from circuit_tracer.attribution.targets import CustomTarget

    _, a, b = target
    name = f"logit({rm.tokenizer.decode([a])!r}) - logit({rm.tokenizer.decode([b])!r})"
    w_u = rm.unembed.W_U if hasattr(rm.unembed, "W_U") else rm.W_U
    return [CustomTarget(name, 1.0, (w_u[:, a] - w_u[:, b]).detach().clone())]


def attribute_prompt(rm: TransformerLensReplacementModel, prompt: str, max_n_logits: int = 5,
                     desired_logit_prob: float = 0.95, batch_size: int = 256,
                     max_feature_nodes: int | None = None, target: tuple | None = None) -> CircuitResult:
    """The attribution graph of ``prompt``'s next-token prediction, on exactly ``model.to_tokens(prompt)`` (BOS
    first where the model prepends one, nothing added where it does not). ``target`` chooses what is explained
    (:func:`attribution_targets`); by default the most likely logits up to ``desired_logit_prob``."""
    if not isinstance(prompt, str) or not prompt:
        raise WorkbenchError("prompt must be a non-empty string")
    if max_n_logits < 1 or not 0 < desired_logit_prob <= 1 or batch_size < 1:
        raise WorkbenchError("need max_n_logits >= 1, 0 < desired_logit_prob <= 1 and batch_size >= 1")
    if max_feature_nodes is not None and max_feature_nodes < 1:
        raise WorkbenchError(f"max_feature_nodes must be >= 1 or None (all), got {max_feature_nodes}")
    targets = attribution_targets(rm, target)
    tokens = tokenize_prompts(rm, [prompt])[0]
    start = time.perf_counter()
    with warnings.catch_warnings():  # torch warns on every backward pass that no *input* requires grad: by design
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        kw = {} if targets is None else {"attribution_targets": targets}
        graph = attribute(tokens, rm, max_n_logits=min(max_n_logits, rm.cfg.d_vocab_out),
                          desired_logit_prob=desired_logit_prob, batch_size=batch_size,
                          max_feature_nodes=max_feature_nodes, **kw)
    seconds = time.perf_counter() - start
    ids = tokens.tolist()
    if graph.input_tokens.tolist() != ids:  # a replacement model not built by replacement_model() adds a BOS
        raise WorkbenchError(f"circuit-tracer explained tokens {graph.input_tokens.tolist()}, not the prompt's "
                             f"{ids}; build the replacement model with workbench.circuits.replacement_model")
    replacement, completeness = compute_graph_scores(graph)
    return CircuitResult(
        graph=graph, prompt=prompt, tokens=ids, str_tokens=[rm.tokenizer.decode([t]) for t in ids],
        replacement_score=replacement, completeness_score=completeness, seconds=seconds,
        n_active_features=len(graph.active_features), n_feature_nodes=len(graph.selected_features),
        top_token=graph.logit_targets[0].token_str, top_prob=float(graph.logit_probabilities[0]),
        tokenizer=rm.tokenizer)


def _check_threshold(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise WorkbenchError(f"{name} must be in [0, 1] (a fraction of total influence), got {value}")


def check_slug(slug) -> None:
    """Refuse a graph name that cannot name a file and a URL (before any graph is computed for it)."""
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
        raise WorkbenchError(f"slug {slug!r} must be 1-128 letters, digits, '_', '-' or '.', starting with a letter "
                             f"or digit (it names a file and a URL)")


def write_graph_json(result: CircuitResult, path: str | Path, slug: str, node_threshold: float = 0.8,
                     edge_threshold: float = 0.98) -> Path:
    """Write the pruned graph as ``<path>/<slug>.json`` and list it in ``<path>/graph-metadata.json``: the files
    circuit-tracer's frontend (:func:`serve_graphs`) and Neuronpedia read. Returns the graph file's path.

    Same content as ``circuit_tracer.utils.create_graph_files`` (whose pieces it calls), but with the model's own
    tokenizer (that function re-loads one by ``cfg.tokenizer_name``, which our models lack) and atomic writes.
    """
    check_slug(slug)
    _check_threshold("node_threshold", node_threshold)
    _check_threshold("edge_threshold", edge_threshold)
    graph, out_dir = result.graph, Path(path)
    if out_dir.exists() and not out_dir.is_dir():
        raise WorkbenchError(f"{out_dir} exists and is not a directory")
    node_mask, edge_mask, cumulative = prune_graph(graph, node_threshold, edge_threshold)
    nodes = create_nodes(graph, node_mask, result.tokenizer, cumulative)
    used_nodes, used_edges = create_used_nodes_and_edges(graph, nodes, edge_mask)
    doc = build_model(graph, used_nodes, used_edges, slug, graph.scan, node_threshold, result.tokenizer)
    target = atomic_write(out_dir / f"{slug}.json", lambda p: p.write_text(doc.model_dump_json(indent=2)))
    list_graph(out_dir, doc.metadata.model_dump())
    return target


def load_graph_json(path: str | Path) -> GraphModel:
    """A graph file read back through circuit-tracer's own pydantic model (validates it)."""
    return GraphModel.model_validate_json(Path(path).read_text())


def _logit_weights(graph: Graph) -> Tensor:
    w = torch.zeros(graph.adjacency_matrix.shape[0])
    w[-len(graph.logit_targets):] = graph.logit_probabilities.cpu()
    return w


def _total_effects(graph: Graph, logit: int = 0) -> Tensor:
    """[node] each node's signed contribution to logit target ``logit`` summed over all paths of the graph.

    Not ``A + A^2 + ...``: an edge into a feature is in units of its pre-activation while an edge out of it is
    scaled by its activation, so a path s -> t -> logit weighs ``A[t, s] * A[logit, t] / act_t`` (t taken to stay
    in ReLU's linear part, which is what the intervention then tests).
    """
    A = graph.adjacency_matrix.cpu().double()
    n_feat = len(graph.selected_features)
    inv_act = torch.zeros(A.shape[0], dtype=A.dtype)
    inv_act[:n_feat] = 1.0 / graph.activation_values[graph.selected_features].cpu().double()
    step = A[A.shape[0] - len(graph.logit_targets) + logit].clone()
    total = step.clone()
    for _ in range(graph.cfg.n_layers + 1):  # feature -> feature hops go up a layer, so paths end by then
        step = (step * inv_act) @ A
        total += step
    return total


def top_features(result: CircuitResult, n: int = 10, node_threshold: float = 0.8) -> list[dict]:
    """The ``n`` features of highest influence (circuit-tracer's, as pruning uses) among those kept at
    ``node_threshold``. ``direct``/``total``: signed contribution to the top logit's demeaned value (direct edge;
    all paths through features, linearized); removing the feature is predicted to change that logit by minus it.
    """
    _check_threshold("node_threshold", node_threshold)
    graph = result.graph
    n_feat = len(graph.selected_features)
    influence = compute_node_influence(graph.adjacency_matrix.cpu(), _logit_weights(graph))
    kept = influence >= find_threshold(influence, node_threshold)
    order = [i for i in torch.argsort(influence[:n_feat], descending=True).tolist() if kept[i]][:max(n, 0)]
    top_row = graph.adjacency_matrix.shape[0] - len(graph.logit_targets)
    total = _total_effects(graph)
    rows = []
    for i in order:
        idx = int(graph.selected_features[i])
        layer, pos, feature = graph.active_features[idx].tolist()
        rows.append({"node": i, "layer": layer, "pos": pos, "token": result.str_tokens[pos], "feature": feature,
                     "activation": float(graph.activation_values[idx]), "influence": float(influence[i]),
                     "direct": float(graph.adjacency_matrix[top_row, i]), "total": float(total[i])})
    return rows


def _demeaned(logits: Tensor, token: int) -> float:
    last = logits.reshape(-1, logits.shape[-1])[-1].double()
    return float(last[token] - last.mean())


def _layernorm_freeze_hooks(rm: TransformerLensReplacementModel, tokens: Tensor) -> list:
    """Hooks that pin every LayerNorm scale to its value on ``tokens`` (as the graph's linearization does)."""
    names = [name for name in rm.hook_dict if name.endswith("hook_scale")]
    _, cache = rm.run_with_cache(tokens[None], names_filter=names)
    return [(name, lambda acts, hook: cache[hook.name]) for name in names]


@torch.no_grad()
def validate_by_intervention(rm: TransformerLensReplacementModel, result: CircuitResult,
                             n_features: int = 10, freeze_layernorm: bool = True) -> dict:
    """Zero each of the top ``n_features`` features (circuit-tracer's ``feature_intervention`` on the replacement
    model) and compare the change in the top logit's demeaned value with the graph's prediction.

    Two interventions per feature:
      * ``direct``: ``constrained_layers`` = every layer, which freezes attention patterns, LayerNorm scales and
        all MLP outputs, so only the feature's direct edge acts: measured must equal predicted (a plumbing check);
      * ``total``: iterative patching with attention patterns frozen (circuit-tracer's default) and, unless
        ``freeze_layernorm`` is False, LayerNorm scales frozen too (circuit-tracer leaves them free here): the
        real downstream MLPs respond. Compared with the graph's all-paths prediction; the agreement rate (same
        sign) and Spearman correlation are over these. ``indirect`` is the part predicted to flow through other
        features: rows where it is 0 (last-layer features) only test LayerNorm, or nothing when it is frozen.
    """
    if n_features < 1:
        raise WorkbenchError(f"n_features must be >= 1, got {n_features}")
    graph = result.graph
    if graph.input_tokens.tolist() != result.tokens:
        raise WorkbenchError("the result's graph and tokens disagree; pass the CircuitResult attribute_prompt made")
    tokens = torch.tensor(result.tokens, device=rm.cfg.device)
    target = graph.logit_targets[0].vocab_idx
    base = _demeaned(rm(tokens[None]), target)
    ln_hooks = _layernorm_freeze_hooks(rm, tokens) if freeze_layernorm else []
    rows = []
    for f in top_features(result, n_features, node_threshold=1.0):
        iv = [(f["layer"], f["pos"], f["feature"], 0.0)]
        direct, _ = rm.feature_intervention(tokens, iv, constrained_layers=range(rm.cfg.n_layers),
                                            return_activations=False)
        with rm.hooks(fwd_hooks=ln_hooks):
            total, _ = rm.feature_intervention(tokens, iv, freeze_attention=True, return_activations=False)
        rows.append({**f, "predicted_direct": -f["direct"], "measured_direct": _demeaned(direct, target) - base,
                     "predicted_total": -f["total"], "measured_total": _demeaned(total, target) - base,
                     "indirect": f["direct"] - f["total"]})
    pred = torch.tensor([r["predicted_total"] for r in rows])
    meas = torch.tensor([r["measured_total"] for r in rows])
    rho = spearman(pred, meas) if len(rows) > 2 else float("nan")
    return {
        "target_token": graph.logit_targets[0].token_str, "target_prob": float(graph.logit_probabilities[0]),
        "baseline_demeaned_logit": base, "freeze_layernorm": freeze_layernorm, "n_features": len(rows),
        "agreement_rate": float((torch.sign(pred) == torch.sign(meas)).double().mean()) if rows else None,
        "spearman": None if math.isnan(rho) else rho,  # NaN (constant or too few values) is not JSON
        "direct_max_abs_error": max((abs(r["predicted_direct"] - r["measured_direct"]) for r in rows), default=0.0),
        "features": rows,
    }


def list_graph(directory: str | Path, entry: dict) -> None:
    """Add a graph's metadata ``entry`` to ``directory``'s index (the list circuit-tracer's frontend reads),
    replacing an entry of the same slug."""
    index_path = Path(directory) / GRAPH_INDEX
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"graphs": []}
    index["graphs"] = [g for g in index.get("graphs", []) if g.get("slug") != entry.get("slug")] + [entry]
    write_json(index_path, index)


def start_frontend(directory: str | Path | None = None, port: int = 0):
    """circuit-tracer's frontend serving ``directory`` (a new temporary one when None, with an empty index) on
    ``port`` (0: a free one). Returns ``(directory, port, server)``; graphs written there later with
    :func:`write_graph_json` show up on reload at ``http://localhost:<port>/index.html?slug=<slug>``."""
    import socket

    if directory is None:  # ours: removed when the process ends
        directory = Path(tempfile.mkdtemp(prefix="workbench-graphs-"))
        atexit.register(shutil.rmtree, directory, True)
    directory = Path(directory)
    if not (directory / GRAPH_INDEX).is_file():
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / GRAPH_INDEX, {"graphs": []})
    if port == 0:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
    return directory, port, serve_graphs(directory, port)


def frontend_url(port: int, slug: str) -> str:
    """The frontend's page for one graph."""
    return f"http://localhost:{port}/index.html?slug={slug}"


def serve_graphs(directory: str | Path, port: int = 8032):
    """Serve the graph files in ``directory`` with circuit-tracer's frontend at ``http://localhost:<port>/index.html``
    (in a daemon thread; keep the process alive, call ``.stop()`` on the returned server to end it)."""
    from circuit_tracer.frontend.local_server import serve

    directory = Path(directory)
    if not (directory / GRAPH_INDEX).is_file():
        raise WorkbenchError(f"{directory} has no {GRAPH_INDEX}; write graphs there with write_graph_json first")
    if not 0 < port < 65536:
        raise WorkbenchError(f"port must be in 1..65535, got {port}")
    return serve(data_dir=str(directory.resolve()), port=port)
