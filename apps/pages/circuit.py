"""Circuit: the attribution graph (circuit-tracer, our per-layer transcoders) of a chosen target: by default the
model's own answer digit after its reasoning; or any token; or the difference of two tokens' logits."""

import math
import re
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from apps.common import (
    answer_context,
    beside_model,
    own_completion,
    prompt_input,
    DEFAULT_PROMPT,
    dir_stamp,
    guarded,
    guarded_load,
    is_dir,
    pick_model,
    picked_spec,
    shorten,
    target_ids,
    task_view,
    valid_text,
    visible,
)

EDGE_THRESHOLD = 0.98  # circuit-tracer's default share of edge influence kept
LABELLED = 8  # features named on the plot (the most influential); hover shows every node
COLOURS = {"feature": "#1f77b4", "error": "#7f7f7f", "embedding": "#2ca02c", "logit": "#d62728"}


@st.cache_resource(show_spinner="loading the transcoders", max_entries=4)
def replacement(spec: str, tc_dir: str, stamp: int):
    from apps.common import load
    from workbench.circuits import replacement_model
    from workbench.saes import load_transcoders

    model = load(spec)
    return replacement_model(model, load_transcoders(tc_dir, model))


TARGETS = ("the answer's digit", "a token you name", "a logit difference")


def attribute_target(rm, text: str, target: tuple | None):
    """:func:`workbench.circuits.attribute_prompt` with the page's chosen target."""
    from workbench.circuits import attribute_prompt

    return attribute_prompt(rm, text, target=target)


@st.cache_resource(show_spinner=False, max_entries=32)
def attribution(spec: str, tc_dir: str, stamp: int, prompt: str, target: tuple | None = None):
    return attribute_target(replacement(spec, tc_dir, stamp), prompt, target)


@st.cache_data(show_spinner=False, max_entries=64)
def top_rows(spec: str, tc_dir: str, stamp: int, prompt: str, target: tuple | None, n_top: int,
             node_threshold: float) -> list[dict]:
    """The table of top features, kept with the graph: pruning it again on every rerun (a click in the table,
    a widget elsewhere) costs as much as drawing it."""
    from workbench.circuits import top_features

    return top_features(attribution(spec, tc_dir, stamp, prompt, target), n_top, node_threshold)


@st.cache_resource(show_spinner=False, max_entries=32)
def validation(spec: str, tc_dir: str, stamp: int, prompt: str, n: int, target: tuple | None = None) -> dict:
    from workbench.circuits import validate_by_intervention

    return validate_by_intervention(replacement(spec, tc_dir, stamp), attribution(spec, tc_dir, stamp, prompt, target),
                                    n)


def _list_zipped_graph(directory: str, zipped: bytes) -> None:
    """List the graph of a :func:`graph_files` zip (its index entry) in the frontend directory's index."""
    import io
    import json
    import zipfile

    from workbench.circuits import GRAPH_INDEX, list_graph

    with zipfile.ZipFile(io.BytesIO(zipped)) as z:
        for entry in json.loads(z.read(GRAPH_INDEX))["graphs"]:
            list_graph(directory, entry)


def slug_of(prompt: str) -> str:
    return ("graph-" + re.sub(r"[^A-Za-z0-9_.-]", "_", prompt))[:128]


@st.cache_data(show_spinner="writing the graph file", max_entries=64)
def graph_files(spec: str, tc_dir: str, stamp: int, prompt: str, node_threshold: float,
                target: tuple | None = None) -> tuple[bytes, bytes]:
    """The graph JSON write_graph_json writes, and a zip of it with the index the frontend lists graphs from."""
    import io
    import zipfile

    from workbench.circuits import write_graph_json

    with tempfile.TemporaryDirectory() as tmp:
        path = write_graph_json(attribution(spec, tc_dir, stamp, prompt, target), tmp, slug_of(prompt), node_threshold)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(Path(tmp).iterdir()):
                z.write(f, f.name)
        return path.read_bytes(), buf.getvalue()


