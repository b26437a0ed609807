"""Circuit: the attribution graph (circuit-tracer, our per-layer transcoders) of a prompt's next token."""

import re
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from apps.common import (
    beside_model,
    dir_stamp,
    guarded,
    guarded_load,
    is_dir,
    pick_model,
    picked_spec,
    shorten,
    valid_text,
)

EDGE_THRESHOLD = 0.98  # circuit-tracer's default share of edge influence kept
COLOURS = {"feature": "#1f77b4", "error": "#7f7f7f", "embedding": "#2ca02c", "logit": "#d62728"}


@st.cache_resource(show_spinner="loading the transcoders", max_entries=4)
def replacement(spec: str, tc_dir: str, stamp: int):
    from apps.common import load
    from workbench.circuits import replacement_model
    from workbench.saes import load_transcoders

    model = load(spec)
    return replacement_model(model, load_transcoders(tc_dir, model))


@st.cache_resource(show_spinner=False, max_entries=32)
def attribution(spec: str, tc_dir: str, stamp: int, prompt: str):
    from workbench.circuits import attribute_prompt

    return attribute_prompt(replacement(spec, tc_dir, stamp), prompt)


@st.cache_resource(show_spinner=False, max_entries=32)
def validation(spec: str, tc_dir: str, stamp: int, prompt: str, n: int) -> dict:
    from workbench.circuits import validate_by_intervention

    return validate_by_intervention(replacement(spec, tc_dir, stamp), attribution(spec, tc_dir, stamp, prompt), n)


def slug_of(prompt: str) -> str:
    return ("graph-" + re.sub(r"[^A-Za-z0-9_.-]", "_", prompt))[:128]


@st.cache_data(show_spinner="writing the graph file", max_entries=64)
def graph_files(spec: str, tc_dir: str, stamp: int, prompt: str, node_threshold: float) -> tuple[bytes, bytes]:
    """The graph JSON write_graph_json writes, and a zip of it with the index the frontend lists graphs from."""
    import io
    import zipfile

    from workbench.circuits import write_graph_json

    with tempfile.TemporaryDirectory() as tmp:
        path = write_graph_json(attribution(spec, tc_dir, stamp, prompt), tmp, slug_of(prompt), node_threshold)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(Path(tmp).iterdir()):
                z.write(f, f.name)
        return path.read_bytes(), buf.getvalue()


@st.cache_data(show_spinner=False)
def layer_labels(dash_dir: str, stamp: int) -> list:
    """Feature labels from a transcoder's dashboard (``None`` per unlabelled feature)."""
    from workbench.dashboards import load_dashboard

    return load_dashboard(dash_dir).table()["label"].tolist()


def label_of(labels: dict[int, list], layer: int, feature: int):
    got = labels.get(layer, [])
    return got[feature] if feature < len(got) else None


def labels_for(tc_dir: str, n_layers: int, problems: list | None = None) -> dict[int, list]:
    """Each layer's feature labels where ``layer_L/dashboard`` holds a dashboard; an unreadable one only costs
    its labels (its error goes to ``problems``)."""
    from workbench.errors import WorkbenchError

    out = {}
    for layer in range(n_layers):
        d = Path(tc_dir) / f"layer_{layer}" / "dashboard"
        if (d / "dashboard.json").is_file():
            try:
                out[layer] = layer_labels(str(d), dir_stamp(str(d)))
            except (WorkbenchError, OSError, ValueError, KeyError) as e:
                if problems is not None:
                    problems.append(f"layer {layer}: {e}")
    return out


