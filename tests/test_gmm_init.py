"""Generalized-Gaussian mixture EM and gmm_init (paper 000 Sec. 5) on planted mixtures."""
import keras
import numpy as np
import pytest

import kernelzoo  # noqa: F401
from kernelzoo.layers import Similarity
from kernelzoo.zoo.simnet import init, models


def _planted(rng, rows, beta, means, scales, priors):
    labels = rng.choice(len(priors), size=rows, p=priors)
    # |g| ~ Gamma(1/beta, 1)^(1/beta) with a random sign is a unit generalized Gaussian of shape beta.
    shape = np.asarray(beta, float)[labels][:, None] if np.ndim(beta) else beta
    magnitude = rng.gamma(1.0 / shape, 1.0, size=(rows, means.shape[1])) ** (1.0 / shape)
    noise = magnitude * rng.choice([-1.0, 1.0], size=magnitude.shape)
    return (means[labels] + scales[labels] * noise).astype("float32"), labels


def _match(fitted, planted):
    return [int(np.argmin(((fitted - m) ** 2).sum(1))) for m in planted]


MEANS = np.array([[-6.0, 0.0, 4.0, 1.0], [5.0, 5.0, -3.0, 0.0], [0.0, -6.0, 0.0, -5.0]])
SCALES = np.array([[1.0, 0.5, 2.0, 1.0], [0.7, 1.5, 1.0, 0.5], [1.2, 1.0, 0.6, 2.0]])
PRIORS = np.array([0.5, 0.3, 0.2])


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_em_recovers_planted_mixture(beta):
    rng = np.random.default_rng(0)
    x, _ = _planted(rng, 6000, beta, MEANS, SCALES, PRIORS)
    mixture = init.fit_gg_mixture(x, 3, beta, iterations=40, seed=0)
    order = _match(mixture.means, MEANS)
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(mixture.means[order], MEANS, atol=0.15)
    np.testing.assert_allclose(mixture.scales[order], SCALES, rtol=0.12)
    np.testing.assert_allclose(mixture.priors[order], PRIORS, atol=0.03)
    history = np.array(mixture.log_likelihood)
    assert np.all(np.diff(history) > -1e-4 * np.abs(history[:-1]))  # (generalised) EM never goes down
    np.testing.assert_allclose(mixture.log_likelihood_of(x), history[-1], rtol=1e-3)


def test_em_learns_the_shapes():
    rng = np.random.default_rng(1)
    x, _ = _planted(rng, 6000, np.array([1.0, 2.0, 2.0]), MEANS, SCALES, PRIORS)
    mixture = init.fit_gg_mixture(x, 3, "learn", iterations=40, seed=0)
    shapes = mixture.shapes[_match(mixture.means, MEANS)]
    assert shapes[0] < 1.35 and shapes[1] > 1.6 and shapes[2] > 1.6


def test_learned_shapes_stay_in_range_and_follow_a_fixed_shape_fit():
    """Uniform data pushed the learned shape up until the moments overflowed (NaN log-likelihood); a learned fit
    after a fixed non-1/2 shape's (one compiled kernel, retraced with relaxed shapes) failed to trace."""
    x = np.random.default_rng(3).uniform(-1, 1, (2000, 3)).astype("float32")
    init.fit_gg_mixture(x, 1, 1.5, iterations=2)
    mixture = init.fit_gg_mixture(x, 2, "learn", iterations=40, tol=0)
    assert np.all(np.isfinite(mixture.log_likelihood)) and np.all(np.isfinite(mixture.weights))
    assert np.all((mixture.shapes >= init.BETA_RANGE[0]) & (mixture.shapes <= init.BETA_RANGE[1]))
    assert mixture.log_likelihood[-1] >= mixture.log_likelihood[0]


