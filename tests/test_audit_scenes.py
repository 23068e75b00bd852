"""Scene groups: dense SIFT, the GMM vocabulary, Fisher vectors (against a plain reference and
the log-likelihood's own gradients) and bag of visual words."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from fastviz.audit.scenes import (
    Vocabulary,
    bag_of_words,
    choose_groups,
    dense_sift,
    fisher_vectors,
    scene_groups,
    scene_vectors,
)
from fastviz.errors import InputError

# a tiny hand-made mixture: K = 2 components over D = 2 dimensions
VOCAB = Vocabulary(
    weights=np.array([0.3, 0.7]),
    means=np.array([[0.0, 1.0], [2.0, -1.0]]),
    variances=np.array([[1.0, 0.5], [2.0, 1.5]]),
)
X = np.array([[[0.5, 0.2], [1.8, -0.7], [-0.4, 1.9]], [[2.5, -1.5], [1.0, 0.0], [0.1, 0.9]]])  # (N=2, T=3, D=2)


def plain_posteriors(x, v):
    """Posteriors with the Gaussian densities written out, no log domain."""
    dens = []
    for k in range(v.size):
        p = v.weights[k]
        for d in range(x.shape[0]):
            var = v.variances[k, d]
            p *= math.exp(-((x[d] - v.means[k, d]) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)
        dens.append(p)
    total = sum(dens)
    return [p / total for p in dens]


def plain_fisher(x, v):
    """The ECCV 2010 formulas with loops: G_mu then G_sigma, component by component."""
    t, dim = x.shape
    g_mu = np.zeros((v.size, dim))
    g_sigma = np.zeros((v.size, dim))
    for xt in x:
        gamma = plain_posteriors(xt, v)
        for k in range(v.size):
            for d in range(dim):
                s = math.sqrt(v.variances[k, d])
                u = (xt[d] - v.means[k, d]) / s
                g_mu[k, d] += gamma[k] * u / (t * math.sqrt(v.weights[k]))
                g_sigma[k, d] += gamma[k] * (u * u - 1) / (t * math.sqrt(2 * v.weights[k]))
    return np.concatenate([g_mu.ravel(), g_sigma.ravel()])


def mean_log_likelihood(x, v):
    total = 0.0
    for xt in x:
        p = 0.0
        for k in range(v.size):
            q = v.weights[k]
            for d in range(x.shape[1]):
                var = v.variances[k, d]
                q *= math.exp(-((xt[d] - v.means[k, d]) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)
            p += q
        total += math.log(p)
    return total / len(x)


def test_posteriors_match_the_densities_written_out():
    got = VOCAB.posteriors(X[0])
    want = np.array([plain_posteriors(xt, VOCAB) for xt in X[0]])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(got.sum(1), 1.0)


def test_raw_fisher_vectors_match_the_plain_formulas():
    got = fisher_vectors(X, VOCAB, normalize=False)
    assert got.shape == (2, 2 * 2 * 2) and got.dtype == np.float32
    for i in range(2):
        np.testing.assert_allclose(got[i], plain_fisher(X[i], VOCAB), rtol=1e-5, atol=1e-7)


def test_fisher_vectors_are_the_normalised_gradients_of_the_log_likelihood():
    """G_mu = (sigma / sqrt(w)) dL/dmu and G_sigma = (sigma / sqrt(2 w)) dL/dsigma, with L the mean
    log-likelihood of the frame's descriptors: checked by central differences."""
    x = X[1]
    raw = fisher_vectors(x[None], VOCAB, normalize=False)[0].reshape(2, 2, 2)  # (mu|sigma, K, D)
    eps = 1e-6
    for k in range(2):
        for d in range(2):
            sigma = math.sqrt(VOCAB.variances[k, d])
            up, down = (Vocabulary(VOCAB.weights, VOCAB.means.copy(), VOCAB.variances.copy()) for _ in range(2))
            up.means[k, d] += eps
            down.means[k, d] -= eps
            grad_mu = (mean_log_likelihood(x, up) - mean_log_likelihood(x, down)) / (2 * eps)
            assert raw[0, k, d] == pytest.approx(grad_mu * sigma / math.sqrt(VOCAB.weights[k]), rel=1e-4)
            up, down = (Vocabulary(VOCAB.weights, VOCAB.means.copy(), VOCAB.variances.copy()) for _ in range(2))
            up.variances[k, d] = (sigma + eps) ** 2
            down.variances[k, d] = (sigma - eps) ** 2
            grad_sigma = (mean_log_likelihood(x, up) - mean_log_likelihood(x, down)) / (2 * eps)
            assert raw[1, k, d] == pytest.approx(grad_sigma * sigma / math.sqrt(2 * VOCAB.weights[k]), rel=1e-4)


