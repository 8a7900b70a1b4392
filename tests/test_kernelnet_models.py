"""kernelNet zoo models: MovieLens autoencoder, MNIST grids, embedding network."""
import os
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from kernelzoo.layers.kernel_dense import KernelDense, SparseKernelDense
from kernelzoo.zoo.data import load_ml100k_fold, rating_matrix, random_split
from kernelzoo.zoo.data.synthetic import planted_ratings, write_ml100k
from kernelzoo.zoo.kernelnet import embedding, movielens as ml
from kernelzoo.zoo.kernelnet.mnist import kernelnet_mnist
from kernelzoo.zoo.kernelnet.optimize import adam_steps, fit_adam, fit_lbfgs
from kernelzoo.zoo.kernelnet.recipe import best_checkpoint

from conftest import SHARED_DATA


def test_autoencoder_loss_ignores_unobserved_ratings():
    model = ml.kernelnet_movielens(n_users=6, hidden=(4,), seed=0)
    ratings = np.array([[5, 0, 3, 0, 1, 0]], np.float32)
    mask = (ratings > 0).astype(np.float32)
    pred = tf.Variable(model(ratings))
    with tf.GradientTape() as tape:
        loss = ml.masked_squared_error(ratings, mask, pred)
    grad = tape.gradient(loss, pred).numpy()
    assert np.all(grad[mask == 0] == 0) and np.all(grad[mask == 1] != 0)
    moved = pred.numpy() + 7.0 * (1 - mask)          # change only unobserved predictions
    assert float(ml.masked_squared_error(ratings, mask, moved)) == pytest.approx(float(loss))
    keras_loss = ml.masked_rating_loss(ratings, pred)
    assert float(keras_loss[0]) == pytest.approx(float(loss))


def test_predictions_are_clipped_to_the_rating_scale():
    """[1, 5] for whole stars (ML-100K, ML-1M); half-star data (tfds movielens/20m, 25m, latest-small) keep 0.5."""
    constant = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda x: 0.0 * x + 0.7)])
    assert np.all(ml.predict_ratings(constant, [[1, 0, 4]]) == 1.0)
    np.testing.assert_allclose(ml.predict_ratings(constant, [[1.5, 0, 4]]), 0.7)


def test_rmse_is_the_root_mean_squared_error_over_the_listed_ratings_only():
    """Eq. 11 on the (item, user) pairs of the ratings dict: errors 1 and -3 give sqrt(5); other entries of the
    prediction matrix do not count."""
    predictions = np.full((3, 4), 9.0)
    predictions[0, 1], predictions[2, 3] = 4.0, 2.0
    data = {"items": np.array([0, 2]), "users": np.array([1, 3]), "ratings": np.array([3.0, 5.0])}
    assert ml.rmse(predictions, data) == pytest.approx(np.sqrt(5.0))


def test_regularisers_are_the_papers_halves():
    """The loss terms of Sec. 3.5 written as tf.nn.l2_loss like the paper's code: lambda_2 / 2 * sum A^2 over every
    layer's free matrix A, lambda_0 / 2 * sum K^2 over its finite-support kernel values."""
    x = np.zeros((1, 6), np.float32)
    for lambda_2, lambda_0 in ((0.4, 0.0), (0.0, 0.3)):
        model = ml.kernelnet_movielens(n_users=6, hidden=(4,), lambda_2=lambda_2, lambda_0=lambda_0,
                                       location_stddev=0.3, seed=0)
        model(x)
        layers = model.layers[1:]
        a2 = sum(float(np.sum(np.square(layer.kernel.numpy()))) for layer in layers)
        k2 = sum(float(np.sum(np.square(keras.ops.convert_to_numpy(layer.kernel_values())))) for layer in layers)
        np.testing.assert_allclose(float(sum(model.losses)), lambda_2 / 2 * a2 + lambda_0 / 2 * k2, rtol=1e-5)


def test_kernel_variant_starts_with_unit_variance_of_u_dot_v():
    """The "kernel" variant's locations start so that u_i . v_j has unit variance at d = 50: tanh(u . v) neither
    saturates nor stays flat near 0 (a spread of about 0.02 would make W nearly linear in the locations)."""
    layer = ml.kernelnet_movielens(n_users=400, variant="kernel", hidden=(300,), seed=0).get_layer("hidden_1")
    dots = layer.input_locations.numpy() @ layer.output_locations.numpy().T
    assert 0.8 < dots.var() < 1.25


