"""SpRAy: map features, the neighbour graph, the eigengap and planted strategies recovered."""

from __future__ import annotations

import numpy as np
import pytest

from fastviz.audit.strategies import eigengap, map_features, neighbour_graph, spray
from fastviz.errors import InputError


def planted(per_group: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Maps of three strategies: a blob on the left, in the centre or on the right, with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:66, :200]
    maps, truth = [], []
    for group, cx in enumerate((30, 100, 170)):
        for _ in range(per_group):
            cy = 33 + rng.normal(0, 3)
            blob = np.exp(-((xx - cx - rng.normal(0, 4)) ** 2 + (yy - cy) ** 2) / (2 * 10.0**2))
            maps.append(blob + rng.uniform(0, 0.05, blob.shape))
            truth.append(group)
    return np.stack(maps).astype(np.float32), np.array(truth)


def test_map_features_are_unit_sum_area_averages_of_the_magnitude():
    m = np.zeros((2, 4, 6), np.float32)
    m[0, :2, :3] = -2.0  # top-left quarter, negative: counts by magnitude
    f = map_features(m, size=(2, 2))
    np.testing.assert_allclose(f[0], [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(f[1], np.zeros(4))  # an all-zero map stays zero
    g = map_features(np.arange(24, dtype=np.float32).reshape(1, 4, 6), size=(2, 3))
    blocks = np.arange(24).reshape(2, 2, 3, 2).mean(axis=(1, 3)).ravel()  # 2x2 area means
    np.testing.assert_allclose(g[0], blocks / blocks.sum(), rtol=1e-6)
    with pytest.raises(InputError, match="NaN"):
        map_features(np.full((1, 4, 4), np.nan))
    with pytest.raises(InputError, match=r"\(N, H, W\)"):
        map_features(np.zeros((4, 4)))


def test_neighbour_graph_by_hand():
    x = np.array([[0.0], [1.0], [3.0], [10.0]])
    a = neighbour_graph(x, 1)
    # nearest: 0->1, 1->0, 2->1, 3->2; symmetrised
    want = np.zeros((4, 4))
    for i, j in ((0, 1), (2, 1), (3, 2)):
        want[i, j] = want[j, i] = 1
    np.testing.assert_array_equal(a, want)
    with pytest.raises(InputError, match="neighbours must lie in 1 .. 3"):
        neighbour_graph(x, 4)


def test_eigengap_of_disconnected_cliques_counts_them():
    a = np.zeros((7, 7))
    for group in ((0, 1, 2), (3, 4), (5, 6)):
        for i in group:
            for j in group:
                if i != j:
                    a[i, j] = 1
    k, values = eigengap(a, max_clusters=5)
    assert k == 3
    np.testing.assert_allclose(values[:3], 0.0, atol=1e-12)  # one zero eigenvalue per component
    # the rest of a clique's normalised Laplacian spectrum: n/(n-1) for an n-clique
    np.testing.assert_allclose(values[3:], [1.5, 1.5, 2.0, 2.0][: values.size - 3], atol=1e-12)
    with pytest.raises(InputError, match="no neighbour"):
        eigengap(np.zeros((3, 3)))
    with pytest.raises(InputError, match="symmetric"):
        eigengap(np.triu(np.ones((3, 3)), 1))


@pytest.mark.parametrize("seed", [0, 1])
def test_three_planted_strategies_are_found(seed):
    maps, truth = planted(seed=seed)
    result = spray(maps, neighbours=6, seed=seed)
    assert result.clusters == 3
    assert result.features.shape == (36, 16 * 48)
    # the labels are the planted groups up to renaming
    for group in range(3):
        assert len(set(result.labels[truth == group])) == 1
    assert len(set(result.labels)) == 3
    fixed = spray(maps, clusters=2, neighbours=6, seed=seed)
    assert fixed.clusters == 2 and set(fixed.labels) == {0, 1}


def test_spray_needs_three_maps():
    with pytest.raises(InputError, match="at least 3 maps"):
        spray(np.random.rand(2, 8, 8))