def test_power_and_l2_normalisation():
    raw = fisher_vectors(X, VOCAB, normalize=False).astype(np.float64)
    got = fisher_vectors(X, VOCAB)
    want = np.sign(raw) * np.sqrt(np.abs(raw))
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
    plain = fisher_vectors(X, VOCAB, alpha=1.0)
    np.testing.assert_allclose(plain, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_bag_of_words_counts_the_most_probable_component():
    # X[0]: (0.5, 0.2) and (-0.4, 1.9) lie near component 0, (1.8, -0.7) near component 1
    np.testing.assert_allclose(bag_of_words(X, VOCAB)[0], [2 / 3, 1 / 3], rtol=1e-6)
    assert [int(np.argmax(plain_posteriors(xt, VOCAB))) for xt in X[0]] == [0, 1, 0]


def test_shapes_are_checked():
    with pytest.raises(InputError, match=r"descriptors must be \(N, T, 2\)"):
        fisher_vectors(X[0], VOCAB)
    with pytest.raises(InputError, match=r"descriptors must be"):
        bag_of_words(np.zeros((1, 3, 5)), VOCAB)
    with pytest.raises(InputError, match="alpha"):
        fisher_vectors(X, VOCAB, alpha=0.0)
    with pytest.raises(InputError, match="uint8"):
        dense_sift(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(InputError, match="no grid point"):
        dense_sift(np.zeros((1, 8, 8, 3), np.uint8), size=12)
    with pytest.raises(InputError, match="at least 5 descriptors"):
        Vocabulary.fit(np.zeros((4, 2)), 5)
    with pytest.raises(InputError, match="need at least as many frames"):
        scene_groups(np.zeros((2, 3)), 3)


def test_dense_sift_is_opencv_sift_on_the_grid():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    got = dense_sift(frames, step=8, size=12)
    # grid centres from 6 to H-6 (40: 6, 14, 22, 30) and W-6 (56: 6, 14, .., 46): 4 x 6 points
    assert got.shape == (2, 24, 128) and got.dtype == np.float32
    gray = cv2.cvtColor(frames[1], cv2.COLOR_RGB2GRAY)
    points = [cv2.KeyPoint(float(x), float(y), 12.0) for y in (6, 14, 22, 30) for x in (6, 14, 22, 30, 38, 46)]
    _, want = cv2.SIFT_create().compute(gray, points)
    np.testing.assert_array_equal(got[1], want)
    flat = np.full((1, 40, 56, 3), 128, np.uint8)
    assert not dense_sift(flat).any()  # no gradient, no descriptor mass


def striped(n: int, vertical: bool, seed: int) -> np.ndarray:
    """Frames of stripes with pixel noise: one texture direction per group."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        yy, xx = np.mgrid[:48, :48]
        wave = np.sin((xx if vertical else yy) * 2 * np.pi / 8)
        img = 128 + 90 * wave + rng.normal(0, 10, wave.shape)
        frames.append(np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2))
    return np.stack(frames)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_textures_fall_into_two_groups(seed):
    frames = np.concatenate([striped(6, True, seed + 10), striped(6, False, seed + 20)])
    desc = dense_sift(frames, step=4, size=12)
    vocab = Vocabulary.fit(desc, 4, seed=seed)
    labels = scene_groups(bag_of_words(desc, vocab), 2, seed=seed)
    assert len(set(labels[:6])) == 1 and len(set(labels[6:])) == 1 and labels[0] != labels[6]
    # the vocabulary's components split by texture, so the two groups' Fisher vectors live on
    # disjoint components: orthogonal across groups. (Within a group of frames that differ only by
    # noise they are dominated by that noise, which power normalisation amplifies: FVs measure
    # deviations from the vocabulary, and these frames are what it was fitted on.)
    fv = fisher_vectors(desc, vocab).astype(np.float64)
    across = fv[:6] @ fv[6:].T
    assert np.abs(across).max() < 0.05


def test_the_vocabulary_is_reproducible_by_seed():
    desc = dense_sift(striped(4, True, 3))
    a, b = Vocabulary.fit(desc, 3, seed=5), Vocabulary.fit(desc, 3, seed=5)
    np.testing.assert_array_equal(a.means, b.means)
    np.testing.assert_allclose(a.weights.sum(), 1.0)
    assert (a.variances > 0).all() and a.means.shape == (3, 128)


def test_scene_vectors_are_pca_then_vocabulary_then_fisher_vectors():
    """The pipeline composed by hand from scikit-learn's PCA and this module's pieces gives the
    same vectors."""
    from sklearn.decomposition import PCA

    frames = np.concatenate([striped(4, True, 1), striped(4, False, 2)])
    vectors, vocab = scene_vectors(frames, "fisher", components=3, pca=8, step=6, size=12, seed=4)
    desc = dense_sift(frames, step=6, size=12)
    n, t, d = desc.shape
    reduced = PCA(n_components=8, random_state=4).fit_transform(desc.reshape(-1, d).astype(np.float64))
    by_hand = Vocabulary.fit(reduced.reshape(n, t, 8), 3, seed=4)
    np.testing.assert_allclose(vocab.means, by_hand.means, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(vectors, fisher_vectors(reduced.reshape(n, t, 8), by_hand), rtol=1e-5, atol=1e-6)
    assert vectors.shape == (8, 2 * 3 * 8)
    words, _ = scene_vectors(frames, "bow", components=3, pca=None, step=6, size=12, seed=4)
    assert words.shape == (8, 3)
    np.testing.assert_allclose(words.sum(1), 1.0, rtol=1e-6)
    with pytest.raises(InputError, match="kind"):
        scene_vectors(frames, "vlad")


def test_choose_groups_finds_the_planted_number():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + rng.normal(0, 0.5, (15, 2)) for c in centres])
    k, scores = choose_groups(points, seed=0)
    assert k == 3 and set(scores) == {2, 3, 4, 5, 6}
    assert scores[3] == max(scores.values()) and -1.0 <= min(scores.values())
    assert choose_groups(points[:2], seed=0) == (1, {})  # too few frames to compare groupings