def test_variants_use_the_paper_layers():
    sparse = ml.kernelnet_movielens(n_users=10, hidden=(8, 8))
    kern = ml.kernelnet_movielens(n_users=10, variant="kernel", hidden=(8,))
    assert [type(l) for l in sparse.layers[1:]] == [SparseKernelDense] * 3
    assert sparse.layers[1].dim == 5 and kern.layers[1].dim == 50
    assert all(isinstance(l, KernelDense) and l.kernel_function == "tanh" for l in kern.layers[1:])
    assert sparse.output_shape == (None, 10)


def _planted():
    return random_split(planted_ratings(), 0.2, seed=0)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_rmse_on_planted_low_rank_matrix_beats_mean_predictor(optimizer):
    train, test = _planted()
    matrix, mask = rating_matrix(train)
    model = ml.kernelnet_movielens(n_users=train["n_users"], hidden=(32,), lambda_2=0.5,
                                   lambda_0=0.001, seed=0)

    def loss_fn(m):
        return ml.masked_squared_error(matrix, mask, m(matrix, training=True))

    if optimizer == "lbfgs":
        fit_lbfgs(model, loss_fn, maxiter=150)
    else:
        fit_adam(model, loss_fn, steps=300, learning_rate=0.02)
    baseline = np.sqrt(np.mean((test["ratings"] - train["ratings"].mean()) ** 2))
    error = ml.rmse(ml.predict_ratings(model, matrix), test)
    assert error < 0.75 * baseline, (error, baseline)


RATINGS = np.random.default_rng(0).uniform(1, 5, size=(6, 5)).astype("float32")  # 6 users, 5 items, all rated


def _small_autoencoder():
    """The 5-item autoencoder the optimizer tests fit; seed 0: every call gives the same start."""
    return ml.kernelnet_movielens(n_users=5, hidden=(3,), seed=0)


def _ratings_loss(model):
    """The data term on RATINGS, every entry observed, with the model in training mode (as a step runs it)."""
    return ml.masked_squared_error(RATINGS, np.ones_like(RATINGS), model(RATINGS, training=True))


def _flat_weights(model):
    return np.concatenate([np.ravel(w) for w in model.get_weights()])


def test_adam_epochs_continue_one_run():
    """Epochs of full-batch Adam (the MovieLens recipe) share one optimizer: 3 + 3 steps are 6 steps,
    not two runs whose moments restart (which is what a fresh optimizer per epoch would give)."""
    split, whole, restarted = _small_autoencoder(), _small_autoencoder(), _small_autoencoder()
    run = adam_steps(split, _ratings_loss, learning_rate=0.05)
    run(3), run(3)
    adam_steps(whole, _ratings_loss, learning_rate=0.05)(6)
    for _ in range(2):
        fit_adam(restarted, _ratings_loss, steps=3, learning_rate=0.05)
    np.testing.assert_allclose(_flat_weights(split), _flat_weights(whole), rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(_flat_weights(restarted) - _flat_weights(whole))) > 1e-3


def test_adam_steps_names_bad_arguments():
    model = _small_autoencoder()
    with pytest.raises(ValueError, match="learning_rate"):
        adam_steps(model, lambda m: 0.0, learning_rate=0)
    with pytest.raises(ValueError, match="steps"):
        adam_steps(model, lambda m: ml.masked_squared_error(np.ones((1, 5)), np.ones((1, 5)), m(np.ones((1, 5)))))(0)


def test_lbfgs_callback_sees_current_iterate():
    """The callback runs once every `every` iterations, the model holding the iterate whose objective (the data
    term plus the model's regularisation losses) it is given: what a checkpoint or an evaluation there sees."""
    model = _small_autoencoder()
    x = np.ones((4, 5), np.float32) * 3

    def loss_fn(m):
        return ml.masked_squared_error(x, np.ones_like(x), m(x))

    seen = []

    def callback(step, loss):
        seen.append(step)
        assert loss == pytest.approx(float(loss_fn(model) + tf.add_n(model.losses)), rel=1e-6), step

    assert model.losses  # the objective has a regularisation term
    fit_lbfgs(model, loss_fn, maxiter=6, every=2, callback=callback)
    assert seen == [2, 4, 6]


