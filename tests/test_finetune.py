"""Fine-tuning (kernelzoo.zoo.finetune, `kernelzoo finetune`): head replacement, input adaptation, training."""
import importlib
import os

import keras
import numpy as np
import pytest

import kernelzoo  # noqa: F401  (registers the custom layers)
from kernelzoo import zoo
from kernelzoo.export import ends_in_softmax
from kernelzoo.zoo.kernelnet.mnist import kernelnet_mnist
from kernelzoo.zoo.simnet.models import coates_baseline, convnet_baseline, simnet_patch_labeling

NUM_CLASSES = 3
ft = importlib.import_module("kernelzoo.zoo.finetune")  # the module; kernelzoo.zoo.finetune is the function


def _tiny_kernelnet(num_classes=10):
    """A small MNIST-type kernelNet (12x12 raw pixels, softmax head), seeded."""
    return kernelnet_mnist(prior=True, grids=(4,), grid_sides=(6,), gammas=(25.0,), image_size=12,
                           num_classes=num_classes, seed=0)


def _blob_images(count, rng, size=16, channels=3):
    """uint8 images of one bright square on noise; the class is the quadrant it sits in (0-2)."""
    labels = np.arange(count) % NUM_CLASSES
    images = rng.integers(0, 60, size=(count, size, size, channels)).astype(np.uint8)
    half = size // 2
    corners = [(1, 1), (1, half + 1), (half + 1, 1)]
    for image, label in zip(images, labels):
        row, col = corners[label]
        image[row:row + half - 2, col:col + half - 2] = 230
    return images, labels.astype(np.int64)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A generated train/<class>/*.png, test/<class>/*.png folder (16x16 RGB, 3 classes)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("folder") / "blobs"
    rng = np.random.default_rng(0)
    for split, count in (("train", 240), ("test", 90)):
        images, labels = _blob_images(count, rng)
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    return str(root)


def test_finetuning_a_tiny_model_on_an_image_folder_beats_chance(image_folder, tmp_path):
    from kernelzoo.zoo.data import holdout_split, load_images

    data = load_images(image_folder)
    assert data.num_classes == NUM_CLASSES and data.input_shape == (16, 16, 3)
    train, val = holdout_split(*data.train, 30, seed=0)
    model, metrics = ft.finetune(_tiny_kernelnet(), train, val, data.num_classes, freeze="features", epochs=4,
                                 batch_size=16, lr=0.05, test_ds=data.test, out_dir=tmp_path / "run", verbose=0)
    assert model.output.shape[-1] == NUM_CLASSES
    assert metrics["test_accuracy"] > 0.6, metrics  # chance: 1/3
    assert metrics["val_accuracy"] > 0.6, metrics
    assert metrics["trainable_params"] == (4 * 36 + 1) * NUM_CLASSES  # only the new softmax layer trains
    assert os.path.isfile(tmp_path / "run" / "log.csv")
    # the input adapter travels with the model: it takes the folder's raw uint8 pixels
    path = str(tmp_path / "tuned.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(data.x_test[:8], verbose=0), model.predict(data.x_test[:8], verbose=0),
                               atol=1e-6)
    from kernelzoo.export import serving_spec
    assert serving_spec(loaded).input_dtype == "uint8"


def test_simnet_head_is_the_classwise_mex_and_keeps_the_templates():
    source = simnet_patch_labeling(n=4, input_shape=(32, 32, 3))
    head, kind = ft.find_head(source)
    assert (head.name, kind) == ("mex_templates", "mex")
    # MNIST-shaped input: 28x28 grey -> replicated to RGB and zero-padded to 32x32
    tuned = ft.adapt_model(source, 5, (28, 28, 1), freeze="features")
    assert tuple(tuned.input.shape) == (None, 28, 28, 1) and tuple(tuned.output.shape) == (None, 5)
    names = [layer.name for layer in tuned.layers]
    assert names[:4] == ["image", "adapt_scale", "adapt_channels", "adapt_pad"]
    assert tuned.get_layer("adapt_scale").scale == 1.0  # the SimNet reads 0-255 pixels
    assert tuned.get_layer("mex_templates").num_instances == 5
    assert tuned.get_layer("mex_templates").offsets_variable.shape[2] == 5
    for name in ("similarity", "patch_whitening"):
        for new, old in zip(tuned.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(new, old)
    assert [w.path for w in tuned.trainable_weights] == ["mex_templates/offsets"]
    everything = ft.adapt_model(source, 5, (28, 28, 1), freeze="none")
    assert any(w.path.startswith("similarity/") for w in everything.trainable_weights)
    assert not everything.get_layer("adapt_channels").trainable
    out = tuned.predict(np.zeros((2, 28, 28, 1), np.uint8), verbose=0)
    assert out.shape == (2, 5) and np.all(np.isfinite(out))


def test_kernelnet_head_is_the_softmax_dense_and_colour_inputs_become_grey():
    source = _tiny_kernelnet()
    head, kind = ft.find_head(source)
    assert (head.name, kind) == ("softmax", "dense")
    tuned = ft.adapt_model(source, 4, (16, 16, 3))
    assert tuple(tuned.output.shape) == (None, 4)
    assert tuned.get_layer("softmax").kernel.shape == (4 * 36, 4)
    assert ends_in_softmax(tuned)
    # the adapter: x 1 (the kernelNet takes raw pixels), BT.601 luma, centred crop 16 -> 12, drop the channel axis
    assert tuned.get_layer("adapt_scale").scale == 1.0
    adapter = keras.Model(tuned.input, tuned.get_layer("adapt_reshape").output)
    x = np.random.default_rng(0).integers(0, 256, size=(2, 16, 16, 3)).astype(np.uint8)
    expected = x[:, 2:14, 2:14].astype(np.float64) @ np.asarray(ft.LUMA)
    np.testing.assert_allclose(adapter.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-4)
    resized = ft.adapt_model(source, 4, (16, 16, 3), spatial="resize")
    assert "adapt_resize" in [layer.name for layer in resized.layers]


def test_the_seed_fixes_the_new_heads_weights():
    """Two fine-tunings with one seed end on the same weights (the new head's initialisation included);
    another seed starts the head elsewhere."""
    rng = np.random.default_rng(0)
    train = _blob_images(12, rng, size=12, channels=1)

    def head(seed):
        model, _ = ft.finetune(_tiny_kernelnet(), train, None, NUM_CLASSES, epochs=1, batch_size=4, lr=1e-9,
                               seed=seed, verbose=0)  # lr 1e-9: the weights stay near the initial ones
        return keras.ops.convert_to_numpy(model.layers[-1].kernel)

    np.testing.assert_array_equal(head(0), head(0))
    assert not np.allclose(head(0), head(1))


def test_a_finetuned_model_can_be_finetuned_again(tmp_path):
    """The second adapter's layers take free names (adapt_scale_2, ...): the first one's stay in the model."""
    path = str(tmp_path / "tuned.keras")
    ft.adapt_model(_tiny_kernelnet(), NUM_CLASSES, (16, 16, 3)).save(path)
    again = ft.adapt_model(ft.resolve_model(path), 2, (16, 16, 3))
    names = [layer.name for layer in again.layers]
    assert len(set(names)) == len(names) and "adapt_scale" in names and "adapt_scale_2" in names
    assert again.predict(np.zeros((1, 16, 16, 3), np.uint8), verbose=0).shape == (1, 2)


def test_the_adapted_model_has_no_augmentation(tmp_path):
    """A RandomShiftFlip (convnet_cifar10, the n400 SimNets) would shift and mirror the new images in fit: it is
    dropped (an identity of the same name), so training=True computes what inference does."""
    from kernelzoo.zoo.augment import RandomShiftFlip

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Flatten()(RandomShiftFlip(shift=2, flip=True, name="augment")(inputs))
    tuned = ft.adapt_model(keras.Model(inputs, keras.layers.Dense(4, name="logits")(x)), 2, (8, 8, 3))
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(tuned(images, training=True)),
                                  keras.ops.convert_to_numpy(tuned(images, training=False)))
    path = str(tmp_path / "tuned.keras")
    tuned.save(path)
    assert isinstance(keras.models.load_model(path).get_layer("augment"), keras.layers.Identity)


def test_sequential_models_with_a_dense_head():
    source = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(name="flat"),
                               keras.layers.Dense(5, activation="softmax", name="probs")])
    tuned = ft.adapt_model(source, 2, (10, 10, 3))
    assert tuple(tuned.output.shape) == (None, 2) and "adapt_crop" in [layer.name for layer in tuned.layers]
    assert tuned.get_layer("adapt_scale").scale == pytest.approx(1 / 255)


@pytest.mark.parametrize("builder", [convnet_baseline, coates_baseline])
def test_baseline_heads_are_their_dense_logits(builder):
    tuned = ft.adapt_model(builder(n=4), 7, (32, 32, 3))
    assert tuple(tuned.output.shape) == (None, 7)
    assert [w.path for w in tuned.trainable_weights] == ["logits/kernel", "logits/bias"]
    assert not ends_in_softmax(tuned)  # logits: trained with from_logits=True


def test_adapted_model_keeps_the_fitted_normalization():
    """A Coates baseline's features standardised by its unsupervised initialisation stay so in the adapted
    model (its Normalization copied with set_weights needs finalize_state)."""
    from kernelzoo.zoo.simnet.init import unsupervised_init
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)).astype("float32")
    model = coates_baseline(n=4, input_shape=(16, 16, 3))
    unsupervised_init(model, images, num_patches=200, kmeans_patches=200)
    adapted = ft.adapt_model(model, NUM_CLASSES, (16, 16, 3))
    features = [keras.Model(m.input, m.get_layer("features").output).predict(images, verbose=0)
                for m in (model, adapted)]
    np.testing.assert_allclose(features[1], features[0], rtol=1e-5, atol=1e-5)


def test_from_scratch_ckn_layers_get_kmeans_anchors():
    """The from-scratch baseline of an unsupervised CKN (its CKN layers frozen, as saved) starts from k-means
    anchors on the new training images, as its recipe does, not from the random ones it would never train."""
    from kernelzoo.zoo.ckn import ckn, init_ckn_layers

    source = ckn(filters=(4, 4), kernel_sizes=(3, 1), subsamplings=(2, 2), kernels=("exp", "poly2"), whitening="image",
                 normalize_features=False, input_shape=(16, 16, 3))
    images = _blob_images(30, np.random.default_rng(1))[0]

    def scratch():
        keras.utils.set_random_seed(0)
        return ft.adapt_model(source, NUM_CLASSES, (16, 16, 3), freeze="none", copy_weights=False)

    model, expected = scratch(), scratch()
    random_anchors = model.get_layer("ckn1").get_weights()
    ft._reinitialise_unsupervised(model, images, 0, False)
    init_ckn_layers(expected, images, seed=0)
    for name in ("ckn1", "ckn2"):
        assert not model.get_layer(name).trainable
        for new, old in zip(model.get_layer(name).get_weights(), expected.get_layer(name).get_weights()):
            np.testing.assert_allclose(new, old, rtol=1e-6, atol=1e-6)
    assert not np.allclose(model.get_layer("ckn1").get_weights()[0], random_anchors[0])


def test_the_scratch_initialisation_sees_images_of_every_class(monkeypatch):
    """Beyond INIT_IMAGES training images the unsupervised initialisation takes a seeded random draw: the first ones
    of a class-sorted dataset (image folders are read class by class) held one class only."""
    from kernelzoo.zoo.ckn import kmeans
    seen = []
    monkeypatch.setattr(ft, "INIT_IMAGES", 10)
    monkeypatch.setattr(kmeans, "ckn_layers", lambda model: [object()])
    monkeypatch.setattr(kmeans, "init_ckn_layers", lambda model, images, **kwargs: seen.append(images))
    images = np.repeat(np.array([0, 255], np.uint8), 10)[:, None, None, None]  # class 0's 10, then class 1's
    ft._reinitialise_unsupervised(_tiny_kernelnet(), images, 0, False)
    assert len(seen[0]) == 10 and set(np.unique(seen[0])) == {0, 255}


def test_finetune_is_exported_from_the_zoo():
    assert zoo.finetune is ft.finetune and "finetune" in zoo.__all__


def test_bad_arguments_are_named():
    model = _tiny_kernelnet()
    data = (np.zeros((4, 12, 12, 1), np.uint8), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="freeze"):
        ft.finetune(model, data, None, 2, freeze="all")
    with pytest.raises(ValueError, match="num_classes"):
        ft.finetune(model, data, None, 1)
    with pytest.raises(ValueError, match="train_ds"):
        ft.finetune(model, (data[0], np.array([0, 1, 2, 1])), None, 2)
    with pytest.raises(ValueError, match="spatial"):
        ft.adapt_model(model, 2, (12, 12, 1), spatial="stretch")
    headless = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.GlobalAveragePooling2D(name="gap")])
    with pytest.raises(ValueError, match="'gap'"):
        ft.adapt_model(headless, 2, (8, 8, 1))
    with pytest.raises(ValueError, match="no pretrained weights"):
        ft.resolve_model("simnet_cifar10_wl1_n200")


def test_images_must_be_uint8_pixels():
    """Float images in [0, 1] would reach a model reading 0-255 pixels nearly black: refused, naming the argument."""
    images, labels = np.zeros((4, 12, 12, 1), np.uint8), np.array([0, 1, 0, 1])
    for train, val, named in (((images / 255.0, labels), None, "train_ds"),
                              ((images, labels), (images.astype(np.float32), labels), "val_ds")):
        with pytest.raises(ValueError, match=f"`{named}` images must be uint8 pixels"):
            ft.finetune(_tiny_kernelnet(), train, val, 2, epochs=1, verbose=0)


def test_cli_finetune_writes_the_model_and_its_card(image_folder, tmp_path, monkeypatch, capsys):
    from kernelzoo import cli

    monkeypatch.setitem(cli.SUBCOMMANDS, "finetune", ("kernelzoo.zoo.finetune_cli", "fine-tune"))
    source = str(tmp_path / "tiny.keras")
    _tiny_kernelnet().save(source)
    out = str(tmp_path / "out" / "tuned.keras")
    code = cli.main(["finetune", source, "--dataset", image_folder, "--epochs", "1", "--batch-size", "32",
                     "--compare-scratch", "--quiet", "-o", out])
    assert code == 0
    printed = capsys.readouterr().out
    assert "fine-tuned" in printed and "from scratch" in printed
    assert os.path.isfile(out)
    with open(out[:-len(".keras")] + ".md", encoding="utf-8") as handle:
        card = handle.read()
    for text in ("source model", "tiny.keras", "test accuracy", "from scratch", "kernelzoo finetune",
                 "adapt_channels"):
        assert text in card
    model = keras.models.load_model(out)
    assert tuple(model.input.shape) == (None, 16, 16, 3) and tuple(model.output.shape) == (None, NUM_CLASSES)


def test_cli_finetunes_a_ckn_keeping_its_frozen_anchors(image_folder, tmp_path, monkeypatch):
    """A tiny CKN saved as the supervised CKN recipe saves it (CKN layers frozen, Nystrom factors precomputed, 10
    classes): `kernelzoo finetune` gives it a 3-class head on the folder's raw pixels; the anchors stay."""
    from kernelzoo import cli
    from kernelzoo.zoo.ckn import ckn, init_ckn_layers

    monkeypatch.setitem(cli.SUBCOMMANDS, "finetune", ("kernelzoo.zoo.finetune_cli", "fine-tune"))
    source = ckn(filters=(4, 4), kernel_sizes=(3, 1), subsamplings=(2, 2), kernels=("exp", "poly2"), whitening="image",
                 normalize_features=False, input_shape=(16, 16, 3))
    init_ckn_layers(source, _blob_images(60, np.random.default_rng(1))[0], max_patches=2000, seed=0)
    path, out = str(tmp_path / "ckn.keras"), str(tmp_path / "tuned.keras")
    source.save(path)
    assert cli.main(["finetune", path, "--dataset", image_folder, "--epochs", "2", "--batch-size", "32", "--quiet",
                     "-o", out]) == 0
    tuned = keras.models.load_model(out)
    assert tuple(tuned.output.shape) == (None, NUM_CLASSES) and tuned.get_layer("adapt_scale").scale == 1.0
    for name in ("ckn1", "ckn2"):
        assert not tuned.get_layer(name).trainable
        for new, old in zip(tuned.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(new, old)
    assert np.isfinite(tuned.predict(_blob_images(6, np.random.default_rng(2))[0], verbose=0)).all()


def test_cli_finetune_usage_errors_are_one_line(image_folder, tmp_path, monkeypatch, capsys):
    from kernelzoo import cli

    monkeypatch.setitem(cli.SUBCOMMANDS, "finetune", ("kernelzoo.zoo.finetune_cli", "fine-tune"))
    assert cli.main(["finetune", "simnet_cifar10_wl1_n200", "--dataset", image_folder,
                     "-o", str(tmp_path / "x.keras")]) == 2
    assert "no pretrained weights" in capsys.readouterr().err
    assert cli.main(["finetune", "kernelnet_mnist_prior", "--dataset", image_folder,
                     "-o", str(tmp_path / "x.h5")]) == 2
    assert ".keras" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["finetune", "kernelnet_mnist_prior", "--dataset", image_folder, "--freeze", "all",
                  "-o", str(tmp_path / "x.keras")])


def _cli_finetune(monkeypatch, *argv):
    from kernelzoo import cli

    monkeypatch.setitem(cli.SUBCOMMANDS, "finetune", ("kernelzoo.zoo.finetune_cli", "fine-tune"))
    return cli.main(["finetune", *argv])


def test_cli_finetune_checks_numbers_run_dir_and_head_before_loading_the_data(image_folder, tmp_path, monkeypatch,
                                                                              capsys):
    finetune_cli = importlib.import_module("kernelzoo.zoo.finetune_cli")
    source = str(tmp_path / "tiny.keras")
    _tiny_kernelnet().save(source)
    headless = str(tmp_path / "headless.keras")
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.GlobalAveragePooling2D(name="gap")]).save(headless)
    busy = tmp_path / "busy"  # a run folder holding a run
    (busy / "checkpoints").mkdir(parents=True)
    (busy / "checkpoints" / "state.json").write_text('{"epoch": 1}')
    (busy / "checkpoints" / "last.keras").write_text("")

    def no_load(*args, **kwargs):
        raise AssertionError("the dataset was loaded")

    monkeypatch.setattr(finetune_cli, "load", no_load)
    base = ["--dataset", image_folder, "-o", str(tmp_path / "x.keras")]
    for extra, named in ((["--epochs", "0"], "`--epochs`"), (["--batch-size", "0"], "`--batch-size`"),
                         (["--lr", "-1"], "`--lr`"), (["--limit-train", "0"], "`--limit-train`"),
                         (["--val-size", "0"], "`--val-size`"), (["--momentum", "1"], "`--momentum`"),
                         (["--run-dir", str(busy)], "pass `--resume`"), (["--resume"], "`--resume` needs `--run-dir`")):
        assert _cli_finetune(monkeypatch, source, *base, *extra) == 2, extra
        assert named in capsys.readouterr().err, extra
    assert _cli_finetune(monkeypatch, headless, *base) == 2
    assert "no recognisable classification head" in capsys.readouterr().err
    monkeypatch.undo()
    assert _cli_finetune(monkeypatch, source, *base, "--val-size", "240") == 2  # the folder has 240 training images
    assert "`--val-size` must be an int in [1, 239]" in capsys.readouterr().err
    assert _cli_finetune(monkeypatch, source, *base, "--limit-train", "241") == 2  # more than there are: refused
    assert "`--limit-train` must be an int in [1, 240]" in capsys.readouterr().err
    assert _cli_finetune(monkeypatch, source, *base, "--limit-test", "1000") == 2
    assert "`--limit-test` must be an int in [1, " in capsys.readouterr().err
    import kernelzoo.zoo.data as data_module
    seen = []

    def recording_load(*args, verbose=True, **kwargs):
        seen.append(verbose)
        raise ValueError("recorded")

    monkeypatch.setattr(data_module, "load_images", recording_load)
    assert _cli_finetune(monkeypatch, source, *base, "--quiet") == 2 and seen == [False]  # --quiet: no decoding bar


def test_cli_finetune_refuses_a_negative_seed_before_loading_anything(tmp_path, monkeypatch, capsys):
    """--seed draws the held-out and limited images: a negative one is named before the model or the data loads."""
    finetune_cli = importlib.import_module("kernelzoo.zoo.finetune_cli")

    def no_load(*args, **kwargs):
        raise AssertionError("loaded")

    monkeypatch.setattr(finetune_cli, "load", no_load)
    monkeypatch.setattr(importlib.import_module("kernelzoo.zoo.registry"), "load", no_load)
    assert _cli_finetune(monkeypatch, "kernelnet_mnist_prior", "--dataset", "unused", "-o", str(tmp_path / "x.keras"),
                         "--seed", "-1") == 2
    assert "`--seed`" in capsys.readouterr().err


def test_cli_finetune_limit_train_leaves_a_validation_image(image_folder, tmp_path, monkeypatch, capsys):
    """--limit-train 1 leaves no image to train on once one is held out: refused naming it (not --val-size, which
    was not given) with the default 10 % rule, before the dataset is decoded."""
    finetune_cli = importlib.import_module("kernelzoo.zoo.finetune_cli")
    monkeypatch.setattr(finetune_cli, "load", lambda *args, **kwargs: pytest.fail("the dataset was loaded"))
    assert _cli_finetune(monkeypatch, "kernelnet_mnist_prior", "--dataset", image_folder, "--limit-train", "1",
                         "-o", str(tmp_path / "x.keras")) == 2
    err = capsys.readouterr().err
    assert "`--limit-train` must be an int >= 2, got 1" in err and "default 10 %" in err and "`--val-size`" not in err


def test_cli_finetune_resumes_writes_atomically_and_its_card_reproduces_the_command(image_folder, tmp_path,
                                                                                   monkeypatch, capsys):
    source = str(tmp_path / "tiny.keras")
    _tiny_kernelnet().save(source)
    out, run_dir = str(tmp_path / "tuned.keras"), str(tmp_path / "run")
    card = out[:-len(".keras")] + ".md"
    argv = [source, "--dataset", image_folder, "-o", out, "--batch-size", "16", "--limit-train", "40", "--seed", "3",
            "--lr", "0.05", "--max-steps-per-epoch", "2", "--run-dir", run_dir, "--quiet"]
    assert _cli_finetune(monkeypatch, *argv, "--epochs", "1") == 0
    first_card = open(card, encoding="utf-8").read()
    for option in ("--batch-size 16", "--limit-train 40", "--seed 3", "--lr 0.05", "--run-dir", "--epochs 1"):
        assert option in first_card, option  # the card's command is the parsed arguments, not sys.argv
    first_model = open(out, "rb").read()
    first_log = open(os.path.join(run_dir, "log.csv"), encoding="utf-8").read().splitlines()

    replace = os.replace

    def killed_before(suffix):  # a kill before the rename onto OUT.keras / OUT.md
        def fake(src, dst):
            if os.fspath(dst).endswith(suffix):
                raise OSError("killed")
            return replace(src, dst)
        return fake

    monkeypatch.setattr(os, "replace", killed_before("tuned.keras"))
    with pytest.raises(OSError, match="killed"):  # resumed for a second epoch, then killed writing OUT.keras
        _cli_finetune(monkeypatch, *argv, "--epochs", "2", "--resume")
    assert open(out, "rb").read() == first_model
    log = open(os.path.join(run_dir, "log.csv"), encoding="utf-8").read().splitlines()
    assert len(log) == 3 and log[:2] == first_log  # epoch 1 kept, epoch 2 trained after it
    monkeypatch.setattr(os, "replace", killed_before("tuned.md"))
    with pytest.raises(OSError, match="killed"):  # finished: nothing trains; killed writing the card
        _cli_finetune(monkeypatch, *argv, "--epochs", "2", "--resume")
    assert open(card, encoding="utf-8").read() == first_card and open(out, "rb").read() != first_model
    monkeypatch.setattr(os, "replace", replace)
    assert _cli_finetune(monkeypatch, *argv, "--epochs", "2", "--resume", "--lr", "0.5") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "hyperparameters.lr 0.05 -> 0.5" in err

    def scratch_fails(*args, from_scratch=False, **kwargs):
        if from_scratch:
            raise ValueError("scratch failed")
        return tune(*args, **kwargs)

    tune = ft.finetune
    monkeypatch.setattr(ft, "finetune", scratch_fails)
    before = open(out, "rb").read()
    assert _cli_finetune(monkeypatch, *argv, "--epochs", "2", "--resume", "--compare-scratch") == 2
    assert "scratch failed" in capsys.readouterr().err
    assert open(out, "rb").read() == before and open(card, encoding="utf-8").read() == first_card


def test_cli_finetune_resume_refuses_epochs_that_move_the_lr_drop_into_the_trained_epochs(image_folder, tmp_path,
                                                                                         monkeypatch, capsys):
    """2 epochs drop the lr after epoch 1; resumed with --epochs 4 the drop would come after epoch 2, but epoch 2 was
    trained at lr / 10: refused naming --epochs, before the dataset is decoded (the card would state another
    schedule than log.csv's). --epochs 3 (drops after every epoch) keeps the trained epochs' lr: it resumes."""
    finetune_cli = importlib.import_module("kernelzoo.zoo.finetune_cli")
    source = str(tmp_path / "tiny.keras")
    _tiny_kernelnet().save(source)
    argv = [source, "--dataset", image_folder, "-o", str(tmp_path / "tuned.keras"), "--batch-size", "16",
            "--limit-train", "20", "--max-steps-per-epoch", "1", "--run-dir", str(tmp_path / "run"), "--quiet"]
    assert _cli_finetune(monkeypatch, *argv, "--epochs", "2") == 0
    load = finetune_cli.load
    monkeypatch.setattr(finetune_cli, "load", lambda *args, **kwargs: pytest.fail("the dataset was loaded"))
    assert _cli_finetune(monkeypatch, *argv, "--epochs", "4", "--resume") == 2
    err = capsys.readouterr().err
    assert "`--epochs`=4" in err and "epoch 2 was trained at lr 0.001" in err
    monkeypatch.setattr(finetune_cli, "load", load)
    assert _cli_finetune(monkeypatch, *argv, "--epochs", "3", "--resume") == 0


def test_cli_finetune_resume_refuses_other_data(image_folder, tmp_path, monkeypatch, capsys):
    """--dataset (a path made absolute; where it was read from), --limit-train, --val-size and --limit-test make
    the run's data: config.json records them, and a resume with others is refused."""
    import shutil

    source = str(tmp_path / "tiny.keras")
    _tiny_kernelnet().save(source)
    argv = [source, "-o", str(tmp_path / "tuned.keras"), "--batch-size", "16", "--max-steps-per-epoch", "1",
            "--run-dir", str(tmp_path / "run"), "--quiet"]
    data = {"--dataset": image_folder, "--limit-train": "40", "--val-size": "8", "--limit-test": "10"}

    def finetune_on(**changes):
        return _cli_finetune(monkeypatch, *argv, *[word for item in {**data, **changes}.items() for word in item],
                             "--epochs", "2" if changes else "1", *(["--resume"] if changes else []))

    assert finetune_on() == 0
    elsewhere = str(shutil.copytree(image_folder, tmp_path / "elsewhere"))  # the same images, another dataset
    for flag, value, change in (("--dataset", elsewhere, f"options.dataset {image_folder!r} -> {elsewhere!r}"),
                                ("--limit-train", "50", "options.limit_train 40 -> 50"),
                                ("--val-size", "9", "options.val_size 8 -> 9"),
                                ("--limit-test", "12", "options.limit_test 10 -> 12")):
        assert finetune_on(**{flag: value}) == 2, flag
        err = capsys.readouterr().err
        assert "was started with other settings" in err and change in err, flag


def test_eval_of_a_finetune_run_measures_the_dataset_given(image_folder, tmp_path):
    """A fine-tune run folder's config.json names no preset: its model is measured on --dataset (tfds:NAME is
    NAME under --data-dir, as for `kernelzoo finetune`), with no card or paper figure."""
    from kernelzoo.zoo.evaluation import measure

    train = _blob_images(24, np.random.default_rng(0))
    ft.finetune(_tiny_kernelnet(), train, None, NUM_CLASSES, epochs=1, batch_size=8, out_dir=tmp_path / "run",
                max_steps_per_epoch=1, verbose=0)
    path = str(tmp_path / "run" / "model.keras")
    with pytest.raises(ValueError, match="no preset is known"):
        measure(path)
    result = measure(path, dataset=image_folder)
    assert result["examples"] == 90 and result["preset"] is None and result["card"] is None
    named = measure(path, os.path.dirname(image_folder), dataset="tfds:" + os.path.basename(image_folder))
    assert named["accuracy"] == result["accuracy"] and named["examples"] == 90


def _tiny_sc(num_classes=10):
    """The SC MNIST network (Table 4 of paper 002) at small widths: ... conv3_2 (1x1, one filter per class) ->
    conv3_2_bn -> conv3_2_act (ReLU) -> logits (GlobalAveragePooling2D)."""
    return zoo.create("sc_mnist", widths=(4, 4, 8), num_classes=num_classes)


def test_sc_head_is_the_classwise_conv_and_only_it_trains_with_freeze_features(tmp_path):
    """A spatial-contrasting network ends in a 1x1 Conv2D with one filter per class, BN, ReLU and global average
    pooling: the conv gets the new class count, the BN after it is fresh, everything before is copied and frozen."""
    source = _tiny_sc()
    head, kind = ft.find_head(source)
    assert (head.name, kind) == ("conv3_2", "conv")
    rng = np.random.default_rng(0)
    train, val = _blob_images(24, rng, size=28, channels=1), _blob_images(12, rng, size=28, channels=1)
    tuned, metrics = ft.finetune(source, train, val, NUM_CLASSES, freeze="features", epochs=2, batch_size=8,
                                 max_steps_per_epoch=3, out_dir=tmp_path / "run", verbose=0)
    assert tuple(tuned.output.shape) == (None, NUM_CLASSES) and np.isfinite(metrics["val_loss"])
    names = [layer.name for layer in tuned.layers]
    assert len(set(names)) == len(names)
    assert names[-4:] == ["conv3_2", "conv3_2_bn", "conv3_2_act", "logits"]
    conv = tuned.get_layer("conv3_2")
    assert conv.kernel.shape == (1, 1, 8, NUM_CLASSES) and conv.kernel_size == (1, 1) and conv.strides == (1, 1)
    assert conv.padding == "same" and not conv.use_bias
    assert tuned.get_layer("conv3_2_bn").gamma.shape == (NUM_CLASSES,)
    assert type(tuned.get_layer("conv3_2_bn")) is type(source.get_layer("conv3_2_bn"))  # FusedBatchNormalization
    assert sorted(w.path for w in tuned.trainable_weights) == ["conv3_2/kernel", "conv3_2_bn/beta",
                                                                "conv3_2_bn/gamma"]
    assert metrics["trainable_params"] == 8 * NUM_CLASSES + 2 * NUM_CLASSES
    # every layer before the head: the source's weights (BN moving statistics included), unchanged by the fit
    compared = 0
    for layer in source.layers[:[layer.name for layer in source.layers].index("conv3_2")]:
        new = tuned.get_layer(layer.name)
        if layer.weights and new.weights:
            assert not new.trainable, layer.name
            for a, b in zip(new.get_weights(), layer.get_weights()):
                np.testing.assert_array_equal(a, b, err_msg=layer.name)
            compared += 1
    assert compared >= 8  # normalize, conv1_1, pool1_bn, conv2_1(_bn), conv2_2(_bn), sc_features, conv3_1(_bn)
    # the new head trained: its BN's moving statistics left their fresh values
    assert not np.allclose(tuned.get_layer("conv3_2_bn").moving_mean.numpy(), 0.0)
    # round trip through .keras (kernelzoo imported: FusedBatchNormalization and the regularizer deserialise)
    path = str(tmp_path / "sc_tuned.keras")
    tuned.save(path)
    loaded = keras.models.load_model(path)
    images = val[0][:6]
    np.testing.assert_allclose(loaded.predict(images, verbose=0), tuned.predict(images, verbose=0), atol=1e-6)
    assert loaded.predict(images, verbose=0).shape == (6, NUM_CLASSES)


def test_sc_head_with_freeze_none_trains_everything_and_the_new_bn_is_fresh():
    source = _tiny_sc()
    source.get_layer("conv3_2_bn").moving_mean.assign(np.full(10, 3.0, "float32"))  # a "pretrained" statistic
    tuned = ft.adapt_model(source, 4, (28, 28, 1), freeze="none")
    assert tuple(tuned.output.shape) == (None, 4)
    paths = {w.path for w in tuned.trainable_weights}
    assert {"conv1_1/kernel", "conv3_1/kernel", "conv3_2/kernel", "conv3_2_bn/gamma"} <= paths
    bn = tuned.get_layer("conv3_2_bn")
    np.testing.assert_array_equal(bn.moving_mean.numpy(), np.zeros(4))
    np.testing.assert_array_equal(bn.gamma.numpy(), np.ones(4))
    for a, b in zip(tuned.get_layer("conv3_1").get_weights(), source.get_layer("conv3_1").get_weights()):
        np.testing.assert_array_equal(a, b)
    # fine-tuning a fine-tuned SC model again: its head is found again, names stay unique
    again = ft.adapt_model(tuned, 2, (28, 28, 1))
    names = [layer.name for layer in again.layers]
    assert len(set(names)) == len(names) and "adapt_scale_2" in names
    assert ft.find_head(again)[0].name == "conv3_2" and tuple(again.output.shape) == (None, 2)


def test_a_class_conv_followed_by_other_layers_is_not_a_head():
    """Only per-channel layers (BN, activation, global pooling) may follow the class-wise conv: a Flatten is not."""
    inputs = keras.Input((1, 1, 4))
    x = keras.layers.Conv2D(3, 1, name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Flatten(name="flat")(x))
    with pytest.raises(ValueError, match="no recognisable classification head.*'flat'.*Conv2D"):
        ft.find_head(model)


def test_sc_from_scratch_baseline_keeps_the_constant_normalization():
    """The from-scratch baseline (`--compare-scratch`) of an SC network: fresh weights, every layer trained; its
    Normalization holds constants (the per-channel mean / std), not a fit, so the unsupervised initialisation
    leaves it (Keras cannot adapt it)."""
    source = _tiny_sc()
    rng = np.random.default_rng(0)
    train = _blob_images(16, rng, size=28, channels=1)
    model, metrics = ft.finetune(source, train, None, NUM_CLASSES, epochs=1, batch_size=8, max_steps_per_epoch=1,
                                 from_scratch=True, verbose=0)
    assert metrics["freeze"] == "none" and tuple(model.output.shape) == (None, NUM_CLASSES)
    assert "conv1_1/kernel" in {w.path for w in model.trainable_weights}
    assert not np.allclose(model.get_layer("conv1_1").kernel.numpy(), source.get_layer("conv1_1").kernel.numpy())
    normalize = model.get_layer("normalize")
    np.testing.assert_allclose(np.ravel(normalize.mean), np.ravel(source.get_layer("normalize").mean))
