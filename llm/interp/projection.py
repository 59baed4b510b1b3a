"""Token and sentence embeddings in two dimensions: PCA, t-SNE, mean pooling, scatter plots.

Design choices:
- PCA is the SVD of the centred data in float64 (NumPy), conventions as scikit-learn's
  `PCA`: explained variance with N - 1 degrees of freedom, and each component's sign fixed
  so that its largest-magnitude entry is positive (an SVD's signs are arbitrary; this makes
  the result reproducible across LAPACK builds).
- t-SNE (van der Maaten & Hinton, 2008) is scikit-learn's `TSNE`, after a PCA to at most
  `pca_dims` dimensions as its documentation recommends for wide inputs. scikit-learn is
  an optional dependency (the `notebooks` extra), imported only here.
- Sentence embeddings are the mean of the token states under a mask (Reimers & Gurevych,
  2019, arXiv:1908.10084); padding is excluded with `where`, so even NaN padding is ignored.
- Plots use matplotlib's object API (`Figure`, Agg canvas), not pyplot: writing a PNG
  neither opens a window nor changes the backend of a running notebook.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from llm.interp.heatmaps import save_png
from llm.typing import Array

SKLEARN_HINT = "pip install scikit-learn (or the notebooks extra: pip install -e '.[notebooks]')"
PLOT_HINT = "pip install -e '.[plot]'"


@dataclasses.dataclass(frozen=True)
class PCA:
    """The top-K principal axes of N points in D dimensions (float64 NumPy arrays).

    components_KD: unit principal axes, by decreasing variance. mean_D: the centre.
    explained_variance_K: variance along each axis (N - 1 in the denominator).
    explained_variance_ratio_K: its share of the total variance. projected_NK: the points'
    coordinates on the axes.
    """

    components_KD: np.ndarray
    mean_D: np.ndarray
    explained_variance_K: np.ndarray
    explained_variance_ratio_K: np.ndarray
    projected_NK: np.ndarray

    def transform(self, x_MD) -> np.ndarray:
        """Coordinates [M, K] of other points on the same axes."""
        x_MD = _points(x_MD, min_points=1)
        if x_MD.shape[1] != self.mean_D.shape[0]:
            raise ValueError(f"points have D={x_MD.shape[1]}; the PCA was fit on "
                             f"D={self.mean_D.shape[0]}")  # fmt: skip
        return (x_MD - self.mean_D) @ self.components_KD.T


def pca(x_ND, k: int) -> PCA:
    """Principal component analysis of the rows of `x_ND`, keeping `k` components."""
    x_ND = _points(x_ND, min_points=2)
    N, D = x_ND.shape
    if not 1 <= k <= min(N, D):
        raise ValueError(f"k={k} must be in [1, min(N, D) = {min(N, D)}] for {N} points in D={D}")
    mean_D = x_ND.mean(axis=0)
    centred_ND = x_ND - mean_D
    _, s, vt_DD = np.linalg.svd(centred_ND, full_matrices=False)
    rows = np.arange(len(vt_DD))
    signs = np.sign(vt_DD[rows, np.argmax(np.abs(vt_DD), axis=1)])
    components_KD = (vt_DD * signs[:, None])[:k]
    variance = s**2 / (N - 1)
    total = variance.sum()
    return PCA(
        components_KD=components_KD,
        mean_D=mean_D,
        explained_variance_K=variance[:k],
        explained_variance_ratio_K=variance[:k] / total if total > 0 else np.zeros(k),
        projected_NK=centred_ND @ components_KD.T,
    )


def tsne(
    x_ND, *, perplexity: float = 30.0, seed: int = 0, pca_dims: int | None = 50,
    max_iter: int = 1000,
) -> np.ndarray:  # fmt: skip
    """t-SNE coordinates [N, 2] of the rows of `x_ND` (scikit-learn's `TSNE`, PCA init).

    perplexity: the effective number of neighbours each point keeps (must be below N).
    pca_dims: reduce wider inputs to this many principal components first (None: never).
    """
    x_ND = _points(x_ND, min_points=2)
    N, D = x_ND.shape
    if not 0 < perplexity < N:
        raise ValueError(f"perplexity={perplexity} must be in (0, N={N}), the number of points")
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise ImportError(f"tsne needs scikit-learn: {SKLEARN_HINT}", name="sklearn") from None
    if pca_dims is not None and D > pca_dims:
        x_ND = pca(x_ND, min(pca_dims, N)).projected_NK
    model = TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=max_iter
    )
    return model.fit_transform(x_ND)


def mean_pool(hidden_BLD: Array, mask_BL: Array) -> Array:
    """Sentence embeddings [B, D]: the mean of each row's hidden states where `mask_BL` is
    true (nonzero); masked positions contribute nothing, whatever they hold."""
    hidden_BLD, mask_BL = jnp.asarray(hidden_BLD), jnp.asarray(mask_BL)
    if hidden_BLD.ndim != 3 or mask_BL.shape != hidden_BLD.shape[:2]:
        raise ValueError(f"mean_pool takes hidden [B, L, D] and mask [B, L]; got "
                         f"{hidden_BLD.shape} and {mask_BL.shape}")  # fmt: skip
    keep_BL = mask_BL != 0
    if not isinstance(keep_BL, jax.core.Tracer) and not bool(keep_BL.any(axis=1).all()):
        empty = np.flatnonzero(~np.asarray(keep_BL).any(axis=1)).tolist()
        raise ValueError(f"mean_pool: rows {empty} have no unmasked token")
    total_BD = jnp.where(keep_BL[..., None], hidden_BLD, 0).sum(axis=1)
    return total_BD / keep_BL.sum(axis=1, keepdims=True).astype(total_BD.dtype)


def plot_points(
    x_N2, labels: Sequence, path: str | Path, *, title: str | None = None,
    texts: Sequence[str] | None = None,
) -> Path:  # fmt: skip
    """A scatter plot of 2-D points coloured by `labels` (one per point, any hashable; a
    legend when there are at most 20 distinct ones), written as a PNG. `texts`, if given,
    are written beside the points (token strings, say). Needs matplotlib (the plot extra)."""
    x_N2 = _points(x_N2, min_points=1)
    if x_N2.shape[1] != 2:
        raise ValueError(f"plot_points takes [N, 2] points; got {x_N2.shape}")
    labels = list(labels)
    for name, values in (("labels", labels), ("texts", texts)):
        if values is not None and len(values) != len(x_N2):
            raise ValueError(f"{len(values)} {name} for {len(x_N2)} points")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"plot_points needs matplotlib: {PLOT_HINT}", name="matplotlib") from None
    classes = list(dict.fromkeys(labels))
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.add_subplot()
    for cls, colour in zip(classes, _colours(len(classes)), strict=True):
        at = np.array([label == cls for label in labels])
        ax.scatter(x_N2[at, 0], x_N2[at, 1], s=14, color=colour, label=str(cls))
    for (px, py), text in zip(x_N2, texts or [], strict=False):
        ax.annotate(str(text), (px, py), fontsize=7, alpha=0.8)
    if len(classes) <= 20:
        ax.legend(fontsize=8, markerscale=1.5)
    ax.set(title=title or "")
    fig.tight_layout()
    return save_png(fig, path, dpi=120)


def _colours(n: int) -> list:
    """n distinct colours: a qualitative palette while it lasts, then a sequential one."""
    import matplotlib

    if n <= 20:
        cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
        return [cmap(i) for i in range(n)]
    return [matplotlib.colormaps["viridis"](i / (n - 1)) for i in range(n)]


def _points(x_ND, *, min_points: int) -> np.ndarray:
    x_ND = np.asarray(x_ND, np.float64)
    if x_ND.ndim != 2 or len(x_ND) < min_points:
        raise ValueError(f"expected [N >= {min_points}, D] points; got shape {x_ND.shape}")
    if not np.all(np.isfinite(x_ND)):
        raise ValueError("points contain NaN or infinite values")
    return x_ND