def test_lbfgs_leaves_a_variable_the_loss_ignores_where_it_was():
    """A variable without a gradient (None from the tape) has gradient 0: L-BFGS-B moves only what the loss uses."""
    layer = KernelDense(3, dim=2)
    layer.build((None, 4))
    before = layer.input_locations.numpy().copy()
    fit_lbfgs(layer, lambda lay: keras.ops.sum(keras.ops.square(lay.alpha - 2.0)), maxiter=20)
    np.testing.assert_array_equal(layer.input_locations.numpy(), before)
    np.testing.assert_allclose(layer.alpha.numpy(), 2.0, atol=1e-4)


def test_lbfgs_hands_maxcor_to_scipy():
    """The curvature memory changes the iterates: 6 iterations with maxcor 1 end elsewhere than with the default 10."""
    ends = []
    for maxcor in (1, 10):
        model = _small_autoencoder()
        fit_lbfgs(model, _ratings_loss, maxiter=6, maxcor=maxcor)
        ends.append(_flat_weights(model))
    assert np.max(np.abs(ends[0] - ends[1])) > 1e-4


def test_lbfgs_restart_rounds_run_exactly_maxiter_iterations():
    """maxiter 5 in rounds of 2: rounds of 2, 2 and 1 iterations (ceil(5 / 2) rounds, the last one shorter), the
    callback after each with the iterations so far."""
    seen = []
    result = fit_lbfgs(_small_autoencoder(), _ratings_loss, maxiter=5, every=2, restart=True,
                       callback=lambda step, loss: seen.append(step))
    assert seen == [2, 4, 5] and result.nit == 5


def test_mnist_prior_fixes_locations_learned_trains_them():
    prior = kernelnet_mnist(prior=True, grids=(2, 2), grid_sides=(6, 4), gammas=(100.0, 30.0))
    learned = kernelnet_mnist(prior=False, grids=(2, 2), grid_sides=(6, 4),
                              gammas=(100.0, 30.0))
    assert prior.output_shape == (None, 10)
    first = prior.get_layer("kernel1_grid1")
    np.testing.assert_allclose(first.input_locations.numpy()[29], [1 / 27, 1 / 27], rtol=1e-6)
    assert not first.input_locations.trainable and not first.output_locations.trainable
    second = learned.get_layer("kernel2_grid2")
    assert second.input_locations.shape == (2 * 36, 2) and second.input_locations.trainable
    count = lambda m: sum(int(np.prod(w.shape)) for w in m.trainable_weights)
    assert count(learned) == count(prior) + 2 * (784 + 36) * 2 + 2 * (72 + 16) * 2
    probs = prior(np.random.default_rng(0).random((2, 28, 28)).astype("float32"))
    np.testing.assert_allclose(np.sum(probs, -1), 1.0, rtol=1e-5)
    assert not [layer for layer in prior.layers if isinstance(layer, keras.layers.Dropout)]  # dropout 0: none
    dropped = kernelnet_mnist(prior=True, grids=(2, 2), grid_sides=(6, 4), gammas=(100.0, 30.0), dropout=0.25)
    assert [layer.rate for layer in dropped.layers if isinstance(layer, keras.layers.Dropout)] == [0.25, 0.25]
    assert count(dropped) == count(prior)


def test_mnist_weight_decay_is_the_l2_term_of_alphas_and_softmax(tmp_path):
    decayed = kernelnet_mnist(prior=True, grids=(2, 2), grid_sides=(6, 4), gammas=(100.0, 30.0), weight_decay=0.01)
    assert not kernelnet_mnist(prior=True, grids=(2, 2), grid_sides=(6, 4), gammas=(100.0, 30.0)).losses
    decayed(np.zeros((1, 28, 28), "float32"))
    penalised = [w for w in decayed.weights if w.path.endswith(("alpha", "softmax/kernel"))]
    assert len(penalised) == 5  # 2 + 2 grids' alphas, the softmax kernel
    expected = 0.01 * sum(0.5 * float(np.sum(np.square(w.numpy()))) for w in penalised)  # 0.01 * tf.nn.l2_loss
    np.testing.assert_allclose(float(sum(decayed.losses)), expected, rtol=1e-5)
    decayed.save(tmp_path / "decayed.keras")
    reloaded = keras.models.load_model(tmp_path / "decayed.keras")
    np.testing.assert_allclose(float(sum(reloaded.losses)), expected, rtol=1e-5)


