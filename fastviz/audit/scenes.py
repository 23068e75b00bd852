"""Scene groups by appearance, independent of the model: dense SIFT, a GMM vocabulary, Fisher
vectors and bag of visual words.

The audit report groups frames into scene types (straight road, bends, grass, ...) from what the
frames look like, so that a model's errors and maps can be read per scene. The representation is
the improved Fisher vector (Perronnin, Sánchez and Mensink, "Improving the Fisher Kernel for
Large-Scale Image Classification", ECCV 2010):

1. **Dense local descriptors** (:func:`dense_sift`): OpenCV's SIFT computed at keypoints on a
   regular grid (every ``step`` pixels, ``size`` pixels across) of each grayscale frame, so every
   frame gives the same number of descriptors, textured or not.
2. **Vocabulary** (:class:`Vocabulary`): a Gaussian mixture with diagonal covariances fitted to a
   sample of descriptors (scikit-learn's ``GaussianMixture``, seeded).
3. **Fisher vector** (:func:`fisher_vectors`): for descriptors ``x_t`` (``t = 1..T``) with
   posteriors ``g_t(k)`` under the mixture (weights ``w_k``, means ``mu_k``, standard deviations
   ``s_k``), the normalised gradients of the log-likelihood with respect to means and deviations

   ``G_mu_k    = 1 / (T sqrt(w_k))    sum_t g_t(k) (x_t - mu_k) / s_k``

   ``G_sigma_k = 1 / (T sqrt(2 w_k))  sum_t g_t(k) [(x_t - mu_k)^2 / s_k^2 - 1]``

   concatenated (``2 K D`` values), then power-normalised (``sign(z) |z|^alpha``, alpha 0.5) and
   L2-normalised: the paper's "improved" Fisher vector.
4. **Bag of visual words** (:func:`bag_of_words`), the simpler option: each descriptor votes for
   its most probable component; the histogram, L1-normalised.

:func:`scene_groups` clusters the vectors with k-means (scikit-learn, seeded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["Vocabulary", "bag_of_words", "choose_groups", "dense_sift", "fisher_vectors", "scene_groups", "scene_vectors"]


def _sklearn() -> None:
    import importlib.util

    if importlib.util.find_spec("sklearn") is None:
        raise InputError("scene groups need scikit-learn: pip install 'fastviz[report]'")


def dense_sift(frames: np.ndarray, step: int = 8, size: int = 12) -> np.ndarray:
    """SIFT descriptors on a regular grid of each frame.

    Parameters
    ----------
    frames : numpy.ndarray
        uint8 ``(N, H, W, 3)`` RGB (or ``(N, H, W)`` grayscale).
    step : int
        Grid spacing in pixels, >= 1.
    size : int
        Keypoint diameter in pixels (SIFT's support region), >= 2; the grid starts ``size / 2``
        from the border so every region lies inside the frame.

    Returns
    -------
    numpy.ndarray
        float32 ``(N, T, 128)``: ``T`` descriptors per frame, the same grid for every frame.

    Raises
    ------
    InputError
        For frames of another dtype or shape, or a grid with no point inside the frame.
    """
    import cv2

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or (frames.ndim == 4 and frames.shape[-1] != 3):
        raise InputError(f"frames must be uint8 (N, H, W, 3) or (N, H, W), got {frames.dtype} {frames.shape}")
    if step < 1 or size < 2:
        raise InputError(f"step must be >= 1 and size >= 2, got step={step}, size={size}")
    h, w = frames.shape[1:3]
    half = size / 2.0
    ys = np.arange(half, h - half + 1e-9, step)
    xs = np.arange(half, w - half + 1e-9, step)
    if ys.size == 0 or xs.size == 0:
        raise InputError(f"no grid point of size {size} fits in a {h}x{w} frame")
    points = [cv2.KeyPoint(float(x), float(y), float(size)) for y in ys for x in xs]
    sift = cv2.SIFT_create()
    out = np.empty((frames.shape[0], len(points), 128), dtype=np.float32)
    for i, frame in enumerate(frames):
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
        kept, desc = sift.compute(gray, points)
        if desc is None or len(kept) != len(points):
            raise InputError(f"SIFT dropped grid points on frame {i}")  # pragma: no cover - OpenCV keeps them
        out[i] = desc
    return out


@dataclass
class Vocabulary:
    """A Gaussian mixture with diagonal covariances over local descriptors.

    Attributes
    ----------
    weights : numpy.ndarray
        float64 ``(K,)``, summing to 1.
    means : numpy.ndarray
        float64 ``(K, D)``.
    variances : numpy.ndarray
        float64 ``(K, D)``, > 0.
    """

    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray

    @classmethod
    def fit(cls, descriptors: np.ndarray, k: int = 16, *, seed: int = 0, sample: int = 20000) -> Vocabulary:
        """Fit ``k`` components to descriptors ``(M, D)`` (or ``(N, T, D)``), at most ``sample`` of
        them drawn with ``seed``; scikit-learn's ``GaussianMixture(covariance_type="diag")``,
        k-means initialisation, seeded.

        Raises
        ------
        InputError
            For fewer descriptors than components, or without scikit-learn.
        """
        _sklearn()
        from sklearn.mixture import GaussianMixture

        x = np.asarray(descriptors, dtype=np.float64).reshape(-1, np.shape(descriptors)[-1])
        if k < 1 or x.shape[0] < k:
            raise InputError(f"a vocabulary of {k} components needs at least {k} descriptors, got {x.shape[0]}")
        rng = np.random.default_rng(seed)
        if x.shape[0] > sample:
            x = x[np.sort(rng.choice(x.shape[0], sample, replace=False))]
        gmm = GaussianMixture(n_components=k, covariance_type="diag", random_state=seed, reg_covar=1e-3,
                              max_iter=200).fit(x)
        return cls(weights=gmm.weights_.astype(np.float64), means=gmm.means_.astype(np.float64),
                   variances=gmm.covariances_.astype(np.float64))

    @property
    def size(self) -> int:
        return int(self.weights.shape[0])

    def posteriors(self, x: np.ndarray) -> np.ndarray:
        """Posterior of each component for descriptors ``x (M, D)``: float64 ``(M, K)``, rows
        summing to 1 (computed in the log domain)."""
        x = np.asarray(x, dtype=np.float64)
        log_det = np.log(self.variances).sum(1)  # (K,)
        d = x.shape[1]
        # log N(x | mu_k, diag(var_k)) for every descriptor and component
        quad = ((x[:, None, :] - self.means[None]) ** 2 / self.variances[None]).sum(-1)  # (M, K)
        log_p = np.log(self.weights)[None] - 0.5 * (d * np.log(2 * np.pi) + log_det[None] + quad)
        log_p -= log_p.max(1, keepdims=True)
        p = np.exp(log_p)
        return p / p.sum(1, keepdims=True)


def fisher_vectors(descriptors: np.ndarray, vocabulary: Vocabulary, *, alpha: float = 0.5,
                   normalize: bool = True) -> np.ndarray:
    """Improved Fisher vectors (Perronnin et al., ECCV 2010) of each frame's descriptors.

    Parameters
    ----------
    descriptors : numpy.ndarray
        ``(N, T, D)``: ``T`` descriptors per frame.
    vocabulary : Vocabulary
        ``K`` components over ``D`` dimensions.
    alpha : float
        Power normalisation exponent in (0, 1]; 1 disables it.
    normalize : bool
        Apply the power and L2 normalisation; ``False`` gives the raw normalised gradients
        ``G_mu``, ``G_sigma`` above.

    Returns
    -------
    numpy.ndarray
        float32 ``(N, 2 K D)``: the mean gradients of the ``K`` components, then the deviation
        gradients, each component's ``D`` values together; power- then L2-normalised (a vector
        of zeros stays zero).

    Raises
    ------
    InputError
        For another shape or a dimension unlike the vocabulary's.
    """
    x = np.asarray(descriptors, dtype=np.float64)
    if x.ndim != 3 or x.shape[2] != vocabulary.means.shape[1] or x.shape[1] < 1:
        raise InputError(f"descriptors must be (N, T, {vocabulary.means.shape[1]}), got {x.shape}")
    if not 0 < alpha <= 1:
        raise InputError(f"alpha must lie in (0, 1], got {alpha}")
    n, t, d = x.shape
    sigma = np.sqrt(vocabulary.variances)  # (K, D)
    w = vocabulary.weights
    out = np.empty((n, 2 * vocabulary.size * d), dtype=np.float64)
    for i in range(n):
        g = vocabulary.posteriors(x[i])  # (T, K)
        u = (x[i][:, None, :] - vocabulary.means[None]) / sigma[None]  # (T, K, D)
        g_mu = np.einsum("tk,tkd->kd", g, u) / (t * np.sqrt(w))[:, None]
        g_sigma = np.einsum("tk,tkd->kd", g, u**2 - 1.0) / (t * np.sqrt(2.0 * w))[:, None]
        out[i] = np.concatenate([g_mu.ravel(), g_sigma.ravel()])
    if not normalize:
        return out.astype(np.float32)
    out = np.sign(out) * np.abs(out) ** alpha
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out = np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)
    return out.astype(np.float32)


def bag_of_words(descriptors: np.ndarray, vocabulary: Vocabulary) -> np.ndarray:
    """Bag of visual words: each descriptor counts for its most probable component (ties: the
    first); per frame the L1-normalised histogram, float32 ``(N, K)``.

    Raises
    ------
    InputError
        For another shape than ``(N, T, D)``.
    """
    x = np.asarray(descriptors, dtype=np.float64)
    if x.ndim != 3 or x.shape[2] != vocabulary.means.shape[1] or x.shape[1] < 1:
        raise InputError(f"descriptors must be (N, T, {vocabulary.means.shape[1]}), got {x.shape}")
    out = np.zeros((x.shape[0], vocabulary.size), dtype=np.float64)
    for i in range(x.shape[0]):
        words = vocabulary.posteriors(x[i]).argmax(1)
        out[i] = np.bincount(words, minlength=vocabulary.size)
    return (out / x.shape[1]).astype(np.float32)


def scene_groups(vectors: np.ndarray, groups: int, *, seed: int = 0) -> np.ndarray:
    """k-means over per-frame vectors (Fisher vectors or word histograms): int64 labels ``(N,)``
    in ``0 .. groups-1`` (scikit-learn's ``KMeans``, k-means++ with 10 starts, seeded).

    Raises
    ------
    InputError
        For fewer frames than groups, or without scikit-learn.
    """
    _sklearn()
    from sklearn.cluster import KMeans

    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or groups < 1 or v.shape[0] < groups:
        raise InputError(f"{groups} scene groups need at least as many frames (N, F), got {v.shape}")
    return KMeans(n_clusters=groups, n_init=10, random_state=seed).fit_predict(v).astype(np.int64)



def scene_vectors(frames: np.ndarray, kind: str = "fisher", *, components: int = 16, pca: int | None = 32,
                  step: int = 8, size: int = 12, seed: int = 0) -> tuple[np.ndarray, Vocabulary]:
    """Per-frame scene vectors: dense SIFT, optionally PCA-reduced (to ``pca`` dimensions, as in
    Perronnin et al. 2010, which decorrelates the descriptors the diagonal GMM models), a
    vocabulary of ``components`` Gaussians fitted to them, then Fisher vectors or bags of words.

    Parameters
    ----------
    frames : numpy.ndarray
        uint8 ``(N, H, W, 3)`` RGB.
    kind : {"fisher", "bow"}
        Improved Fisher vectors (:func:`fisher_vectors`) or bags of visual words
        (:func:`bag_of_words`).
    components : int
        Vocabulary size ``K`` (capped at the number of descriptors).
    pca : int or None
        Descriptor dimensions kept by PCA (scikit-learn, whitening off, seeded); ``None`` keeps
        SIFT's 128.

    Returns
    -------
    vectors : numpy.ndarray
        float32 ``(N, 2 K D')`` Fisher vectors or ``(N, K)`` word histograms.
    vocabulary : Vocabulary
        Over the (reduced) descriptors.

    Raises
    ------
    InputError
        For an unknown kind, bad frames, or without scikit-learn.
    """
    if kind not in ("fisher", "bow"):
        raise InputError(f"kind must be 'fisher' or 'bow', got {kind!r}")
    _sklearn()
    desc = dense_sift(frames, step=step, size=size)  # (N, T, 128)
    n, t, d = desc.shape
    flat = desc.reshape(-1, d).astype(np.float64)
    if pca is not None and pca < d:
        from sklearn.decomposition import PCA

        keep = min(int(pca), flat.shape[0])
        rng = np.random.default_rng(seed)
        fit_rows = flat if flat.shape[0] <= 50000 else flat[np.sort(rng.choice(flat.shape[0], 50000, replace=False))]
        reducer = PCA(n_components=keep, random_state=seed).fit(fit_rows)
        flat = reducer.transform(flat)
    x = flat.reshape(n, t, -1)
    vocabulary = Vocabulary.fit(x, k=min(components, n * t), seed=seed)
    vectors = fisher_vectors(x, vocabulary) if kind == "fisher" else bag_of_words(x, vocabulary)
    return vectors, vocabulary


def choose_groups(vectors: np.ndarray, candidates=range(2, 7), *, seed: int = 0) -> tuple[int, dict[int, float]]:
    """The number of scene groups with the best mean silhouette coefficient (Rousseeuw 1987;
    scikit-learn's ``silhouette_score``, Euclidean) of :func:`scene_groups`' k-means labels.

    Returns
    -------
    k : int
        The best candidate (the smallest among ties); 1 when fewer than 3 frames or every
        vector is the same.
    scores : dict
        candidate -> silhouette in [-1, 1], for the candidates that could be scored.
    """
    _sklearn()
    from sklearn.metrics import silhouette_score

    v = np.asarray(vectors, dtype=np.float64)
    scores: dict[int, float] = {}
    for k in candidates:
        if not 2 <= k < v.shape[0]:
            continue
        labels = scene_groups(v, k, seed=seed)
        if np.unique(labels).size < 2:
            continue
        scores[int(k)] = float(silhouette_score(v, labels))
    if not scores:
        return 1, scores
    best = max(scores.values())
    return min(k for k, s in scores.items() if s == best), scores
