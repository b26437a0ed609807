"""Figures: every heatmap is written twice, as interactive plotly HTML and as a static PNG.

The PNG is drawn with matplotlib rather than plotly's image export: that needs kaleido and a Chrome binary,
which a fresh offline machine does not have. Both files are written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from workbench.io import atomic_write


def heatmap_figure(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, colorbar: str = "",
                   text: np.ndarray | None = None, diverging: bool = False):
    """The plotly figure of a ``[rows, cols]`` heatmap (columns labelled ``index:token``); the app shows it as is."""
    import plotly.graph_objects as go

    values = np.asarray(values, dtype=float)
    lim = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    zkw = dict(zmin=-lim, zmax=lim, colorscale="RdBu", reversescale=True) if diverging else dict(colorscale="Viridis")
    fig = go.Figure(go.Heatmap(
        z=values, x=[f"{i}:{c}" for i, c in enumerate(cols)], y=list(rows), colorbar=dict(title=colorbar),
        text=text, hovertemplate="%{y} %{x}<br>%{z:.3f}" + ("<br>%{text}" if text is not None else "") + "<extra></extra>",
        **zkw,
    ))
    fig.update_layout(title=title, xaxis_title="position", yaxis_title="", yaxis_autorange="reversed")
    return fig


def heatmap(
    values: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    title: str,
    path: str | Path,
    colorbar: str = "",
    text: np.ndarray | None = None,
    diverging: bool = False,
) -> list[Path]:
    """Write ``path``.html and ``path``.png of a ``[rows, cols]`` heatmap; returns both paths.

    ``text``: optional per-cell labels (e.g. the lens's top token) shown on hover and, when small, in the PNG.
    ``diverging``: centre the colour scale on 0 (patching effects), else a sequential scale.
    """
    values = np.asarray(values, dtype=float)
    if values.shape != (len(rows), len(cols)):
        raise ValueError(f"values {values.shape} do not match {len(rows)} rows x {len(cols)} cols")
    base = Path(path).with_suffix("")
    lim = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    fig = heatmap_figure(values, rows, cols, title, colorbar, text, diverging)
    html = atomic_write(base.with_suffix(".html"), lambda p: p.write_text(fig.to_html(include_plotlyjs=True, full_html=True)))
    png = atomic_write(base.with_suffix(".png"), lambda p: _png(values, rows, cols, title, colorbar, text, diverging, lim, p))
    return [html, png]


def _png(values, rows, cols, title, colorbar, text, diverging, lim, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.42 * len(cols) + 2), max(2.5, 0.42 * len(rows) + 1.5)))
    kw = dict(cmap="RdBu_r", vmin=-lim, vmax=lim) if diverging else dict(cmap="viridis")
    im = ax.imshow(values, aspect="auto", **kw)
    ax.set_xticks(range(len(cols)), [repr(c)[1:-1] for c in cols], fontsize=7)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=7)
    if text is not None and values.size <= 600:
        for (i, j), t in np.ndenumerate(np.asarray(text, dtype=object)):
            ax.text(j, i, str(t), ha="center", va="center", fontsize=6, color="w")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=colorbar)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def scatter_lines(series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[str]]], title: str,
                  xlabel: str, ylabel: str, path: str | Path, logx: bool = False) -> list[Path]:
    """Write ``path``.html and ``path``.png of one marked line per series ``{name: (x, y, point labels)}``
    (e.g. an SAE sweep: L0 against explained variance); returns both paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    base = Path(path).with_suffix("")
    fig = go.Figure([go.Scatter(x=list(x), y=list(y), text=list(t), mode="lines+markers+text", name=name,
                                textposition="top center") for name, (x, y, t) in series.items()])
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, xaxis_type="log" if logx else "linear")

    def png(p: Path) -> None:
        f, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for name, (x, y, t) in series.items():
            ax.plot(x, y, marker="o", label=name)
            for xi, yi, ti in zip(x, y, t):
                ax.annotate(ti, (xi, yi), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
        if logx:
            ax.set_xscale("log")
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        f.tight_layout()
        f.savefig(p, format="png")
        plt.close(f)

    html = atomic_write(base.with_suffix(".html"), lambda p: p.write_text(fig.to_html(include_plotlyjs=True, full_html=True)))
    return [html, atomic_write(base.with_suffix(".png"), png)]
