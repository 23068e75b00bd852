"""Strategies a model uses, found in its saliency maps: Spectral Relevance Analysis (SpRAy).

Lapuschkin, Wäldchen, Binder, Montavon, Samek and Müller, "Unmasking Clever Hans predictors and
assessing what machines really learn", Nature Communications 10, 1096 (2019). Maps of many
frames are made comparable (absolute value, downsampled, each scaled to unit sum), joined in a
symmetric k-nearest-neighbour graph, and clustered spectrally; the number of clusters is read
from the **eigengap** of the graph's normalised Laplacian: with ``c`` well separated groups of
maps the ``c`` smallest eigenvalues are near zero and the next one is not. Each cluster is a way
the model looks at frames (on the road's edge, on the horizon, on a dashboard artefact: a
"Clever Hans" strategy).

The clustering is scikit-learn's ``SpectralClustering`` on the precomputed graph (seeded); the
features, the graph, its Laplacian and the eigengap are computed here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["Strategies", "eigengap", "map_features", "neighbour_graph", "spray"]


@dataclass
class Strategies:
    """The result of :func:`spray`.

    Attributes
    ----------
    labels : numpy.ndarray
        int64 ``(N,)``, the cluster of each map, ``0 .. clusters-1``.
    clusters : int
        Number of clusters (from the eigengap unless given).
    eigenvalues : numpy.ndarray
        float64, the smallest eigenvalues of the normalised Laplacian, ascending, in [0, 2].
    features : numpy.ndarray
        float32 ``(N, h * w)``: the downsampled, unit-sum maps that were clustered.
    """

    labels: np.ndarray
    clusters: int
    eigenvalues: np.ndarray
    features: np.ndarray


def map_features(maps: np.ndarray, size: tuple[int, int] = (16, 48)) -> np.ndarray:
    """Saliency maps as comparable feature vectors: ``|map|``, resized to ``size`` (OpenCV area
    interpolation), each scaled to unit sum (an all-zero map stays zero).

    Parameters
    ----------
    maps : array (N, H, W)
        Finite values.
    size : (int, int)
        ``(h, w)`` after downsampling.

    Returns
    -------
    numpy.ndarray
        float32 ``(N, h * w)``, non-negative, rows summing to 1 (or 0).

    Raises
    ------
    InputError
        For another shape, non-finite values or a bad size.
    """
    import cv2

    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] < 1:
        raise InputError(f"maps must have shape (N, H, W), got {maps.shape}")
    if not np.isfinite(maps).all():
        raise InputError("maps hold NaN or infinite values (frames that were not read?): select finite ones")
    h, w = size
    if h < 1 or w < 1:
        raise InputError(f"size must be two positive sides, got {size}")
    out = np.empty((maps.shape[0], h * w), dtype=np.float32)
    for i, m in enumerate(np.abs(maps)):
        out[i] = cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA).ravel()
    total = out.sum(1, keepdims=True)
    return np.divide(out, total, out=np.zeros_like(out), where=total > 0)


def neighbour_graph(features: np.ndarray, neighbours: int = 10) -> np.ndarray:
    """Symmetric k-nearest-neighbour connectivity graph (Euclidean): ``A[i, j] = 1`` when either is
    among the other's ``neighbours`` nearest (itself excluded), float64 ``(N, N)``, zero diagonal.

    Raises
    ------
    InputError
        For ``neighbours`` outside ``1 .. N-1``.
    """
    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    if not 1 <= neighbours < n:
        raise InputError(f"neighbours must lie in 1 .. {n - 1} for {n} maps, got {neighbours}")
    sq = (x * x).sum(1)
    dist = sq[:, None] + sq[None] - 2.0 * x @ x.T
    np.fill_diagonal(dist, np.inf)
    order = np.argsort(dist, axis=1, kind="stable")[:, :neighbours]
    a = np.zeros((n, n))
    a[np.repeat(np.arange(n), neighbours), order.ravel()] = 1.0
    return np.maximum(a, a.T)


def eigengap(affinity: np.ndarray, max_clusters: int = 8) -> tuple[int, np.ndarray]:
    """The number of clusters from the eigengap of the normalised Laplacian
    ``L = I - D^{-1/2} A D^{-1/2}``.

    Returns
    -------
    clusters : int
        ``c`` in ``1 .. max_clusters`` maximising ``lambda_c - lambda_{c-1}`` (eigenvalues
        ascending, counted from 1).
    eigenvalues : numpy.ndarray
        float64, the ``max_clusters + 1`` smallest eigenvalues (fewer for small graphs).

    Raises
    ------
    InputError
        For a non-square or non-symmetric affinity, or a node with no edge.
    """
    a = np.asarray(affinity, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or not np.allclose(a, a.T):
        raise InputError(f"affinity must be a symmetric (N, N) matrix, got shape {a.shape}")
    degree = a.sum(1)
    if (degree <= 0).any():
        raise InputError("a map has no neighbour in the graph")
    inv = 1.0 / np.sqrt(degree)
    lap = np.eye(a.shape[0]) - inv[:, None] * a * inv[None]
    values = np.clip(np.linalg.eigvalsh(lap), 0.0, 2.0)[: max_clusters + 1]
    if values.size < 2:
        return 1, values
    gaps = np.diff(values)  # gaps[c - 1] = lambda_{c+1} - lambda_c (1-based)
    return int(np.argmax(gaps[:max_clusters]) + 1), values


def spray(
    maps: np.ndarray,
    *,
    clusters: int | None = None,
    max_clusters: int = 8,
    neighbours: int = 10,
    size: tuple[int, int] = (16, 48),
    seed: int = 0,
) -> Strategies:
    """Spectral Relevance Analysis (Lapuschkin et al. 2019) of a set of saliency maps.

    Parameters
    ----------
    maps : array (N, H, W)
        One method's maps of many frames (an audit store's ``maps/<method>``, or a sample of it).
    clusters : int, optional
        Number of clusters; default from the eigengap (:func:`eigengap`), at most
        ``max_clusters``.
    neighbours : int
        Neighbours per map in the graph (capped at ``N - 1``).
    size : (int, int)
        Downsampled map size (:func:`map_features`).
    seed : int
        Seed of the spectral clustering's k-means.

    Returns
    -------
    Strategies

    Raises
    ------
    InputError
        For fewer than 3 maps, bad shapes or values, or without scikit-learn.
    """
    try:
        from sklearn.cluster import SpectralClustering
    except ImportError:
        raise InputError("SpRAy needs scikit-learn: pip install 'fastviz[report]'") from None

    features = map_features(maps, size)
    n = features.shape[0]
    if n < 3:
        raise InputError(f"SpRAy needs at least 3 maps, got {n}")
    graph = neighbour_graph(features, min(neighbours, n - 1))
    found, values = eigengap(graph, min(max_clusters, n - 1))
    k = found if clusters is None else int(clusters)
    if not 1 <= k <= n:
        raise InputError(f"clusters must lie in 1 .. {n}, got {clusters}")
    if k == 1:
        labels = np.zeros(n, dtype=np.int64)
    else:
        with warnings.catch_warnings():
            # well separated strategies make a graph of several components: the case SpRAy looks for
            warnings.filterwarnings("ignore", message="Graph is not fully connected")
            labels = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed,
                                        assign_labels="kmeans").fit_predict(graph).astype(np.int64)
    return Strategies(labels=labels, clusters=k, eigenvalues=values, features=features)
