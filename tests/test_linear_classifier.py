"""The linear classifier on frozen features (kernelzoo.zoo.linear_classifier) and their cache
(kernelzoo.zoo.frozen_features): the chunked L-BFGS fit, its `rows`, float16 features, its memory."""
import os
import tracemalloc

import keras
import numpy as np
import pytest
import scipy.optimize

from kernelzoo.zoo.frozen_features import cached_features
from kernelzoo.zoo.linear_classifier import LOSSES, accuracy, fit_logistic


def _problem(rng, rows=300, dims=8, classes=3):
    """Features far from zero with columns of unlike scales (standardisation matters), and labels a
    noisy linear function of them."""
    scales = rng.uniform(0.1, 10, dims)
    x = (rng.normal(3.0, 2.0, size=(rows, dims)) * scales).astype("float32")
    y = np.argmax(x[:, :classes] / scales[:classes] + 0.5 * rng.normal(size=(rows, classes)), axis=1)
    return x, y


@pytest.mark.parametrize("chunk_rows", [None, 7])
@pytest.mark.parametrize("loss", LOSSES)
def test_linear_classifier_reaches_the_optimum(rng, loss, chunk_rows):
    """On the first 150 `rows` of 200, whole or 7 rows at a time: the float64 objective's gradient vanishes."""
    x = rng.normal(size=(200, 6)).astype("float32")
    y = np.argmax(x[:, :3] + 0.3 * rng.normal(size=(200, 3)), axis=1)
    kernel, bias, report = fit_logistic(x, y, 3, 0.1, rows=np.arange(150), loss=loss, tol=1e-12,
                                        chunk_rows=chunk_rows)
    assert report["converged"] or chunk_rows  # else its line search may stop at float32's noise floor, as here
    signs = np.where(np.arange(3)[None, :] == y[:150, None], 1.0, -1.0)

    def objective(theta):  # the same loss in float64: its gradient vanishes at the optimum
        logits = x[:150] @ theta[:18].reshape(6, 3) + theta[18:]
        if loss == "squared_hinge":  # one-vs-rest, 1/2 max(0, 1 - y f)^2 per class, mean over examples
            data = 0.5 * np.sum(np.maximum(1 - signs * logits, 0) ** 2) / 150
        else:
            data = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(150), y[:150]])
        return data + 0.05 * theta[:18] @ theta[:18]
    gradient = scipy.optimize.approx_fprime(np.concatenate([kernel.ravel(), bias]).astype("float64"), objective, 1e-6)
    assert np.abs(gradient).max() < 1e-4
    assert accuracy(x, y, kernel, bias, rows=np.arange(150, 200)) > 0.7


@pytest.mark.parametrize("column", ["zeros", "ones", "nearly constant"])
def test_a_constant_feature_column_does_not_stop_the_fit(rng, column):
    """A dead or nearly constant feature (a ReLU never or once active) made the penalty of its standardised weight
    l2 / std^2 ~ 1e24: L-BFGS stopped after 1-2 iterations at log 3, reporting convergence. The fit with it equals
    the fit without it, from zeros and from a random start (as the L2 path warm-starts from the head's weights)."""
    x = rng.normal(size=(500, 8)).astype("float32")
    y = np.argmax(x[:, :3] + 0.3 * rng.normal(size=(500, 3)), axis=1)
    x[:, 5] = {"zeros": np.zeros(500), "ones": np.ones(500),
               "nearly constant": 0.5 + 1e-6 * rng.normal(size=500)}[column]
    reference = fit_logistic(np.delete(x, 5, axis=1), y, 3, 1e-2)
    start = (rng.uniform(-0.5, 0.5, size=(8, 3)).astype("float32"), np.zeros(3, "float32"))
    for begin in (None, start):
        kernel, bias, report = fit_logistic(x, y, 3, 1e-2, start=begin)
        assert report["loss"] == pytest.approx(reference[2]["loss"], rel=1e-4), (column, begin is None)
        assert accuracy(x, y, kernel, bias) == pytest.approx(accuracy(np.delete(x, 5, axis=1), y, *reference[:2]))