def test_fit_is_deterministic_for_a_seed():
    x, _ = _planted(np.random.default_rng(2), 1000, 1.0, MEANS, SCALES, PRIORS)
    a = init.fit_gg_mixture(x, 3, 1.0, iterations=5, seed=7)
    b = init.fit_gg_mixture(x, 3, 1.0, iterations=5, seed=7)
    np.testing.assert_array_equal(a.means, b.means)
    np.testing.assert_array_equal(a.scales, b.scales)


@pytest.mark.parametrize("beta", [1.0, 1.5, 2.0])
def test_component_log_density_is_the_generalized_gaussian_density(beta):
    """log p_l(x) = sum_i log(beta / (2 alpha_li Gamma(1/beta))) - (|x_i - mu_li| / alpha_li)^beta (Sec. 5):
    scipy's gennorm density, whatever the shape (the Similarity weights are u = alpha^(-beta))."""
    from scipy.stats import gennorm
    x = 3 * np.random.default_rng(9).normal(size=(5, 4))
    mixture = init.GGMixture(MEANS, SCALES, np.full(3, beta), PRIORS, [])
    expected = gennorm.logpdf(x[:, None, :], beta, loc=MEANS[None], scale=SCALES[None]).sum(axis=2)
    np.testing.assert_allclose(mixture.component_log_density(x), expected, rtol=1e-5, atol=1e-3)


def test_em_history_is_the_log_likelihood_of_overlapping_components():
    """The history is the mean log sum_l lambda_l p_l(x) over all components, not the likeliest one's: two
    components sharing one Gaussian blob end at the fitted mixture's own log-likelihood."""
    x = np.random.default_rng(10).normal(size=(2000, 2)).astype("float32")
    mixture = init.fit_gg_mixture(x, 2, 2.0, iterations=30, tol=0)
    np.testing.assert_allclose(mixture.log_likelihood[-1], mixture.log_likelihood_of(x), rtol=2e-3)


def test_a_component_starved_to_one_row_is_reseeded_in_the_data():
    """k-means++ seeds a component at the one far outlier; with its single row it is starved (< 2 rows), so it is
    re-seeded at a row of the bulk with the data's scale: not left on that row (the scale floor), nor given the
    scale of that row's distance (~1400) to its new seed."""
    x = np.random.default_rng(11).normal(size=(1000, 2)).astype("float32")
    x[0] = 1000.0
    mixture = init.fit_gg_mixture(x, 3, 2.0, iterations=10, tol=0)
    assert np.abs(mixture.means).max() < 10 and 0.3 < mixture.scales.min() and mixture.scales.max() < 3


def test_gmm_init_on_a_layer_gives_log_densities():
    rng = np.random.default_rng(3)
    x, _ = _planted(rng, 3000, 1.0, MEANS, SCALES, PRIORS)
    layer = Similarity(3, 1, similarity="l1", weighted=True)
    images = x.reshape(30, 10, 10, 4)
    report = init.gmm_init(layer, images, num_patches=3000, iterations=30)
    mixture = report["mixture"]
    np.testing.assert_allclose(layer.templates.numpy().reshape(4, 3).T, mixture.means, rtol=1e-6)
    np.testing.assert_allclose(layer.template_weights.numpy().reshape(4, 3).T, 1.0 / mixture.scales, rtol=1e-5)
    out = keras.ops.convert_to_numpy(layer(images[:2])).reshape(-1, 3)
    expected = mixture.component_log_density(x[:200]) - mixture.log_normalizer()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-3)