def test_mnist_location_noise_reaches_every_grid():
    kernels = [layer for layer in kernelnet_mnist(grids=(2, 2), grid_sides=(6, 4), gammas=(100.0, 30.0),
                                                  location_noise=0.02).layers if isinstance(layer, KernelDense)]
    assert [layer.location_noise for layer in kernels] == [0.02] * 4


def test_embedding_center_of_mass_and_walk():
    model = embedding.kernelnet_embedding("autoencoder", encoder=(16,), grid_side=5,
                                          decoder=(8,), seed=0)
    images = np.random.default_rng(0).random((7, 28, 28)).astype("float32")
    points = embedding.embed(model, images)
    assert points.shape == (7, 2) and np.all(points >= 0) and np.all(points <= 1)
    probe = keras.Model(model.input, model.get_layer(embedding.SPARSIFY_LAYER).output)
    acts = probe(images).numpy()
    grid = model.get_layer(embedding.KERNEL_LAYER).output_locations.numpy()
    np.testing.assert_allclose(points[0], acts[0] @ grid / acts[0].sum(), rtol=1e-5)
    walk = embedding.latent_walk(model, [[0.2, 0.3], [0.8, 0.5]])
    assert walk.shape == (2, 28, 28)


@pytest.mark.data
@pytest.mark.parametrize("center, collapses", [(None, False), (False, True)], ids=["preset", "uncentred"])
def test_autoencoder_embedding_does_not_collapse(center, collapses):
    """80 Adam steps on 500 MNIST digits; 500 other digits' class means must spread over more than one
    grid spacing (1/19 on the preset's 20 x 20 grid over [0, 1]^2). A collapsed embedding only moves
    inside one blob of active units, so its class means stay within a fraction of a spacing; the
    uncentred features (center=False, the configuration that collapses: card) must fall below the bound.
    Measured (seeds 0, 1): between 0.17, 0.19 for the preset, 0.0004, 0.002 uncentred."""
    from kernelzoo.zoo import create
    from kernelzoo.zoo.data import load_mnist

    if not os.path.isdir(SHARED_DATA):
        pytest.skip("../shared/data absent")
    (x, y), _ = load_mnist(SHARED_DATA)
    model = create("kernelnet_embedding_mnist_ae", seed=0, **({} if center is None else {"center": center}))
    model.compile(keras.optimizers.Adam(1e-3), embedding.pixel_crossentropy)
    model.fit(x[:500], x[:500], batch_size=32, epochs=5, verbose=0)
    between = embedding.spread(embedding.embed(model, x[500:1000]), y[500:1000])["between"]
    spacing = 1.0 / (int(np.sqrt(model.get_layer(embedding.KERNEL_LAYER).units)) - 1)
    assert (between < spacing) == collapses, (between, spacing)


def test_spread_of_separated_and_collapsed_points():
    labels = np.repeat([0, 1], 50)
    apart = np.where(labels[:, None] == 0, 0.2, 0.8) + np.random.default_rng(0).normal(0, 0.01, (100, 2))
    figures = embedding.spread(apart, labels)
    assert figures["between"] == pytest.approx(0.3 * np.sqrt(2), rel=0.02) and figures["separation"] > 10
    assert embedding.spread(np.full((100, 2), 0.5), labels)["between"] == 0
    with pytest.raises(ValueError, match="labels"):
        embedding.spread(apart, np.zeros(100))


def test_latent_walk_decodes_a_narrow_bump_on_one_unit():
    """A bump exp(-gamma ||v - c||^2) centred on grid unit j with the layer's gamma 400 (neighbours 1/3 apart: e^-44)
    is one-hot; Eq. 9 with eta 0.5 leaves 1 - (0.5 + 0.5 / 16) = 15/32 on unit j, then the softmax reads it."""
    model = embedding.kernelnet_embedding("classifier", encoder=(8,), grid_side=4, decoder=(), gamma=400.0, seed=0)
    grid = model.get_layer(embedding.KERNEL_LAYER).output_locations.numpy()
    kernel, bias = model.get_layer("softmax").get_weights()
    logits = 15 / 32 * kernel[5] + bias
    np.testing.assert_allclose(embedding.latent_walk(model, grid[5:6])[0], np.exp(logits) / np.exp(logits).sum(),
                               rtol=1e-5)


