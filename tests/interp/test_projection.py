"""PCA against NumPy's SVD and scikit-learn's PCA; t-SNE keeps separated clusters apart;
mean pooling ignores padding exactly; plots are PNG files; missing extras are named."""

import sys

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.decomposition import PCA as SklearnPCA

from llm.interp.projection import mean_pool, pca, plot_points, tsne


def _correlated(n=50, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 1.0


def _clusters(per=30, d=20, seed=0):
    """Three Gaussian blobs of unit spread whose centres are ~ 45 apart."""
    rng = np.random.default_rng(seed)
    centres_CD = rng.normal(size=(3, d)) * 10
    x_ND = np.concatenate([c + rng.normal(size=(per, d)) for c in centres_CD])
    return x_ND, np.repeat(np.arange(3), per)


def test_pca_equals_numpy_svd():
    x_ND = _correlated()
    result = pca(x_ND, 3)
    centred_ND = x_ND - x_ND.mean(axis=0)
    u, s, vt = np.linalg.svd(centred_ND, full_matrices=False)
    signs_K = np.sign(np.sum(result.components_KD * vt[:3], axis=1))
    assert np.all(np.abs(signs_K) == 1)  # each component is +-1 times the SVD's
    np.testing.assert_allclose(result.components_KD, signs_K[:, None] * vt[:3], atol=1e-12)
    np.testing.assert_allclose(result.explained_variance_K, s[:3] ** 2 / (len(x_ND) - 1))
    np.testing.assert_allclose(result.explained_variance_ratio_K, s[:3] ** 2 / np.sum(s**2))
    np.testing.assert_allclose(result.projected_NK, signs_K * (u[:, :3] * s[:3]), atol=1e-10)
    np.testing.assert_allclose(result.components_KD @ result.components_KD.T, np.eye(3), atol=1e-12)


def test_pca_equals_sklearn_including_signs():
    x_ND = _correlated(seed=1)
    ours, ref = pca(x_ND, 4), SklearnPCA(4).fit(x_ND)
    np.testing.assert_allclose(ours.components_KD, ref.components_, atol=1e-12)
    np.testing.assert_allclose(ours.explained_variance_K, ref.explained_variance_, rtol=1e-12)
    np.testing.assert_allclose(ours.explained_variance_ratio_K, ref.explained_variance_ratio_)
    np.testing.assert_allclose(ours.projected_NK, ref.transform(x_ND), atol=1e-10)
    new_MD = _correlated(n=5, seed=2)
    np.testing.assert_allclose(ours.transform(new_MD), ref.transform(new_MD), atol=1e-10)


def test_full_pca_reconstructs_the_data():
    x_ND = _correlated(n=20, d=6)
    result = pca(x_ND, 6)
    rebuilt_ND = result.projected_NK @ result.components_KD + result.mean_D
    np.testing.assert_allclose(rebuilt_ND, x_ND, atol=1e-10)
    np.testing.assert_allclose(result.explained_variance_ratio_K.sum(), 1.0)


def _knn_purity(x_N2, labels_N, k=5):
    """Share of each point's k nearest neighbours (2-D) that carry its label."""
    d_NN = np.sum((x_N2[:, None] - x_N2[None]) ** 2, axis=-1)
    np.fill_diagonal(d_NN, np.inf)
    neighbours_NK = np.argsort(d_NN, axis=1)[:, :k]
    return float(np.mean(labels_N[neighbours_NK] == labels_N[:, None]))


def test_tsne_keeps_separated_clusters_apart():
    x_ND, labels_N = _clusters()
    x_N2 = tsne(x_ND, perplexity=10, max_iter=500, pca_dims=10)
    assert x_N2.shape == (90, 2) and np.all(np.isfinite(x_N2))
    assert _knn_purity(x_N2, labels_N) > 0.95
    shuffled = np.random.default_rng(0).permutation(labels_N)
    assert _knn_purity(x_N2, shuffled) < 0.6  # the purity check can fail


def test_mean_pool_ignores_padding_exactly():
    rng = np.random.default_rng(0)
    lengths = [5, 2, 7]
    rows = [rng.normal(size=(n, 4)).astype(np.float32) for n in lengths]
    mask_BL = np.arange(7) < np.array(lengths)[:, None]
    pooled = {}
    for fill in ("nan", "large"):  # what the padding holds cannot matter, bit for bit
        padding = np.nan if fill == "nan" else 1e30
        hidden_BLD = np.full((3, 7, 4), padding, np.float32)
        for b, row in enumerate(rows):
            hidden_BLD[b, : len(row)] = row
        pooled[fill] = np.asarray(mean_pool(jnp.asarray(hidden_BLD), jnp.asarray(mask_BL)))
    np.testing.assert_array_equal(pooled["nan"], pooled["large"])
    for b, row in enumerate(rows):  # and each row equals its unpadded mean
        alone_1D = mean_pool(jnp.asarray(row[None]), jnp.ones((1, len(row)), jnp.int32))
        np.testing.assert_allclose(pooled["nan"][b], alone_1D[0], rtol=1e-6)
        np.testing.assert_allclose(pooled["nan"][b], row.mean(axis=0), rtol=1e-6)


def test_mean_pool_rejects_bad_masks():
    with pytest.raises(ValueError, match=r"rows \[1\] have no unmasked token"):
        mean_pool(jnp.ones((2, 3, 4)), jnp.array([[1, 1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"hidden \[B, L, D\] and mask \[B, L\]"):
        mean_pool(jnp.ones((2, 3, 4)), jnp.ones((2, 4)))


def test_plot_points_writes_a_png(tmp_path):
    x_ND, labels_N = _clusters(per=5)
    x_N2 = pca(x_ND, 2).projected_NK
    names = [f"cluster {i}" for i in labels_N]
    out = tmp_path / "new_folder" / "points.png"  # its folder is created
    path = plot_points(x_N2, names, out, title="PCA", texts=list("abcde") * 3)
    assert path == out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    with pytest.raises(ValueError, match=r"does not end in \.png"):
        plot_points(x_N2, names, tmp_path / "points.jpg")
    with pytest.raises(ValueError, match="2 labels for 15 points"):
        plot_points(x_N2, ["a", "b"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"\[N, 2\] points"):
        plot_points(x_ND, names, tmp_path / "bad.png")


def test_missing_extras_are_named(monkeypatch, tmp_path):
    x_ND, _ = _clusters(per=5)
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # import raises ImportError
    with pytest.raises(ImportError, match=r"scikit-learn.*\.\[notebooks\]"):
        tsne(x_ND, perplexity=5)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[plot\]'"):
        plot_points(x_ND[:, :2], [0] * 15, tmp_path / "p.png")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: pca(np.zeros((5, 3)), 4), "k=4"),
        (lambda: pca(np.zeros((1, 3)), 1), "N >= 2"),
        (lambda: pca(np.full((4, 3), np.inf), 1), "NaN or infinite"),
        (lambda: tsne(np.zeros((5, 3)), perplexity=5), "perplexity=5"),
        (lambda: pca(np.eye(4), 2).transform(np.zeros((1, 3))), "the PCA was fit on D=4"),
    ],
)
def test_bad_projection_inputs_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
