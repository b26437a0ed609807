"""Features: an SAE's (or transcoder's) feature dashboards, and the features active on a prompt."""

import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from apps.common import (
    beside_model,
    prompt_input,
    share,
    shared,
    shared_layer,
    dir_stamp,
    exists,
    guarded,
    guarded_load,
    is_file,
    pick_model,
    picked_spec,
    seed,
    shorten,
    task_view,
    valid_text,
)
from workbench.figures import heatmap_figure

TOP_PER_TOKEN = 5


@st.cache_resource(show_spinner="loading the SAE", max_entries=8)
def sae_for(spec: str, sae_dir: str, stamp: int):
    from apps.common import load
    from workbench.saes import load_sae

    return load_sae(sae_dir, load(spec))


def build(spec: str, sae_dir: str, stamp: int, out_dir: str, n: int) -> str:
    """Not cached: it writes files (a rebuild after deleting them must run); reading them back is. Returns what
    was built, and why on fewer texts than asked."""
    from apps.common import load
    from workbench.cli_sae import labelled_texts
    from workbench.dashboards import build_dashboards

    texts, problems = labelled_texts(spec, n, "test", 1)
    build_dashboards(load(spec), sae_for(spec, sae_dir, stamp).sae, texts, problems, out_dir, progress=False)
    said = f"Built the dashboard in {shorten(out_dir)} on {len(texts)} texts"
    if len(texts) < n:
        cols = len(problems[0].columns) if problems else 0
        said += (f" of the {n} asked: feature labels are task variables (a carry, a digit of a column), which need "
                 f"problems with one number of columns, so only the texts of the commonest width ({cols} columns) "
                 f"were kept and the other {n - len(texts)} left out.")
    return said + ("" if said.endswith(".") else ".")


@st.cache_data(show_spinner="reading the dashboard", max_entries=8)
def dashboard(out_dir: str, stamp: int):
    from workbench.dashboards import load_dashboard

    return load_dashboard(out_dir)


@st.cache_data(show_spinner="encoding the prompt", max_entries=64)
def active(spec: str, sae_dir: str, stamp: int, prompt: str):
    from apps.common import load
    from workbench.dashboards import feature_activations

    acts, _, where = feature_activations(load(spec), sae_for(spec, sae_dir, stamp).sae, [prompt])
    return acts.numpy(), where[:, 1].numpy()


def tokens_html(tokens: list[str], acts: list[float], focus: int, top: float) -> str:
    """One example as spans shaded by activation (relative to the feature's max); the focus token outlined."""
    spans = []
    for i, (tok, a) in enumerate(zip(tokens, acts)):
        alpha = min(max(a / top, 0.0), 1.0) if top > 0 else 0.0
        edge = "outline:2px solid #d62728;" if i == focus else ""
        spans.append(f'<span title="{a:.3f}" style="background:rgba(255,127,14,{alpha:.2f});{edge}'
                     f'white-space:pre;font-family:monospace;padding:1px">{html.escape(tok)}</span>')
    return "".join(spans)