def test_spread_between_weighs_every_class_mean_alike():
    """"between" is the RMS distance of the class means to their mean: 90 points of one class at (0.2, 0.2) and 10
    of another at (0.8, 0.8) give 0.3 sqrt(2), as equal classes would (not the distance to the points' mean)."""
    labels = np.repeat([0, 1], [90, 10])
    points = np.where(labels[:, None] == 0, [0.2, 0.2], [0.8, 0.8])
    assert embedding.spread(points, labels)["between"] == pytest.approx(0.3 * np.sqrt(2))


def test_common_share_is_one_for_identical_images():
    """Images with the same kernel-layer landscape share all of its variation over the grid: common share 1."""
    model = embedding.kernelnet_embedding("classifier", encoder=(16,), grid_side=4, decoder=(), seed=0)
    image = np.random.default_rng(0).integers(0, 256, (1, 28, 28)).astype("float32")
    assert embedding.common_share(model, np.repeat(image, 5, axis=0)) == pytest.approx(1.0, rel=1e-5)


def test_common_share_is_undefined_when_no_activation_varies_over_the_grid():
    """Black images give an untrained classifier all-zero kernel-layer activations (zero biases, ReLU): nothing
    varies, so no share of it is common (NaN, where a floor on the denominator read 0, "each image its own")."""
    model = embedding.kernelnet_embedding("classifier", encoder=(16,), grid_side=4, decoder=(), seed=0)
    assert np.isnan(embedding.common_share(model, np.zeros((5, 28, 28), "float32")))


def test_autoencoder_centres_its_kernel_layer_and_the_classifier_does_not():
    """center=None: on for the autoencoder (its embedding collapses without: the card), off for the classifier (its
    shipped weights); the centred kernel layer has no bias (the centring removes any offset)."""
    for objective, centred in (("autoencoder", True), ("classifier", False)):
        model = embedding.kernelnet_embedding(objective, encoder=(8,), grid_side=3, decoder=(), seed=0)
        names = [layer.name for layer in model.layers]
        assert (embedding.CENTER_LAYER in names) == centred, objective
        assert model.get_layer(embedding.KERNEL_LAYER).use_bias == (not centred), objective


def test_pixel_losses_compare_with_pixels_over_255():
    """The reconstruction is in [0, 1], the target raw 0-255 pixels: an exact reconstruction has error 0, a uniform
    0.5 an error of 0.25 on black and white pixels."""
    pixels = np.array([[[0.0, 255.0], [255.0, 0.0]]], np.float32)
    assert float(embedding.pixel_squared_error(pixels, pixels / 255.0)[0]) == pytest.approx(0.0, abs=1e-7)
    assert float(embedding.pixel_squared_error(pixels, np.full_like(pixels, 0.5))[0]) == pytest.approx(0.25)
    half = float(np.mean(embedding.pixel_crossentropy(pixels, np.full_like(pixels, 0.5))))
    assert half == pytest.approx(np.log(2.0), rel=1e-5)  # -log 0.5 per pixel