@st.cache_resource(show_spinner="laying out the graph", max_entries=64)
def graph_view(spec: str, tc_dir: str, stamp: int, prompt: str, node_threshold: float, labels_key: tuple):
    """The pruned graph as a plotly figure: x = position, y = layer (embeddings bottom, logits top). ``labels_key``
    (the layers with a dashboard and its stamp) only keys the cache, so a dashboard built later shows up."""
    import numpy as np
    import plotly.graph_objects as go
    import torch
    from circuit_tracer.graph import compute_node_influence, prune_graph

    result = attribution(spec, tc_dir, stamp, prompt)
    labels = labels_for(tc_dir, result.graph.cfg.n_layers)
    g = result.graph
    A = g.adjacency_matrix.cpu()
    n_pos, n_layers, n_logits = g.n_pos, g.cfg.n_layers, len(g.logit_targets)
    n_feat = len(g.selected_features)
    err_end = n_feat + n_layers * n_pos
    weights = torch.zeros(A.shape[0])
    weights[-n_logits:] = g.logit_probabilities.cpu()
    influence = compute_node_influence(A, weights)
    node_mask, edge_mask, _ = prune_graph(g, node_threshold, EDGE_THRESHOLD)
    node_mask, edge_mask = node_mask.cpu(), edge_mask.cpu()
    kept = node_mask.nonzero().flatten().tolist()
    toks = result.str_tokens

    info = {}  # node -> (kind, y, pos, hover)
    for i in kept:
        if i < n_feat:
            idx = int(g.selected_features[i])
            layer, pos, feat = g.active_features[idx].tolist()
            lab = label_of(labels, layer, feat)
            hover = (f"feature {feat} (layer {layer}, pos {pos} {toks[pos]!r})<br>activation "
                     f"{float(g.activation_values[idx]):.3f}<br>influence {float(influence[i]):.4f}"
                     + (f"<br>label: {lab}" if lab else ""))
            info[i] = ("feature", layer + 1, pos, hover)
        elif i < err_end:
            layer, pos = divmod(i - n_feat, n_pos)
            hover = f"error node layer {layer}, pos {pos} {toks[pos]!r}<br>influence {float(influence[i]):.4f}"
            info[i] = ("error", layer + 1, pos, hover)
        elif i < err_end + n_pos:
            pos = i - err_end
            info[i] = ("embedding", 0, pos, f"embedding pos {pos} {toks[pos]!r}<br>influence {float(influence[i]):.4f}")
        else:
            k = i - (A.shape[0] - n_logits)
            t = g.logit_targets[k]
            info[i] = ("logit", n_layers + 1, n_pos - 1,
                       f"logit {t.token_str!r}<br>probability {float(g.logit_probabilities[k]):.3f}")
    # Nodes sharing a (layer, position) cell spread across it, most influential in the middle.
    cells: dict[tuple, list] = {}
    for i, (_, y, pos, _) in info.items():
        cells.setdefault((y, pos), []).append(i)
    xy = {}
    for (y, pos), members in cells.items():
        members.sort(key=lambda i: -float(influence[i]) if i < A.shape[0] - n_logits else i)
        step = min(0.8 / len(members), 0.2)
        offsets = sorted(((s - (len(members) - 1) / 2) * step for s in range(len(members))), key=abs)
        crowded = len(members) > 6  # a crowded cell also spreads over three rows, so edges stay visible
        for k, (i, dx) in enumerate(zip(members, offsets)):
            xy[i] = (pos + dx, y + ((k + 1) % 3 - 1) * 0.12 * crowded)

    fig = go.Figure()
    src_tgt = [(t, s) for t, s in edge_mask.nonzero().tolist() if t in xy and s in xy]
    if src_tgt:
        w = np.array([float(A[t, s]) for t, s in src_tgt])
        top = np.abs(w).max() or 1.0
        bins = np.minimum((np.abs(w) / top * 4).astype(int), 3)
        for sign, rgb in ((1, "31,119,180"), (-1, "214,39,40")):
            for b in range(4):
                xs, ys = [], []
                for (t, s), wt, bb in zip(src_tgt, w, bins):
                    if bb == b and (wt >= 0) == (sign > 0):
                        xs += [xy[s][0], xy[t][0], None]
                        ys += [xy[s][1], xy[t][1], None]
                if xs:
                    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                             line=dict(color=f"rgba({rgb},{0.2 + 0.2 * b:.1f})", width=0.5 + 1.5 * b)))
    top_infl = float(max((float(influence[i]) for i in info), default=1.0)) or 1.0
    for kind, colour in COLOURS.items():
        nodes = [i for i in info if info[i][0] == kind]
        if not nodes:
            continue
        if kind == "logit":
            size = [10 + 25 * float(g.logit_probabilities[i - (A.shape[0] - n_logits)]) ** 0.5 for i in nodes]
        else:
            size = [6 + 24 * (max(float(influence[i]), 0.0) / top_infl) ** 0.5 for i in nodes]
        fig.add_trace(go.Scatter(
            x=[xy[i][0] for i in nodes], y=[xy[i][1] for i in nodes], mode="markers", name=kind,
            marker=dict(size=size, color=colour, line=dict(width=1, color="white")),
            text=[info[i][3] for i in nodes], hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(
        height=560, title=f"{len(info)} nodes, {len(src_tgt)} edges kept (node threshold {node_threshold:.2f}, "
                          f"edge threshold {EDGE_THRESHOLD})",
        xaxis=dict(tickmode="array", tickvals=list(range(n_pos)), ticktext=[f"{p}:{t}" for p, t in enumerate(toks)],
                   title="position", range=[-0.6, n_pos - 0.4]),
        yaxis=dict(tickmode="array", tickvals=list(range(n_layers + 2)),
                   ticktext=["embed"] + [f"L{layer}" for layer in range(n_layers)] + ["logit"], title="layer"),
        legend=dict(orientation="h"))
    return fig, len(info), len(src_tgt)


st.title("Circuit")
model = pick_model(key="circuit_model")
spec = picked_spec("circuit_model")
if model is not None:
    tc_dir = st.text_input("Transcoder directory (layer_0 ... layer_L, one per layer)",
                           beside_model(spec, "transcoders"), key=f"circuit_tc_dir:{spec}")  # one per model
    prompt = st.text_input("Prompt", "36+59=")
    c1, c2 = st.columns(2)
    node_threshold = c1.slider("Node threshold (share of influence kept)", 0.5, 0.99, 0.8, 0.01)
    n_top = int(c2.number_input("Top features", 1, 100, 10))
    ok = valid_text(model, prompt)
    if not tc_dir or not is_dir(tc_dir):
        st.info(f"No transcoders at {shorten(tc_dir) or '(empty)'}. Train one per layer with `workbench sae train "
                f"{spec} --transcoder --out DIR` and type DIR here.")
    elif ok:
        stamp = dir_stamp(tc_dir)
        rm = guarded_load(replacement, spec, tc_dir, stamp, what="a loadable set of transcoders (layer_0 ... layer_L)")
        result = None
        if rm is not None:
            with st.spinner("attributing (one backward pass per active feature batch)"):
                result = guarded(attribution, spec, tc_dir, stamp, prompt)
        if result is not None:
            m1, m2, m3, m4 = st.columns(4)
            m1.metric("Replacement score", f"{result.replacement_score:.3f}")
            m2.metric("Completeness score", f"{result.completeness_score:.3f}")
            m3.metric("Top token", repr(result.top_token), f"p = {result.top_prob:.3f}", delta_color="off")
            m4.metric("Feature nodes", f"{result.n_feature_nodes}", f"{result.seconds:.2f} s", delta_color="off")

            broken: list[str] = []
            labels = labels_for(tc_dir, model.cfg.n_layers, broken)
            if broken:
                st.warning("Feature labels left out, unreadable dashboards: " + "; ".join(broken))
            labels_key = tuple(sorted((layer, dir_stamp(str(Path(tc_dir) / f"layer_{layer}" / "dashboard")))
                                      for layer in labels))
            fig, n_nodes, n_edges = graph_view(spec, tc_dir, stamp, prompt, float(node_threshold), labels_key)
            st.plotly_chart(fig, width="stretch")
            st.caption("Blue edges excite, red inhibit; width ~ |weight|. Node size ~ influence on the logits. "
                       "Hover a node for its details.")

            from workbench.circuits import top_features

            rows = guarded(top_features, result, n_top, float(node_threshold))
            if rows:
                table = pd.DataFrame(rows)
                table["label"] = [label_of(labels, r["layer"], r["feature"]) for r in rows]
                st.subheader("Top features")
                st.dataframe(table[["layer", "pos", "token", "feature", "label", "activation", "influence", "direct",
                                    "total"]], hide_index=True, width="stretch")

            key = (spec, tc_dir, stamp, prompt, n_top)
            if st.button("Validate by intervention") or st.session_state.get("circuit_validated") == key:
                with st.spinner(f"zeroing each of the top {n_top} features"):
                    check = guarded(validation, spec, tc_dir, stamp, prompt, n_top)
                if check is not None:
                    st.session_state["circuit_validated"] = key
                    rho = check["spearman"]
                    st.write(f"Agreement rate (sign of predicted vs measured change of the {check['target_token']!r} "
                             f"logit): **{check['agreement_rate']:.2f}** over {check['n_features']} features; "
                             f"Spearman {'n/a' if rho is None else f'{rho:.2f}'}; largest direct-effect error "
                             f"{check['direct_max_abs_error']:.2e}")
                    st.dataframe(pd.DataFrame(check["features"])[
                        ["layer", "pos", "token", "feature", "predicted_total", "measured_total", "predicted_direct",
                         "measured_direct", "indirect"]], hide_index=True, width="stretch")

            files = guarded(graph_files, spec, tc_dir, stamp, prompt, float(node_threshold))
            if files is not None:
                d1, d2 = st.columns(2)
                d1.download_button("Download graph JSON", files[0], file_name=f"{slug_of(prompt)}.json",
                                   mime="application/json")
                d2.download_button("Download graph + index (zip)", files[1], file_name=f"{slug_of(prompt)}.zip",
                                   mime="application/zip")
                st.caption("To open it in circuit-tracer's frontend: unzip into DIR (the JSON plus graph-metadata.json), "
                           "then `workbench circuit-serve DIR`, or in Python `from circuit_tracer.frontend.local_server "
                           "import serve; serve(data_dir=DIR)`, and open http://localhost:8032/index.html.")