def test_gmm_init_sets_location_priors_as_offsets():
    # 1x1 "patches" of a 1-channel 8x8 image: the top half mostly from component A, the bottom mostly B.
    rng = np.random.default_rng(4)
    top = rng.random((200, 4, 8)) < 0.9
    bottom = rng.random((200, 4, 8)) < 0.2
    is_a = np.concatenate([top, bottom], axis=1)
    pixels = np.where(is_a, -4.0, 4.0) + rng.standard_normal(is_a.shape)
    images = pixels[..., None].astype("float32")
    model = models.simnet_patch_labeling(n=2, p=2, input_shape=(8, 8, 1), num_classes=3, patch_size=1,
                                         whitening=False, offset_regions=(2, 2))
    report = init.gmm_init(model, images, num_patches=4000, iterations=20, offset_images=200)
    assert report["mex_layer"] == "mex_templates"
    a = int(np.argmin(report["mixture"].means[:, 0]))
    priors = report["region_priors"][..., a]
    np.testing.assert_allclose(priors[0], [0.9, 0.9], atol=0.03)
    np.testing.assert_allclose(priors[1], [0.2, 0.2], atol=0.03)
    offsets = model.get_layer("mex_templates").offsets_variable.numpy()  # (2, 2, 3, 1, 1, 2)
    expected = np.log(report["region_priors"]) + report["mixture"].log_normalizer()
    np.testing.assert_allclose(offsets[:, :, 0, 0, 0, :], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(offsets[:, :, 1], offsets[:, :, 2])  # the same for every class


def test_location_priors_split_an_odd_map_as_the_mex_regions_do():
    """A 7-row map: the Mex shares offset region (2 i) // 7 over row i, rows 0-3 and 4-6; here rows 0-3 are mostly
    component A (0.9) and rows 4-6 mostly B, so the priors of A are 0.9 and 0.1 (not 0.3 with row 3 moved)."""
    rng = np.random.default_rng(13)
    is_a = rng.random((300, 7, 7)) < np.where(np.arange(7) < 4, 0.9, 0.1)[:, None]
    images = (np.where(is_a, -4.0, 4.0) + rng.standard_normal(is_a.shape))[..., None].astype("float32")
    model = models.simnet_patch_labeling(n=2, p=2, input_shape=(7, 7, 1), num_classes=2, patch_size=1,
                                         whitening=False, offset_regions=(2, 1))
    report = init.gmm_init(model, images, num_patches=3000, iterations=10, offset_images=300)
    a = int(np.argmin(report["mixture"].means[:, 0]))
    np.testing.assert_allclose(report["region_priors"][:, 0, a], [0.9, 0.1], atol=0.03)


def test_extract_patches_lists_entries_in_conv_kernel_order():
    """Patch (i, j) with strides (sh, sw) is maps[:, sh i:sh i + kh, sw j:sw j + kw, :] flattened by row, column,
    channel: the (kh, kw, C) order of a Conv2D / Similarity kernel that gmm_init's templates are reshaped to."""
    maps = np.random.default_rng(12).normal(size=(2, 7, 8, 3)).astype("float32")
    patches = init.extract_patches(maps, (2, 3), (2, 1))
    assert patches.shape == (2, 3, 6, 18)
    for i, j in ((0, 0), (2, 5), (1, 3)):
        np.testing.assert_array_equal(patches[:, i, j], maps[:, 2 * i:2 * i + 2, j:j + 3].reshape(2, -1))


def test_a_region_no_position_maps_to_keeps_the_global_priors():
    """Mex offsets unshared over a 'same' 3x3 window of stride 1: positions go to the region of the first output
    that uses them, so the last row and column of regions get none: their offsets are the global priors'."""
    from kernelzoo.layers import Mex
    inputs = keras.Input((6, 6, 2))
    x = Similarity(3, 1, similarity="l2", name="sim")(inputs)
    x = Mex(num_instances=2, pool_size=3, strides=1, padding="same", offsets="unshared", name="mex")(x)
    model = keras.Model(inputs, x)
    images = np.random.default_rng(0).normal(size=(20, 6, 6, 2)).astype("float32")
    report = init.gmm_init(model, images, num_patches=500, iterations=3)
    offsets = model.get_layer("mex").offsets_variable.numpy()
    assert np.all(np.isfinite(offsets))
    priors = report["mixture"].priors
    for empty in (report["region_priors"][5], report["region_priors"][:, 5]):
        np.testing.assert_allclose(empty, np.broadcast_to(priors, empty.shape), rtol=1e-6)
    assert not np.allclose(report["region_priors"][0, 0], priors, rtol=1e-3)  # the others: fitted to their positions


def test_a_constant_coordinate_gets_the_scale_floor_of_the_others():
    """Its spread is 0: the floor relative to it was ~0, and its weights ~1e26."""
    x = np.random.default_rng(0).normal(size=(300, 4)).astype("float32")
    x[:, 0] = 1.0
    for beta in (1.0, 2.0):
        mixture = init.fit_gg_mixture(x, 3, beta, iterations=3)
        assert np.all(np.isfinite(mixture.log_likelihood)) and mixture.weights.max() < 1e3


def test_unweighted_layer_fits_unit_scales():
    x, _ = _planted(np.random.default_rng(5), 2000, 2.0, MEANS, np.ones_like(SCALES), PRIORS)
    layer = Similarity(3, 1, similarity="l2", weighted=False)
    report = init.gmm_init(layer, x.reshape(20, 10, 10, 4), iterations=20)
    np.testing.assert_array_equal(report["mixture"].scales, 1.0)
    order = _match(report["mixture"].means, MEANS)
    np.testing.assert_allclose(report["mixture"].means[order], MEANS, atol=0.2)


@pytest.mark.parametrize("start", init.KMEANS_INITS)
def test_kmeans_finds_separated_clusters(start):
    x, _ = _planted(np.random.default_rng(6), 1500, 2.0, MEANS, 0.3 * SCALES, PRIORS)
    centers = init.kmeans(x, 3, iterations=10, seed=0, init=start)
    np.testing.assert_allclose(centers[_match(centers, MEANS)], MEANS, atol=0.1)
    # Distances in blocks of rows: the same iterations whatever the block size.
    np.testing.assert_array_equal(init.kmeans(x, 3, iterations=10, seed=0, init=start, block=7), centers)
    with pytest.raises(ValueError, match="`init`"):
        init.kmeans(x, 3, init="random")
    with pytest.raises(ValueError, match="`k`=4 exceeds the number of rows"):  # either start
        init.kmeans(x[:3], 4, init=start)


def test_bad_arguments():
    linear = Similarity(2, 1, similarity="linear")
    images = np.zeros((2, 3, 3, 4), "float32")
    with pytest.raises(ValueError, match="model_or_layer"):
        init.gmm_init(linear, images)
    with pytest.raises(ValueError, match="model_or_layer"):
        init.gmm_init("model", images)
    with pytest.raises(ValueError, match="`beta`"):
        init.gmm_init(Similarity(2, 1, similarity="l2"), images, beta="learn")
    with pytest.raises(ValueError, match="`beta`"):
        init.gmm_init(Similarity(2, 1, similarity="l2"), images, beta=1.0)
    with pytest.raises(ValueError, match="`images`"):
        init.gmm_init(Similarity(2, 1, similarity="l2"), np.zeros((3, 3, 4)))
    with pytest.raises(ValueError, match="`num_patches`"):
        init.gmm_init(Similarity(2, 1, similarity="l2"), images, num_patches=0)
    model = models.simnet_patch_labeling(n=2, input_shape=(8, 8, 3), patch_size=2)
    with pytest.raises(ValueError, match="`layer`"):
        init.gmm_init(model, np.zeros((2, 8, 8, 3)), layer="nope")
    with pytest.raises(ValueError, match="`n`"):
        init.fit_gg_mixture(np.zeros((2, 3)), 3)
    with pytest.raises(ValueError, match="`x`"):
        init.fit_gg_mixture(np.full((5, 2), np.nan), 1)
    with pytest.raises(ValueError, match="`scales`"):
        init.fit_gg_mixture(np.zeros((5, 2)), 1, scales="full")
    for min_scale in (0.0, -1.0):
        with pytest.raises(ValueError, match="`min_scale`"):
            init.fit_gg_mixture(np.eye(5, 2), 1, min_scale=min_scale)
        with pytest.raises(ValueError, match="`min_scale`"):
            init.gmm_init(Similarity(2, 1, similarity="l2"), images, min_scale=min_scale)
    with pytest.raises(ValueError, match="`model`"):
        init.unsupervised_init(linear, images)


@pytest.mark.parametrize("offset", [255.0, 3000.0])
def test_a_fit_far_from_the_origin_equals_the_centred_fit(offset):
    """The l2 kernels expanded sum u (x - mu)^2 in float32: 255 + N(0, 1) gave scales 1.29-1.53 for 1.41, 3000 +
    N(0, 1) a mean log-likelihood of -2003 for -4.24. The fit centres the data: a shift moves the means only."""
    x, _ = _planted(np.random.default_rng(8), 2000, 2.0, MEANS, SCALES, PRIORS)
    centred = init.fit_gg_mixture(x, 3, 2.0, iterations=10)
    shifted = init.fit_gg_mixture(x + np.float32(offset), 3, 2.0, iterations=10)
    np.testing.assert_allclose(shifted.means - offset, centred.means, atol=0.02)
    np.testing.assert_allclose(shifted.scales, centred.scales, rtol=0.01)
    np.testing.assert_allclose(shifted.log_likelihood[-1], centred.log_likelihood[-1], rtol=1e-3)
    np.testing.assert_allclose(shifted.log_likelihood_of(x + np.float32(offset)), centred.log_likelihood_of(x),
                               rtol=1e-3)


def test_offset_priors_come_from_images_drawn_at_random():
    """The priors were fitted on the first `offset_images` images: the recipe's sample, sorted by class, gave them
    all one class. Here the first half of the images is component A's, the second half B's."""
    rng = np.random.default_rng(7)
    centres = np.repeat([-4.0, 4.0], 100)[:, None, None]
    images = (centres + rng.standard_normal((200, 8, 8)))[..., None].astype("float32")
    model = models.simnet_patch_labeling(n=2, p=2, input_shape=(8, 8, 1), num_classes=3, patch_size=1,
                                         whitening=False, offset_regions=(2, 2))
    report = init.gmm_init(model, images, num_patches=2000, iterations=10, offset_images=50)
    a = int(np.argmin(report["mixture"].means[:, 0]))
    np.testing.assert_allclose(report["region_priors"][..., a], 0.5, atol=0.15)  # the first 50 images: 1.0


def test_sizes_and_tolerances_are_named_at_the_entry_points():
    """They reached the functions gmm_init and unsupervised_init call, whose errors named `n`, `x`, `max_patches`,
    `iterations` (or a bare TypeError); a negative `prior_iterations` passed for 0."""
    images = np.zeros((2, 3, 3, 4), "float32")
    with pytest.raises(ValueError, match="`num_patches`=4 must be at least the 8 templates"):
        init.gmm_init(Similarity(8, 1, similarity="l2"), images, num_patches=4)
    with pytest.raises(ValueError, match="`images` give 4 patches"):
        init.gmm_init(Similarity(8, 1, similarity="l2"), images[:1, :2, :2])
    with pytest.raises(ValueError, match="`prior_iterations`"):
        init.gmm_init(Similarity(2, 1, similarity="l2"), images, prior_iterations=-1)
    with pytest.raises(ValueError, match="`num_patches`"):
        init.unsupervised_init(models.simnet_patch_labeling(n=2, input_shape=(8, 8, 3), patch_size=2),
                               np.zeros((2, 8, 8, 3)), num_patches=0)
    x = np.random.default_rng(0).normal(size=(50, 3)).astype("float32")
    with pytest.raises(ValueError, match="`kmeans_iterations`"):
        init.fit_gg_mixture(x, 2, kmeans_iterations=-1)
    for tol in ("x", -1.0, float("nan")):
        with pytest.raises(ValueError, match="`tol`"):
            init.fit_gg_mixture(x, 2, tol=tol)