@pytest.mark.parametrize("call, argument", [
    (lambda: ml.kernelnet_movielens(n_users=0), "n_users"),
    (lambda: ml.kernelnet_movielens(variant="dense"), "variant"),
    (lambda: ml.kernelnet_movielens(hidden=()), "hidden"),
    (lambda: ml.kernelnet_movielens(lambda_2=-1), "lambda_2"),
    (lambda: kernelnet_mnist(prior="yes"), "prior"),
    (lambda: kernelnet_mnist(grids=(2,), grid_sides=(4, 4), gammas=(1.0,)), "grids"),
    (lambda: kernelnet_mnist(num_classes=1), "num_classes"),
    (lambda: kernelnet_mnist(grids=(2,), grid_sides=(4,), gammas=100.0), "gammas"),
    (lambda: kernelnet_mnist(grids=(2,), grid_sides=(4,), gammas=(-1.0,)), "gammas"),
    (lambda: ml.kernelnet_movielens(variant="kernel", lambda_0=0.1), "lambda_0"),  # sparse_fc only
    (lambda: ml.kernelnet_movielens(variant="kernel", location_stddev=0.01), "location_stddev"),
    (lambda: embedding.kernelnet_embedding(image_size=0), "image_size"),
    (lambda: kernelnet_mnist(dropout=1.0), "dropout"),
    (lambda: kernelnet_mnist(weight_decay=-1e-4), "weight_decay"),
    (lambda: kernelnet_mnist(location_noise=-0.01), "location_noise"),
    (lambda: embedding.kernelnet_embedding("gan"), "objective"),
    (lambda: embedding.kernelnet_embedding(grid_side=1), "grid_side"),
    (lambda: embedding.kernelnet_embedding(center="yes"), "center"),
    (lambda: fit_lbfgs(None, None, maxiter=0), "maxiter"),
    (lambda: fit_lbfgs(None, None, maxcor=0), "maxcor"),  # scipy: 0 iterations, "ERROR: M <= 0"
    (lambda: fit_lbfgs(None, None, maxcor=-1), "maxcor"),
    (lambda: fit_lbfgs(None, None, maxcor=2.5), "maxcor"),
    (lambda: fit_lbfgs(None, None, callback=print), "every"),  # a callback never called
    (lambda: fit_adam(None, None, steps=0), "steps"),
    (lambda: ml.average_models([ml.kernelnet_movielens(n_users=5, hidden=(3,))]), "models"),  # one is no ensemble
])
def test_bad_arguments(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


def test_train_cli_runs_the_lbfgs_recipe_into_a_run_folder(tmp_path, capsys):
    import json

    from kernelzoo import cli
    from kernelzoo.zoo import training

    folder = tmp_path / "ml-100k"
    folder.mkdir()
    rng = np.random.default_rng(0)
    lines = [f"{u}\t{i}\t{rng.integers(1, 6)}\t0\n" for u in range(1, 7) for i in range(1, 11)]
    (folder / "u.data").write_text("".join(lines))
    (folder / "u1.base").write_text("".join(lines[::2] + lines[1::4]))
    (folder / "u1.test").write_text("".join(lines[3::4]))
    out = tmp_path / "run"

    def run(*argv):
        return cli.main(["train", "kernelnet_movielens_100k", "hidden=(4,)", "--data-dir", str(tmp_path), *argv])

    assert run("--split", "u1", "--epochs", "2", "--iterations-per-epoch", "2", "--out", str(out), "--quiet") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["test_rmse"] < 4 and metrics["test_examples"] == 15
    assert json.loads((out / "config.json").read_text())["dataset"] == "ml-100k"  # a resume on other data refuses
    assert (out / "model.keras").is_file() and os.path.isfile(best_checkpoint(out))
    rows = training.read_log(str(out / "log.csv"))
    assert rows and [row["iterations"] for row in rows] == [2.0 * (i + 1) for i in range(len(rows))]
    capsys.readouterr()
    assert run("--split", "u9", "--out", str(tmp_path / "other")) == 2
    assert "split must be one of" in capsys.readouterr().err
    assert run("--no-init", "--out", str(tmp_path / "other")) == 2  # a SimNet option
    assert "--no-init is not an option of RatingsRecipe" in capsys.readouterr().err
    for flags, message in ((("--batch-size", "32"), "batch_size: the MovieLens recipe trains full-batch"),
                           (("--lr", "0.1"), "lr: L-BFGS-B takes no learning rate"),
                           (("--max-steps-per-epoch", "1"), "max_steps_per_epoch: an epoch of the full-batch")):
        assert run(*flags, "--out", str(tmp_path / "other")) == 2, flags  # refused, not ignored
        assert message in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    assert run("--lr", "0.1", "--optimizer", "adam", "--epochs", "1", "--iterations-per-epoch", "1", "--out",
               str(tmp_path / "adam"), "--quiet") == 0


def test_a_kill_between_saving_the_best_model_and_the_state_keeps_the_states_best(tmp_path, monkeypatch):
    """The best epoch's model is a new file that state.json names: killed after a better epoch's model was saved
    but before its state, the run still ends on the previous best weights, as its state says (the old best.keras
    was overwritten first: the run ended on the newer weights while it reported the older epoch)."""
    from kernelzoo.zoo import registry
    from kernelzoo.zoo.kernelnet import recipe as kernelnet_recipe
    from kernelzoo.zoo.recipe import Data

    train, test = random_split(planted_ratings(n_items=40, n_users=30), 0.2, seed=0)
    data = Data(train=train, test=test, source="planted")
    preset = registry.info("kernelnet_movielens_100k")
    recipe = kernelnet_recipe.RatingsRecipe()
    hp = recipe.hyperparameters(preset, epochs=6, iterations_per_epoch=2, patience=6, val_fraction=0.2)
    save, killed = kernelnet_recipe.training.save_checkpoint, []

    def killed_at_the_second_best(model, out_dir, epoch, *args, state, **kwargs):
        if epoch > 1 and state["best"]["epoch"] == epoch:
            killed.append(epoch)
            raise KeyboardInterrupt("killed")
        return save(model, out_dir, epoch, *args, state=state, keep=100)  # every epoch's file, to compare

    monkeypatch.setattr(kernelnet_recipe.training, "save_checkpoint", killed_at_the_second_best)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        recipe.train(preset, data, out, overrides={"hidden": (4,)}, hp=hp, verbose=0)
    monkeypatch.setattr(kernelnet_recipe.training, "save_checkpoint", save)
    previous = kernelnet_recipe.training.read_state(str(out))["best"]["epoch"]
    assert previous < killed[0]
    assert len(list((out / "checkpoints").glob("best-*.keras"))) == 2  # the newer best was saved before the kill
    result = recipe.train(preset, data, out, overrides={"hidden": (4,)}, hp=dict(hp, epochs=previous), resume=True,
                          verbose=0)  # nothing left to train: the run ends on its state's best model
    assert result["selected_epoch"] == previous
    checkpoint = keras.models.load_model(out / "checkpoints" / f"epoch-{previous:03d}.keras", compile=False)
    for a, b in zip(result["model"].get_weights(), checkpoint.get_weights()):
        np.testing.assert_array_equal(a, b)

def test_lbfgs_restart_rounds_drop_the_memory_and_stop_on_request():
    """lbfgs_restart: rounds of `every` iterations, each a fresh L-BFGS-B (kernelNet's public code): one
    round of 4 equals a plain 4-iteration run, two rounds of 2 do not; StopIteration ends the rounds."""
    plain, one_round, rounds = _small_autoencoder(), _small_autoencoder(), _small_autoencoder()
    fit_lbfgs(plain, _ratings_loss, maxiter=4)
    fit_lbfgs(one_round, _ratings_loss, maxiter=4, every=4, restart=True)
    seen = []
    result = fit_lbfgs(rounds, _ratings_loss, maxiter=4, every=2, restart=True,
                       callback=lambda step, loss: seen.append((step, loss)))
    weights = [_flat_weights(m) for m in (plain, one_round, rounds)]
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-6)
    assert not np.allclose(weights[2], weights[0])
    assert [step for step, _ in seen] == [2, 4] and seen[1][1] < seen[0][1] and result.nit == 4

    def stop(step, loss):
        seen.append(step)
        raise StopIteration

    seen.clear()
    fit_lbfgs(_small_autoencoder(), _ratings_loss, maxiter=10, every=2, restart=True, callback=stop)
    assert seen == [2]
    with pytest.raises(ValueError, match="every"):
        fit_lbfgs(_small_autoencoder(), _ratings_loss, maxiter=4, restart=True)


