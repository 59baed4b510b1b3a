"""Heatmaps are real PNGs of the documented pixel size that show their data."""

import sys

import matplotlib.image as mpimg
import numpy as np
import pytest

from llm.interp.heatmaps import plot_attention, plot_head_scores

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def causal_attention(N: int, L: int) -> np.ndarray:
    probs_NLS = np.tril(np.ones((N, L, L)))
    return probs_NLS / probs_NLS.sum(-1, keepdims=True)


def read_png(path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return mpimg.imread(path)


def test_attention_panels_have_the_documented_size(tmp_path):
    labels = [f"t{i}" for i in range(6)]
    # 5 heads: 4 panels a row, 2 rows, each 3 in x 100 dpi = 300 px (PANEL_INCHES, DPI)
    path = plot_attention(causal_attention(5, 6), labels, tmp_path / "a.png", title="layer 0")
    image = read_png(path)
    assert image.shape[:2] == (600, 1200)
    assert image[..., :3].std() > 0.05  # not a blank canvas
    # two chosen heads: one row of 2 panels
    image = read_png(plot_attention(causal_attention(5, 6), labels, tmp_path / "b.png",
                                    heads=[0, 3]))  # fmt: skip
    assert image.shape[:2] == (300, 600)


def test_attention_image_follows_the_data(tmp_path):
    labels = list("abcdef")
    uniform = read_png(plot_attention(causal_attention(1, 6), labels, tmp_path / "u.png"))
    diagonal = read_png(plot_attention(np.eye(6)[None], labels, tmp_path / "d.png"))
    assert uniform.shape == diagonal.shape
    assert np.abs(uniform - diagonal).mean() > 0.01


def test_head_scores_map_size(tmp_path):
    # 3 layers x 5 heads: (5 x 0.4 + 2) by (3 x 0.4 + 2) in at 100 dpi = 400 x 320 px
    scores_YN = np.linspace(0.0, 1.0, 15).reshape(3, 5)
    image = read_png(plot_head_scores(scores_YN, tmp_path / "sub" / "s.png", title="induction"))
    assert image.shape[:2] == (320, 400)
    assert image[..., :3].std() > 0.05


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="2 labels for 6 positions"):
        plot_attention(causal_attention(2, 6), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="heads must be"):
        plot_attention(causal_attention(2, 6), list("abcdef"), tmp_path / "x.png", heads=[2])
    with pytest.raises(ValueError, match=r"does not end in \.png"):
        plot_head_scores(np.ones((2, 2)), tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="layers, heads"):
        plot_head_scores(np.ones(4), tmp_path / "x.png")


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # not installed
    with pytest.raises(ImportError, match=r"pip install -e '\.\[plot\]'"):
        plot_head_scores(np.ones((2, 2)), tmp_path / "x.png")