@pytest.mark.parametrize("loss", LOSSES)
def test_chunked_fit_equals_the_in_memory_fit(rng, loss):
    """One chunk is the computation the fit did on its whole in-memory standardised copy before it read
    chunks (the same float32 operations in the same order: identical results); chunks of 7 rows reach
    the same optimum."""
    x, y = _problem(rng)
    original = x.copy()
    whole = fit_logistic(x, y, 3, 0.1, loss=loss, tol=1e-12)
    chunked = fit_logistic(x, y, 3, 0.1, loss=loss, tol=1e-12, chunk_rows=7)
    scale = np.abs(whole[0]).max()
    np.testing.assert_allclose(chunked[0], whole[0], rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(chunked[1], whole[1], rtol=0, atol=1e-3 * np.abs(whole[1]).max())
    assert chunked[2]["loss"] == pytest.approx(whole[2]["loss"], rel=1e-7)
    warm = fit_logistic(x, y, 3, 0.1, loss=loss, tol=1e-12, chunk_rows=7, start=whole[:2])
    # From the optimum, L-BFGS stops after a few float32-noise steps at tol 1e-12, their number set by
    # rounding (6 on an AVX2-only EPYC where this test once said <= 3): at most half the cold fit's count
    # shows the start was used.
    assert warm[2]["iterations"] <= whole[2]["iterations"] // 2
    assert warm[2]["loss"] == pytest.approx(whole[2]["loss"], rel=1e-7)
    np.testing.assert_array_equal(x, original)  # standardised in chunk copies only


def test_float16_features_give_nearly_the_same_classifier(rng, tmp_path):
    """The same fit on a read-only float16 memory map of the features: nearly the same kernel and accuracy."""
    x, y = _problem(rng, rows=2000, dims=20, classes=4)
    path = str(tmp_path / "features.npy")
    np.save(path, x.astype("float16"))
    half = np.load(path, mmap_mode="r")
    assert half.dtype == np.float16 and not half.flags.writeable
    reference = fit_logistic(x, y, 4, 1e-2, loss="squared_hinge")
    fitted = fit_logistic(half, y, 4, 1e-2, loss="squared_hinge", chunk_rows=300)
    np.testing.assert_allclose(fitted[0], reference[0], rtol=0, atol=1e-2 * np.abs(reference[0]).max())
    assert abs(accuracy(half, y, *fitted[:2], chunk_rows=300) - accuracy(x, y, *reference[:2])) <= 0.005


def test_rows_select_the_fitted_and_measured_rows(rng):
    """`rows` fits and measures exactly those rows (the others' labels are never read); bad ones are refused."""
    x, y = _problem(rng)
    rows = np.sort(rng.choice(len(x), 200, replace=False))
    scrambled = y.copy()
    scrambled[np.setdiff1d(np.arange(len(x)), rows)] = (y[np.setdiff1d(np.arange(len(x)), rows)] + 1) % 3
    kernel, bias, report = fit_logistic(x, scrambled, 3, 0.1, rows=rows, max_iter=50)
    expected = fit_logistic(x[rows], y[rows], 3, 0.1, max_iter=50)
    np.testing.assert_array_equal(kernel, expected[0])
    np.testing.assert_array_equal(bias, expected[1])
    assert report == expected[2]
    assert accuracy(x, scrambled, kernel, bias, rows=rows, chunk_rows=3) == accuracy(x[rows], y[rows], kernel, bias)
    for bad in (np.array([0, len(x)]), np.array([[0, 1]]), np.array([], int), np.array([0.5])):
        with pytest.raises(ValueError, match="`rows`"):
            fit_logistic(x, y, 3, 0.1, rows=bad)
    with pytest.raises(ValueError, match="`chunk_rows`"):
        accuracy(x, y, kernel, bias, chunk_rows=0)


def test_the_fit_on_a_float16_memory_map_never_copies_it(rng, tmp_path):
    """20,000 x 2,000 float16 features (80 MB on disk, 160 MB as float32): the Python-allocated peak of the fit,
    500 rows at a time, stays under a quarter of one float32 copy (the fit used to make one, 160 MB)."""
    rows, dims = 20_000, 2_000
    features = np.lib.format.open_memmap(str(tmp_path / "features.npy"), mode="w+", dtype="float16",
                                         shape=(rows, dims))
    for start in range(0, rows, 2000):
        features[start:start + 2000] = rng.normal(size=(2000, dims))
    features.flush()
    features = np.load(str(tmp_path / "features.npy"), mmap_mode="r")
    labels = rng.integers(0, 10, rows)
    tracemalloc.start()
    try:
        kernel, bias, _ = fit_logistic(features, labels, 10, 1.0, rows=np.arange(0, rows, 2), max_iter=2,
                                       chunk_rows=500)
        accuracy(features, labels, kernel, bias, rows=np.arange(1, rows, 2), chunk_rows=500)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.all(np.isfinite(kernel))
    assert peak < rows * dims * 4 / 4, f"peak {peak / 2 ** 20:.0f} MiB"


def _feature_model(scale=1.0):
    """Inputs (4,) -> "features" Dense(3) times `scale` -> "logits" Dense(2)."""
    inputs = keras.Input((4,))
    features = keras.layers.Dense(3, name="features", kernel_initializer=keras.initializers.Constant(scale))(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="logits")(features))