def _quadratic(model, target=1.0, gradient_sign=1.0):
    """A traced-objective stand-in for `fit_lbfgs`: sum (w - target)^2 over the model's weights, with its gradient
    (times `gradient_sign`: -1 points uphill, where no line search finds a lower loss)."""
    variables = model.trainable_variables

    def objective():
        loss = tf.add_n([tf.reduce_sum((v - target) ** 2) for v in variables])
        return loss, [gradient_sign * 2 * (v - target) for v in variables]

    return objective


def test_lbfgs_restart_rounds_use_the_given_objective():
    model = _small_autoencoder()
    calls = []
    quadratic = _quadratic(model)

    def objective():
        calls.append(1)
        return quadratic()

    fit_lbfgs(model, None, maxiter=4, every=2, restart=True, objective=objective)
    assert calls


@pytest.mark.parametrize("restart", [False, True])
def test_lbfgs_warns_of_an_abnormal_stop_and_refuses_a_non_finite_loss(restart):
    """scipy's abnormal stop (its line search found no lower loss) is a warning naming scipy's message, the model
    on the last iterate scipy accepted; a non-finite loss is an error. Convergence, the iteration limit and a
    callback's StopIteration end quietly."""
    model = _small_autoencoder()
    start = model.get_weights()
    with pytest.warns(RuntimeWarning, match="ABNORMAL"):
        fit_lbfgs(model, None, maxiter=5, every=5, restart=restart, objective=_quadratic(model, gradient_sign=-1.0))
    for a, b in zip(model.get_weights(), start):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(RuntimeError, match="loss"):
        fit_lbfgs(model, None, maxiter=5, every=5, restart=restart, objective=_quadratic(model, target=np.nan))

    def stop(step, loss):
        raise StopIteration

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert fit_lbfgs(model, None, maxiter=50, every=50, restart=restart, objective=_quadratic(model)).nit < 50
        fit_lbfgs(model, None, maxiter=2, every=2, restart=restart, objective=_quadratic(model, target=3.0))
        fit_lbfgs(model, None, maxiter=6, every=2, restart=restart, objective=_quadratic(model, target=5.0),
                  callback=stop)