@st.cache_resource(show_spinner=False)
def frontend() -> tuple[str, int]:
    """circuit-tracer's own frontend, serving a directory of this explorer's graphs (started once per process)."""
    from workbench.circuits import start_frontend

    directory, port, _ = start_frontend()
    return str(directory), port


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
def graph_view(spec: str, tc_dir: str, stamp: int, prompt: str, node_threshold: float, labels_key: tuple,
               target: tuple | None = None):
    """The pruned graph as a plotly figure: x = position, y = layer (embeddings bottom, logits top). ``labels_key``
    (the layers with a dashboard and its stamp) only keys the cache, so a dashboard built later shows up."""
    import numpy as np
    import plotly.graph_objects as go
    import torch
    from circuit_tracer.graph import compute_node_influence, prune_graph

    result = attribution(spec, tc_dir, stamp, prompt, target)
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
    short = {}  # node -> its label on the plot (the most influential features and the target only)
    for i in kept:
        if i < n_feat:
            idx = int(g.selected_features[i])
            layer, pos, feat = g.active_features[idx].tolist()
            lab = label_of(labels, layer, feat)
            hover = (f"feature {feat} (layer {layer}, pos {pos} {toks[pos]!r})<br>activation "
                     f"{float(g.activation_values[idx]):.3f}<br>influence {float(influence[i]):.4f}"
                     + (f"<br>label: {lab}" if lab else ""))
            info[i] = ("feature", layer + 1, pos, hover)
            short[i] = f"L{layer} f{feat}" + (f": {shorten(str(lab), 24)}" if lab else "")
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
            short[i] = f"target {t.token_str!r}" if k == 0 else ""
    # Nodes sharing a (layer, position) cell are laid out on a grid filling the cell (most influential first, in
    # the middle row). A position's column is as wide as its most crowded cell needs (the last position, where the
    # answer is computed, gets room for all of its nodes); a position with only its embedding is narrow.
    cells: dict[tuple, list] = {}
    for i, (_, y, pos, _) in info.items():
        cells.setdefault((y, pos), []).append(i)
    grid = {key: max(1, math.ceil(math.sqrt(len(m) * 2.5))) for key, m in cells.items()}
    width = [0.4] * n_pos
    for (y, pos), cols in grid.items():
        if y > 0:  # a feature, error or logit cell
            width[pos] = max(width[pos], 1.0, 0.7 * cols)
    left = [sum(width[:p]) for p in range(n_pos)]
    centre = [left[p] + width[p] / 2 for p in range(n_pos)]
    xy = {}
    for (y, pos), members in cells.items():
        members.sort(key=lambda i: -float(influence[i]) if i < A.shape[0] - n_logits else i)
        cols = grid[(y, pos)]
        rows = math.ceil(len(members) / cols)
        row_order = sorted(range(rows), key=lambda r: abs(r - (rows - 1) / 2))
        for j, i in enumerate(members):
            r, c = row_order[j // cols], j % cols
            dx = 0.0 if cols == 1 else (c / (cols - 1) - 0.5) * (width[pos] - 0.3)
            dy = 0.0 if rows == 1 else (r / (rows - 1) - 0.5) * 0.7
            xy[i] = (centre[pos] + dx, y + dy)

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
    named = sorted((i for i in info if info[i][0] in ("feature", "logit")),
                   key=lambda i: -float(influence[i]) if info[i][0] == "feature" else -1e9)[:LABELLED + 1]
    if named:
        fig.add_trace(go.Scatter(x=[xy[i][0] for i in named], y=[xy[i][1] for i in named], mode="text",
                                 text=[short[i] for i in named], textposition="top center", hoverinfo="skip",
                                 showlegend=False, textfont=dict(size=10, color="#333")))
    fig.update_layout(
        height=max(560, 150 * (n_layers + 2)), title=f"{len(info)} nodes, {len(src_tgt)} edges kept (node threshold {node_threshold:.2f}, "
                          f"edge threshold {EDGE_THRESHOLD})",
        xaxis=dict(tickmode="array", tickvals=centre, ticktext=[f"{p}:{t!r}"[:8] for p, t in enumerate(toks)],
                   title="position:token (a column per position, wider where more nodes sit)",
                   range=[-0.1, sum(width) + 0.1], showgrid=False),
        yaxis=dict(tickmode="array", tickvals=list(range(n_layers + 2)),
                   ticktext=["embed"] + [f"L{layer}" for layer in range(n_layers)] + ["logit"], title="layer"),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right"))
    return fig, len(info), len(src_tgt)


def one_token(model, text: str) -> int | None:
    """The token id of ``text`` if it is exactly one token, else None after an error saying why."""
    ids = target_ids(model, text, allow_empty=False)
    return ids[0] if ids else None


def answer_of(spec: str, model, prompt: str) -> tuple[str, str]:
    """The text where the model's answer starts (its reasoning included) and the answer it then writes."""
    context = answer_context(spec, model, prompt)
    completion = own_completion(spec, model, prompt)
    tail = completion.partition(task_view(spec).answer_mark)[2] if context != prompt else completion
    tail = tail.strip()
    digits = tail[: len(tail) - len(tail.lstrip("0123456789"))]
    return context, digits if digits and tail[len(digits):] in ("", ".") else tail  # "56." is the answer 56


def build_labels(spec: str, tc_dir: str, n: int) -> str:
    """A dashboard per layer's transcoder (``layer_L/dashboard``): the feature labels the graph shows."""
    from apps.common import load
    from workbench.cli_sae import labelled_texts
    from workbench.dashboards import build_dashboards
    from workbench.saes import load_sae

    model = load(spec)
    texts, problems = labelled_texts(spec, n, "test", 1)
    layers = sorted(int(d.name.split("_")[1]) for d in Path(tc_dir).glob("layer_*") if d.name.split("_")[1].isdigit())
    for layer in layers:
        d = Path(tc_dir) / f"layer_{layer}"
        build_dashboards(model, load_sae(str(d), model).sae, texts, problems, d / "dashboard", progress=False)
    return f"Labelled the features of {len(layers)} layers on {len(texts)} texts."


st.title("Circuit")
model = pick_model(key="circuit_model")
spec = picked_spec("circuit_model")
if model is not None:
    tc_dir = st.text_input("Transcoder directory (layer_0 ... layer_L, one per layer)",
                           beside_model(spec, "transcoders"), key=f"circuit_tc_dir:{spec}")  # one per model
    prompt = prompt_input("Prompt", DEFAULT_PROMPT, key="circuit_prompt", view=task_view(spec))
    kind = st.radio("Explain", TARGETS, horizontal=True, key="circuit_target")
    c1, c2 = st.columns(2)
    node_threshold = c1.slider("Node threshold (share of influence kept)", 0.5, 0.99, 0.8, 0.01)
    n_top = int(c2.number_input("Top features", 1, 100, 10))
    ok = valid_text(model, prompt)
    text, target, what = prompt, None, ""
    if ok and kind == TARGETS[0]:
        context, answer = answer_of(spec, model, prompt)
        if answer.isdigit():
            names = [f"{d} (digit {j + 1} of {answer})" for j, d in enumerate(answer)]
            j = names.index(st.selectbox("Answer digit", names, key=f"circuit_digit:{spec}:{prompt}"))
            text = context + answer[:j]
            tid = one_token(model, answer[j])
            target = None if tid is None else ("token", tid)
            what = (f"the model's own answer digit {answer[j]!r} (digit {j + 1} of its answer {answer}), on the prompt "
                    + ("with its reasoning and " if context != prompt else "")
                    + (f"the digits before it: {text!r}" if j else f"{text!r}"))
            ok = tid is not None and valid_text(model, text)
        else:
            st.info(f"The model writes no answer after {shorten(prompt)} ({shorten(answer) or 'nothing'}): "
                    "explaining its next token instead.")
    elif ok:
        text = st.text_input("Text (the graph explains the token after it)", answer_of(spec, model, prompt)[0],
                             key=f"circuit_text:{spec}")
        ok = valid_text(model, text)
        if kind == TARGETS[1]:
            tok = st.text_input("Target token", answer_of(spec, model, prompt)[1][:1] or "0", key="circuit_token")
            tid = one_token(model, tok) if ok else None
            target = None if tid is None else ("token", tid)
            what = f"the logit of {tok!r} after {text!r}"
        else:
            a1, a2 = st.columns(2)
            first = answer_of(spec, model, prompt)[1][:1] or "0"
            tok_a = a1.text_input("Token a", first, key="circuit_token_a")
            tok_b = a2.text_input("Token b (logit(a) - logit(b) is explained)",
                                  str((int(first) + 1) % 10) if first.isdigit() else "1", key="circuit_token_b")
            ia = one_token(model, tok_a) if ok else None
            ib = one_token(model, tok_b) if ok and ia is not None else None
            target = None if ia is None or ib is None else ("diff", ia, ib)
            what = f"logit({tok_a!r}) - logit({tok_b!r}) after {text!r}"
        ok = ok and target is not None
    if not tc_dir or not is_dir(tc_dir):
        st.info(f"No transcoders at {shorten(tc_dir) or '(empty)'}. Train one per layer with `workbench sae train "
                f"{spec} --transcoder --out DIR` and type DIR here.")
    elif ok:
        stamp = dir_stamp(tc_dir)
        rm = guarded_load(replacement, spec, tc_dir, stamp, what="a loadable set of transcoders (layer_0 ... layer_L)")
        result = None
        if rm is not None:
            with st.spinner("attributing (one backward pass per batch of active features; a few seconds)"):
                result = guarded(attribution, spec, tc_dir, stamp, text, target)
        if result is not None:
            if what:
                st.markdown(f"Explaining {what}.")
            m1, m2, m3, m4 = st.columns(4)
            m1.metric("Replacement score", f"{result.replacement_score:.3f}")
            m2.metric("Completeness score", f"{result.completeness_score:.3f}")
            m3.metric("Top token" if target is None else "Target", repr(result.top_token),
                      f"p = {result.top_prob:.3f}" if target is None or target[0] == "token" else "weight 1",
                      delta_color="off")
            m4.metric("Feature nodes", f"{result.n_feature_nodes}", f"{result.seconds:.2f} s", delta_color="off")

            broken: list[str] = []
            labels = labels_for(tc_dir, model.cfg.n_layers, broken)
            if broken:
                st.warning("Feature labels left out, unreadable dashboards: " + "; ".join(broken))
            labels_key = tuple(sorted((layer, dir_stamp(str(Path(tc_dir) / f"layer_{layer}" / "dashboard")))
                                      for layer in labels))
            fig, n_nodes, n_edges = graph_view(spec, tc_dir, stamp, text, float(node_threshold), labels_key, target)
            st.plotly_chart(fig, width="stretch")
            st.caption("x: position (token), y: layer; nodes in one cell are spread over it. Blue edges excite, red "
                       f"inhibit; width ~ |weight|; node size ~ influence on the target. The {LABELLED} most "
                       "influential features are named; hover any node for its details.")
            missing = [layer for layer in range(model.cfg.n_layers) if layer not in labels]
            if missing:
                st.info(f"No feature labels for layer(s) {', '.join(map(str, missing))}: a label comes from the "
                        "feature's dashboard (the task variable it tracks best). Build them here, or on the "
                        "Features page.")
                n_texts = int(st.number_input("Texts to label the features on", 50, 5000, 300, step=50))
                if st.button(f"Label the features (a dashboard for each layer, {n_texts} texts)"):
                    with st.spinner("building a dashboard for each layer's transcoder"):
                        said = guarded(build_labels, spec, tc_dir, n_texts)
                    if said:
                        st.session_state["circuit_labelled"] = said
                        st.rerun()
            if said := st.session_state.pop("circuit_labelled", None):
                st.success(said)

            rows = guarded(top_rows, spec, tc_dir, stamp, text, target, n_top, float(node_threshold))
            if rows:
                table = pd.DataFrame(rows)
                table["label"] = [label_of(labels, r["layer"], r["feature"]) for r in rows]
                table["label"] = table["label"].where(table["label"].notna(), None)
                table["token"] = [visible(t) for t in table["token"]]
                st.subheader("Top features")
                event = st.dataframe(table[["layer", "pos", "token", "feature", "label", "activation", "influence",
                                            "direct", "total"]], hide_index=True, width="stretch",
                                     on_select="rerun", selection_mode="single-row", key="circuit_table")
                picked = list(getattr(getattr(event, "selection", None), "rows", []) or [])
                if picked and picked[0] < len(rows):
                    r = rows[picked[0]]
                    st.page_link("pages/features.py", label=f"Open feature {r['feature']} of layer {r['layer']} on "
                                 "the Features page", icon=":material/open_in_new:",
                                 query_params={"model": spec, "layer": str(r["layer"]), "feature": str(r["feature"])})
                else:
                    st.caption("Click a row to open that feature's dashboard on the Features page.")

            key = (spec, tc_dir, stamp, text, n_top, target)
            if target is not None and target[0] == "diff":
                st.caption("Validation by intervention measures one token's logit: explain a token to validate.")
            elif st.button("Validate by intervention") or st.session_state.get("circuit_validated") == key:
                with st.spinner(f"zeroing each of the top {n_top} features"):
                    check = guarded(validation, spec, tc_dir, stamp, text, n_top, target)
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

            try:
                files = guarded(graph_files, spec, tc_dir, stamp, text, float(node_threshold), target)
            except Exception as e:  # noqa: BLE001 - the export of a custom target is circuit-tracer's
                files = None
                st.caption(f"No graph file for this target ({type(e).__name__}).")
            if files is not None:
                d1, d2 = st.columns(2)
                d1.download_button("Download graph JSON", files[0], file_name=f"{slug_of(text)}.json",
                                   mime="application/json")
                d2.download_button("Download graph + index (zip)", files[1], file_name=f"{slug_of(text)}.zip",
                                   mime="application/zip")
                if st.toggle("Open in circuit-tracer's frontend (pin nodes, group supernodes, subgraphs)",
                             key="circuit_frontend"):
                    import streamlit.components.v1 as components

                    from workbench.circuits import frontend_url

                    directory, port = frontend()
                    slug = slug_of(text)
                    (Path(directory) / f"{slug}.json").write_bytes(files[0])
                    guarded(_list_zipped_graph, directory, files[1])
                    components.iframe(frontend_url(port, slug), height=900, scrolling=True)
                    st.caption(f"circuit-tracer's frontend, served by this explorer at {frontend_url(port, slug)} "
                               "(if the explorer runs on another machine, forward that port too).")
                st.caption("To open it in circuit-tracer's frontend: unzip into DIR (the JSON plus graph-metadata.json), "
                           "then `workbench circuit-serve DIR`, or in Python `from circuit_tracer.frontend.local_server "
                           "import serve; serve(data_dir=DIR)`, and open http://localhost:8032/index.html.")