st.title("Features")
model = pick_model(key="feat_model")
spec = picked_spec("feat_model")
if model is not None:
    layer0 = shared_layer(model.cfg.n_layers, 0)
    sae_dir = st.text_input("SAE directory (SAELens format; a transcoder's layer_L works too)",
                            beside_model(spec, "transcoders", f"layer_{layer0}"), key=f"feat_sae_dir:{spec}")
    if m := re.search(r"layer_(\d+)/?$", sae_dir or ""):
        share("layer", int(m[1]))
    if not sae_dir or not exists(sae_dir):
        st.info(f"No SAE at {shorten(sae_dir) or '(empty)'}. Train one with `workbench sae train {spec} --hook "
                f"blocks.0.hook_resid_post --out DIR` (or transcoders for every layer with `--transcoder`) and type "
                "its directory here.")
    else:
        stamp = dir_stamp(sae_dir)
        loaded = guarded_load(sae_for, spec, sae_dir, stamp,
                              what="a loadable SAE (cfg.json and sae_weights.safetensors)")
        if loaded is not None:
            st.caption(f"{loaded.sae.cfg.architecture()} SAE, {loaded.sae.cfg.d_sae} features, reads {loaded.hook}"
                       + (f", writes {loaded.hook_out}" if loaded.hook_out else ""))
            dash_dir = st.text_input("Dashboard directory", str(Path(sae_dir) / "dashboard"))
            dash = None
            if not is_file(str(Path(dash_dir) / "dashboard.json")):
                st.info(f"No dashboard in {shorten(dash_dir)}: build one here, or with `workbench sae dashboard "
                        f"{shorten(sae_dir)} --model {spec} --out {shorten(dash_dir)}`.")
                n = int(st.number_input("Texts to scan", 20, 5000, 500, step=100))
                if st.button(f"Build dashboard ({n} texts)"):
                    with st.spinner(f"building the dashboard on {n} texts"):
                        said = guarded(build, spec, sae_dir, stamp, dash_dir, n)
                    if said is not None:
                        st.session_state["feat_built"] = said
                        st.rerun()  # the page again, with the dashboard it now finds
            if is_file(str(Path(dash_dir) / "dashboard.json")):
                if said := st.session_state.pop("feat_built", None):
                    st.success(said)
                dash = guarded_load(dashboard, dash_dir, dir_stamp(dash_dir), what="a readable dashboard")

            if dash is not None:
                meta = dash.meta
                st.caption(f"{meta['n_features']} features ({meta['n_dead']} dead) over {meta['n_texts']} texts, "
                           f"{meta['n_tokens']} tokens; logit effects: {meta['logit_effect']}")
                table = dash.table()
                c1, c2, c3 = st.columns(3)
                needle = c1.text_input("Label contains", "")
                min_auroc = c2.slider("Min label AUROC", 0.0, 1.0, 0.0, 0.01)
                hide_dead = c3.checkbox("Hide dead features", True)
                shown = table
                if needle:
                    shown = shown[shown["label"].fillna("").str.contains(needle, case=False, regex=False)]
                if min_auroc > 0:
                    shown = shown[shown["label_auroc"].fillna(-1.0) >= min_auroc]
                if hide_dead:
                    shown = shown[~shown["dead"]]
                shown = shown.sort_values("label_auroc", ascending=False, na_position="last")
                event = st.dataframe(shown[["id", "label", "label_auroc", "density", "max_act", "dead"]],
                                     hide_index=True, width="stretch", height=280, on_select="rerun",
                                     selection_mode="single-row", key="feat_table")
                st.caption(f"{len(shown)} of {len(table)} features shown; click a row to open its feature, a column "
                           "header to sort.")

                live = table[~table["dead"]].sort_values("label_auroc", ascending=False, na_position="last")
                first = int(live["id"].iloc[0]) if len(live) else 0
                clicked = list(getattr(getattr(event, "selection", None), "rows", []) or [])
                if clicked and clicked[0] < len(shown):
                    chosen = int(shown["id"].iloc[clicked[0]])
                    if st.session_state.get("feat_clicked") != chosen:  # a new click picks the feature
                        st.session_state["feat_clicked"] = chosen
                        st.session_state["feat_id"] = chosen
                if st.session_state.get("feat_id", 0) >= len(table):  # another SAE with fewer features
                    st.session_state.pop("feat_id")
                try:
                    linked = int(shared("feature"))  # a feature another page (a circuit node) opened
                except (TypeError, ValueError):
                    linked = -1
                seed("feat_id", linked if 0 <= linked < len(table) else first)
                fid = int(st.number_input(f"Feature (0..{len(table) - 1})", 0, len(table) - 1, key="feat_id"))
                share("feature", fid)
                f = dash.feature(fid)
                st.subheader(f"Feature {fid}" + (f": {f['label']} (AUROC {f['label_auroc']:.3f})" if f["label"] else ""))
                st.write(f"density {f['density']:.4f}, mean activation {f['mean_act']:.3f}, "
                         f"max activation {f['max_act']:.3f}" + (" -- dead: never fires on these texts" if f["dead"] else ""))
                left, right = st.columns(2)
                with left:
                    st.markdown("**Top examples** (shade = activation / max; outlined: the token it fires on)")
                    for ex in f["examples"][:10]:
                        st.markdown(f"`{ex['activation']:.2f}` " + tokens_html(ex["tokens"], ex["acts"], ex["focus"],
                                                                              f["max_act"]), unsafe_allow_html=True)
                    if not f["examples"]:
                        st.write("No examples: the feature never fired.")
                with right:
                    if f["hist_counts"]:
                        import plotly.graph_objects as go

                        edges = np.array(f["hist_edges"])
                        fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=f["hist_counts"],
                                               width=np.diff(edges)))
                        fig.update_layout(title="Activation histogram (where it fires)", xaxis_title="activation",
                                          yaxis_title="tokens", height=260, margin=dict(t=40, b=30))
                        st.plotly_chart(fig, width="stretch")
                    if f["logits_pos"]:
                        st.dataframe(pd.DataFrame({"promotes": f["logits_pos"], "effect +": f["logits_pos_values"],
                                                   "suppresses": f["logits_neg"], "effect -": f["logits_neg_values"]}),
                                     hide_index=True, width="stretch")
                    if f["top_labels"]:
                        st.dataframe(pd.DataFrame(f["top_labels"]), hide_index=True, width="stretch")

            st.subheader("Active on this prompt")
            prompt = prompt_input("Prompt", "36+59=", key="feat_prompt", view=task_view(spec))
            if valid_text(model, prompt):
                got = guarded(active, spec, sae_dir, stamp, prompt)
                if got is not None:
                    acts, positions = got
                    str_tokens = model.to_str_tokens(prompt)
                    tokens = [str_tokens[p] for p in positions]
                    labels = dash.table()["label"].tolist() if dash is not None and len(dash) == acts.shape[1] else None

                    def name(i: int) -> str:
                        return f"f{i}" + (f" {labels[i]}" if labels and labels[i] else "")

                    top = np.argsort(-acts, axis=1, kind="stable")[:, :TOP_PER_TOKEN]
                    picked = sorted({int(i) for row, idx in zip(acts, top) for i in idx if row[i] > 0},
                                    key=lambda i: -acts[:, i].max())
                    if not picked:
                        st.write("No feature fires on this prompt.")
                    else:
                        fig = heatmap_figure(acts[:, picked].T, [name(i) for i in picked], tokens,
                                             f"top {TOP_PER_TOKEN} features per token", colorbar="activation")
                        fig.update_layout(xaxis_title="position:token", yaxis_title="feature (and its label)")
                        st.plotly_chart(fig, width="stretch")
                        rows = [{"position": int(p), "token": tok,
                                 "features": ", ".join(f"{name(int(i))} ({acts[r, i]:.2f})" for i in top[r] if acts[r, i] > 0)}
                                for r, (p, tok) in enumerate(zip(positions, tokens))]
                        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