def test_test_fraction_is_refused_with_a_canonical_fold_and_checked_before_the_data_loads(tmp_path, capsys):
    """--test-fraction is the held-out share of --split random; a canonical fold's test ratings are fixed, so with
    one (given, or the preset's u1) it is refused, not ignored; one outside (0, 1) is refused before any data loads.
    Without it a random split holds out 0.1, what its config.json records."""
    from kernelzoo import cli
    from kernelzoo.zoo import registry
    from kernelzoo.zoo.kernelnet.recipe import RatingsRecipe

    empty, out = tmp_path / "empty", tmp_path / "run"  # no ratings in `empty`: an error about them = data loaded
    empty.mkdir()

    def run(command, data_dir, *argv):
        return cli.main([command, "kernelnet_movielens_100k", "hidden=(4,)", "--data-dir", str(data_dir), "--epochs",
                         "1", "--iterations-per-epoch", "1", "--quiet", "--no-tensorboard", "--out", str(out), *argv])

    for argv in (("--split", "random", "--test-fraction", "7.0"), ("--split", "random", "--test-fraction", "0"),
                 ("--split", "u1", "--test-fraction", "7.0")):
        assert run("train", empty, *argv) == 2, argv
        assert "`--test-fraction` must be a number in (0.0, 1.0)" in capsys.readouterr().err
    ratings = write_ml100k(tmp_path, planted_ratings(n_items=40, n_users=30))
    for command, argv in (("train", ("--split", "u1")), ("train", ()), ("protocol", ("--splits", "u1"))):
        assert run(command, tmp_path, *argv, "--test-fraction", "0.2") == 2, argv
        assert "--test-fraction: the canonical fold u1" in capsys.readouterr().err
    assert not list(tmp_path.rglob("config.json"))  # no run started
    recipe, preset = RatingsRecipe(), registry.info("kernelnet_movielens_100k")
    options = recipe.options(split="random")
    assert options.test_fraction == 0.1  # the run's config.json records what it held out
    data = recipe.load_data(preset, tmp_path, options=options)
    assert len(data.test["ratings"]) == round(0.1 * len(ratings["ratings"]))
    # older run folders recorded the default 0.1 beside their fold: `kernelzoo eval` still reloads their ratings
    old = recipe.load_data(preset, tmp_path, options=recipe.options(split="u1", test_fraction=0.1))
    np.testing.assert_array_equal(old.test["ratings"], load_ml100k_fold(1, tmp_path)[1]["ratings"])


def test_the_movielens_card_names_only_options_of_the_commands():
    """Every --option the card names is one of `kernelzoo train`, `protocol`, `eval` or `info` (a builder argument
    is a KEY=VALUE override: `location_stddev=0.3`)."""
    import argparse

    from kernelzoo.zoo import card, cli

    helps = ""
    for command in ("train", "protocol", "eval", "info"):
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser, command)
        helps += parser.format_help()
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", card("kernelnet_movielens_100k")))
    assert "--test-fraction" in flags
    assert {flag for flag in flags if not re.search(rf"(?<![\w-]){flag}(?![\w-])", helps)} == set()
