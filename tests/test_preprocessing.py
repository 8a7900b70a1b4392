"""Preprocessing layers: ZCA patch whitening recovers a planted covariance, contrast normalisation, saving."""
import keras
import numpy as np
import pytest

import kernelzoo  # noqa: F401
from kernelzoo.zoo.simnet.preprocessing import (BrightnessContrastNormalization, PatchWhitening, fit_zca,
                                                sample_patch_rows)


def _inverse_sqrt(cov, eps=0.0):
    values, vectors = np.linalg.eigh(cov)
    return (vectors / np.sqrt(values + eps)) @ vectors.T


def test_fit_zca_recovers_planted_covariance():
    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((5, 5))
    cov = mixing @ mixing.T + 0.5 * np.eye(5)
    mean = np.array([1.0, -2.0, 0.5, 3.0, 0.0])
    rows = rng.multivariate_normal(mean, cov, size=20000)
    fitted_mean, zca = fit_zca(rows, eps=0.0)
    np.testing.assert_allclose(fitted_mean, mean, atol=0.1)
    np.testing.assert_allclose(zca, _inverse_sqrt(cov), atol=0.05)
    white = (rows - fitted_mean) @ zca
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(5), atol=1e-3)


def test_patch_whitening_layer_on_planted_pixels():
    # Pixels i.i.d. across positions, channels mixed by A: patch covariance = I_4 (x) A A^T.
    rng = np.random.default_rng(1)
    mixing = np.array([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.5, -0.5, 0.5]])
    pixels = rng.standard_normal((300, 10, 10, 3)) @ mixing.T + np.array([10.0, 20.0, 30.0])
    layer = PatchWhitening(patch_size=2, normalize=False, zca_eps=0.0)
    layer.adapt(pixels.astype("float32"), max_patches=20000, seed=0)
    assert layer.fitted
    np.testing.assert_allclose(layer.mean.numpy(), np.tile([10.0, 20.0, 30.0], 4), atol=0.1)
    expected = np.kron(np.eye(4), _inverse_sqrt(mixing @ mixing.T))
    np.testing.assert_allclose(layer.zca.numpy(), expected, atol=0.06)
    out = keras.ops.convert_to_numpy(layer(pixels[:50].astype("float32"))).reshape(-1, 12)
    np.testing.assert_allclose(np.cov(out, rowvar=False), np.eye(12), atol=0.1)


def test_patch_whitening_matches_coates_recipe():
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 255, (4, 5, 5, 2)).astype("float32")
    layer = PatchWhitening(patch_size=(2, 3), norm_eps=10.0, zca_eps=0.1)
    layer.adapt(images, max_patches=200, seed=0)
    out = keras.ops.convert_to_numpy(layer(images))
    assert out.shape == (4, 4, 3, 12)
    patch = images[1, 2:4, 1:4, :].reshape(-1)  # position (2, 1), entries in (row, col, channel) order
    patch = (patch - patch.mean()) / np.sqrt(patch.var(ddof=1) + 10.0)
    np.testing.assert_allclose(out[1, 2, 1], (patch - layer.mean.numpy()) @ layer.zca.numpy(), rtol=1e-4, atol=1e-4)


def test_brightness_contrast_normalization():
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, (3, 6, 6, 3)).astype("float32") * np.array([1.0, 0.2, 3.0])[:, None, None, None]
    out = keras.ops.convert_to_numpy(BrightnessContrastNormalization(eps=1e-3)(images))
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1.0, atol=1e-3)


def test_brightness_contrast_normalization_pools_the_channels_and_adds_eps():
    """One mean and one variance per image over height, width and channels (its colour offsets survive), eps added
    to the variance: out = (x - mean(x)) / sqrt(var(x) + eps), here with eps = 10 of a variance of ~70."""
    rng = np.random.default_rng(5)
    images = (rng.uniform(0, 4, (2, 5, 5, 3)) + np.array([0.0, 10.0, 20.0])).astype("float32")
    out = keras.ops.convert_to_numpy(BrightnessContrastNormalization(eps=10.0)(images))
    flat = images.reshape(2, -1).astype("float64")
    expected = (flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + 10.0)
    np.testing.assert_allclose(out.reshape(2, -1), expected, rtol=1e-5, atol=1e-5)


def test_fit_zca_adds_eps_to_the_eigenvalues():
    """W = V (D + eps)^(-1/2) V^T, so W (C + eps I) W = I for the rows' covariance C."""
    rng = np.random.default_rng(6)
    rows = rng.standard_normal((500, 4)) @ rng.standard_normal((4, 4))
    _, zca = fit_zca(rows, eps=0.5)
    cov = np.cov(rows, rowvar=False)
    np.testing.assert_allclose(zca @ (cov + 0.5 * np.eye(4)) @ zca, np.eye(4), atol=1e-4)


def test_fit_zca_refuses_eps_0_on_a_singular_covariance():
    """Rows in a plane of R^3: no variance along its normal, no inverse square root there without eps."""
    rows = np.random.default_rng(7).standard_normal((100, 2)) @ np.array([[1.0, 2.0, 3.0], [0.0, 1.0, -1.0]])
    with pytest.raises(ValueError, match="`eps`=0 with a singular patch covariance"):
        fit_zca(rows, 0.0)


def test_fewer_patches_than_images_still_gives_the_patches_asked_for():
    """max_patches below the number of images: at least one patch of each image, then max_patches of those
    (rounding the per-image share down took none)."""
    images = np.random.default_rng(8).uniform(0, 255, (10, 4, 4, 2)).astype("float32")
    rows = sample_patch_rows(lambda batch: batch, images, 4, 3, np.random.default_rng(0))
    assert rows.shape == (4, 2)
    pixels = images.reshape(-1, 2)
    assert all((pixels == row).all(axis=1).any() for row in rows)  # each row is one of the images' pixels


def test_fitted_whitening_survives_save_and_load(tmp_path):
    rng = np.random.default_rng(4)
    images = rng.uniform(0, 255, (20, 8, 8, 3)).astype("float32")
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, PatchWhitening(3, name="white")(BrightnessContrastNormalization()(inputs)))
    model.get_layer("white").adapt(images[:, :, :, :], max_patches=500)
    path = str(tmp_path / "white.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("white").fitted
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images[:2])),
                               keras.ops.convert_to_numpy(model(images[:2])), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, name", [({"patch_size": 0}, "patch_size"), ({"norm_eps": -1}, "norm_eps"),
                                          ({"zca_eps": "x"}, "zca_eps"), ({"padding": "full"}, "padding")])
def test_patch_whitening_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PatchWhitening(**kwargs)


def test_bad_adapt_and_eps_arguments():
    with pytest.raises(ValueError, match="`images`"):
        PatchWhitening(2).adapt(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="`max_patches`"):
        PatchWhitening(2).adapt(np.zeros((2, 4, 4, 3)), max_patches=1)
    with pytest.raises(ValueError, match="`eps`"):
        BrightnessContrastNormalization(eps=0)
    with pytest.raises(ValueError, match="`patches`"):
        fit_zca(np.zeros(5), 0.1)
