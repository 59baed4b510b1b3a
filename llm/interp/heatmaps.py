"""Attention heatmaps and layer x head score maps written to PNG.

Figures are built with matplotlib's object-oriented API on a `Figure` of its own (the Agg
canvas), never through pyplot: writing a file leaves the caller's backend and open figures
alone, so a notebook's inline plots keep working. Sizes are fixed (no tight bounding box)
so a figure's pixel size follows from its panel count: `PANEL_INCHES` x `DPI` per panel.
matplotlib is the `plot` extra: `pip install -e '.[plot]'`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PANEL_INCHES = 3.0  # side of one head's square panel in plot_attention
DPI = 100  # pixels per inch of every PNG written here
MAX_COLUMNS = 4  # panels per row in plot_attention
SCORE_CELL_INCHES = 0.4  # side of one (layer, head) cell in plot_head_scores
SCORE_MARGIN_INCHES = 2.0  # room for axis labels, title and colour bar in plot_head_scores


def _figure(width_in: float, height_in: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("llm.interp.heatmaps needs matplotlib: pip install -e '.[plot]'") from e
    return Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")


def save_png(fig, path, *, dpi: int = DPI) -> Path:
    """Writes `fig` as PNG at `path` (which must end in .png), creating its folder."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plots are written as PNG: {path} does not end in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def _label_axes(ax, labels: Sequence[str]) -> None:
    """Token labels on both axes when they fit (at most 40), else ticks every few tokens."""
    L = len(labels)
    ticks = np.arange(L) if L <= 40 else np.arange(0, L, math.ceil(L / 20))
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=6)
    ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=6)


def plot_attention(
    attention_NLS,
    labels: Sequence[str],
    path,
    *,
    heads: Sequence[int] | None = None,
    title: str | None = None,
) -> Path:
    """One panel per head (rows: queries, columns: keys, colour: probability in [0, 1]) of
    one layer and one batch row of `forward(..., return_attention=True).attention_YBNLS`,
    i.e. `attention_YBNLS[layer, row]`. `labels`: the L token strings. `heads`: which heads
    (default all). The PNG is columns x PANEL_INCHES by rows x PANEL_INCHES inches at DPI,
    with at most MAX_COLUMNS panels a row."""
    a = np.asarray(attention_NLS, np.float32)
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"attention_NLS must be [heads, L, L] of one layer and row, got {a.shape}")
    if len(labels) != a.shape[1]:
        raise ValueError(f"{len(labels)} labels for {a.shape[1]} positions")
    heads = list(range(a.shape[0])) if heads is None else list(heads)
    if not heads or any(not 0 <= h < a.shape[0] for h in heads):
        raise ValueError(f"heads must be a non-empty list of indices in [0, {a.shape[0]}): {heads}")
    cols = min(len(heads), MAX_COLUMNS)
    rows = math.ceil(len(heads) / cols)
    fig = _figure(cols * PANEL_INCHES, rows * PANEL_INCHES)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(heads) :]:
        ax.set_axis_off()
    for ax, h in zip(axes.flat, heads, strict=False):
        ax.imshow(a[h], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"head {h}", fontsize=8)
        ax.set_xlabel("key", fontsize=7)
        ax.set_ylabel("query", fontsize=7)
        _label_axes(ax, labels)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_png(fig, path)


def plot_head_scores(scores_YN, path, *, title: str | None = None) -> Path:
    """A layers x heads heatmap of per-head scores (`llm.interp.heads`), each cell annotated
    with its value; the PNG is (N x SCORE_CELL_INCHES + SCORE_MARGIN_INCHES) by
    (Y x SCORE_CELL_INCHES + SCORE_MARGIN_INCHES) inches at DPI."""
    s = np.asarray(scores_YN, np.float32)
    if s.ndim != 2 or 0 in s.shape:
        raise ValueError(f"scores_YN must be a non-empty [layers, heads] array, got {s.shape}")
    Y, N = s.shape
    fig = _figure(N * SCORE_CELL_INCHES + SCORE_MARGIN_INCHES,
                  Y * SCORE_CELL_INCHES + SCORE_MARGIN_INCHES)  # fmt: skip
    ax = fig.subplots()
    low, high = min(0.0, float(s.min())), max(1.0, float(s.max()))  # probabilities: [0, 1]
    image = ax.imshow(s, cmap="magma", vmin=low, vmax=high, aspect="auto")
    for (y, n), value in np.ndenumerate(s):
        color = "black" if value > low + 0.6 * (high - low) else "white"
        ax.text(n, y, f"{value:.2f}", ha="center", va="center", fontsize=5, color=color)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(np.arange(N))
    ax.set_yticks(np.arange(Y))
    ax.tick_params(labelsize=6)
    fig.colorbar(image, ax=ax)
    if title:
        ax.set_title(title, fontsize=9)
    return save_png(fig, path)