def test_feature_cache_stores_float16_under_its_own_name(tmp_path):
    images = np.random.default_rng(0).normal(size=(10, 4)).astype("float32")
    model, path = _feature_model(), str(tmp_path / "train-10.npy")
    single = cached_features(model, images, path)
    half = cached_features(model, images, path, dtype="float16")
    assert single.dtype == np.float32 and half.dtype == np.float16
    assert sorted(os.listdir(tmp_path)) == ["train-10.float16.npy", "train-10.npy"]
    np.testing.assert_allclose(half, single, rtol=1e-3, atol=1e-3)
    assert cached_features(None, images, path, dtype="float16").dtype == np.float16  # read back, not recomputed
    with pytest.raises(ValueError, match="`dtype`"):
        cached_features(model, images, path, dtype="bfloat16")


def test_feature_cache_refuses_values_beyond_float16(tmp_path):
    images = np.ones((5, 4), "float32")
    model, path = _feature_model(scale=1e5), str(tmp_path / "train-5.npy")
    with pytest.raises(ValueError, match="15 feature values exceed the float16 range"):
        cached_features(model, images, path, dtype="float16")
    assert cached_features(model, images, path).max() == pytest.approx(4e5)


def test_feature_dtype_is_a_checked_recipe_hyperparameter():
    from kernelzoo.zoo import registry
    recipe = registry.recipe(registry.info("ckn_cifar10_unsup_512_8192"))
    assert recipe.hyperparameters(registry.info("ckn_cifar10_unsup_512_8192"))["feature_dtype"] == "float16"
    assert recipe.hyperparameters(registry.info("ckn_cifar10_unsup_64_256"))["feature_dtype"] == "float32"
    assert recipe.hyperparameters(registry.info("coates_cifar10_n1600"), feature_dtype="Float16")["feature_dtype"] \
        == "float16"
    with pytest.raises(ValueError, match="`feature_dtype`"):
        recipe.hyperparameters(registry.info("ckn_cifar10_unsup_64_256"), feature_dtype="int8")


def test_labels_outside_the_classes_are_refused(rng):
    """A label K or -1 would index past the class scores (or wrap to the last one): refused, naming `labels`."""
    x, y = _problem(rng, rows=30)
    for bad in (3, -1):
        labels = y.copy()
        labels[4] = bad
        with pytest.raises(ValueError, match=r"`labels` \(N,\) in \[0, 3\)"):
            fit_logistic(x, labels, 3, 0.1, max_iter=5)
    with pytest.raises(ValueError, match="`rows`"):
        fit_logistic(x, y, 3, 0.1, rows=np.array([-1, 0]))


def test_all_constant_features_fit_the_class_frequencies(rng):
    """Every column constant (all features dead): nothing to standardise, the fit is finite and its bias the log
    class frequencies (up to a constant) under the logistic loss."""
    y = np.repeat([0, 1, 2], [10, 20, 30])
    kernel, bias, report = fit_logistic(np.zeros((60, 4), "float32"), y, 3, 0.1)
    assert np.all(np.isfinite(kernel)) and np.all(np.isfinite(bias))
    np.testing.assert_allclose(bias - bias.mean(), np.log([10, 20, 30]) - np.log([10, 20, 30]).mean(), atol=1e-3)


def test_squared_hinge_takes_column_labels():
    """Keras passes sparse labels as (N, 1) as often as (N,): the same per-example loss."""
    from kernelzoo.zoo.linear_classifier import one_vs_rest_squared_hinge
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.3, -2.0]], "float32")
    labels = np.array([0, 2])
    expected = np.asarray(one_vs_rest_squared_hinge(labels, logits))
    assert expected.shape == (2,)
    np.testing.assert_allclose(np.asarray(one_vs_rest_squared_hinge(labels[:, None], logits)), expected, rtol=1e-6)
