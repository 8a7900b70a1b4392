"""Image loaders (kernelzoo.zoo.data.images / cifar) on tiny generated copies of every supported format."""
import gzip
import os
import tarfile

import numpy as np
import pytest

from kernelzoo.zoo.data import cifar
from kernelzoo.zoo.data.images import holdout_split, load_dataset, load_images

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture
def tiny_cifar():
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    return x_train, np.arange(10) % 10, x_test, np.array([3, 1, 4, 1])


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNELZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KERNELZOO_DATA_DIR", raising=False)


def _check(data, x_train, y_train, x_test, y_test):
    np.testing.assert_array_equal(data.x_train, x_train)
    np.testing.assert_array_equal(data.y_train, y_train)
    np.testing.assert_array_equal(data.x_test, x_test)
    np.testing.assert_array_equal(data.y_test, y_test)


def _tar(path, folder, arcname):
    with tarfile.open(path, "w:gz") as archive:
        archive.add(folder, arcname=arcname)


def test_cifar_python_folder_and_archive(tmp_path, tiny_cifar):
    root = tmp_path / "data"
    cifar.write_python_copy(str(root / "cifar10" / "cifar-10-batches-py"), *tiny_cifar, CLASSES)
    data = load_images("cifar10", data_dir=str(root))
    _check(data, *tiny_cifar)
    assert data.class_names == CLASSES and data.input_shape == (32, 32, 3)
    other = tmp_path / "other"
    other.mkdir()
    _tar(str(other / "cifar-10-python.tar.gz"), str(root / "cifar10" / "cifar-10-batches-py"), "cifar-10-batches-py")
    _check(load_images("cifar10", data_dir=str(other)), *tiny_cifar)
    _check(load_images(str(other / "cifar-10-python.tar.gz")), *tiny_cifar)  # the archive's own path


def _write_cifar_binary(folder, tiny_cifar, class_names=CLASSES):
    """`tiny_cifar` as a cifar-10-batches-bin folder (five training batches, the test batch, batches.meta.txt)."""
    x_train, y_train, x_test, y_test = tiny_cifar
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(10), 5), 1):
        (folder / f"data_batch_{i}.bin").write_bytes(cifar.binary_records(x_train[part], y_train[part]))
    (folder / "test_batch.bin").write_bytes(cifar.binary_records(x_test, y_test))
    (folder / "batches.meta.txt").write_text("\n".join(class_names) + "\n\n")  # a blank line after the names


def test_cifar_binary_folder_and_archive(tmp_path, tiny_cifar):
    folder = tmp_path / "cifar-10-batches-bin"
    _write_cifar_binary(folder, tiny_cifar)
    data = load_images("cifar10", data_dir=str(tmp_path))
    _check(data, *tiny_cifar)
    assert data.class_names == CLASSES
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    _tar(str(archive_dir / "cifar-10-binary.tar.gz"), str(folder), "cifar-10-batches-bin")
    _check(load_images(str(archive_dir / "cifar-10-binary.tar.gz")), *tiny_cifar)


def test_malformed_cifar_binary_names_the_file(tmp_path, tiny_cifar):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}.bin").write_bytes(b"\x00" * 100)
    (folder / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="data_batch_1.bin"):
        load_images("cifar10", data_dir=str(tmp_path))


def test_cifar_class_names_of_another_count_give_numbered_names(tmp_path, tiny_cifar):
    """A batches.meta.txt that does not name the 10 classes (here 11 lines) is not taken: names "0".."9"."""
    _write_cifar_binary(tmp_path / "cifar-10-batches-bin", tiny_cifar, ["label names"] + CLASSES)
    assert load_images("cifar10", data_dir=str(tmp_path)).class_names == [str(i) for i in range(10)]


def _write_idx(path, array, images):
    header = np.array([2051 if images else 2049, len(array)] + list(array.shape[1:]), ">i4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_and_npz(tmp_path):
    rng = np.random.default_rng(1)
    x_train, y_train = rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 10, 6)
    x_test, y_test = rng.integers(0, 256, (3, 28, 28)), rng.integers(0, 10, 3)
    folder = tmp_path / "idx" / "mnist"
    folder.mkdir(parents=True)
    for name, array, images in (("train-images-idx3-ubyte.gz", x_train, True),
                                ("train-labels-idx1-ubyte.gz", y_train, False),
                                ("t10k-images-idx3-ubyte.gz", x_test, True),
                                ("t10k-labels-idx1-ubyte.gz", y_test, False)):
        _write_idx(str(folder / name), array, images)
    data = load_images("mnist", data_dir=str(tmp_path / "idx"))
    _check(data, x_train[..., None], y_train, x_test[..., None], y_test)
    npz = tmp_path / "npz"
    npz.mkdir()
    np.savez(npz / "mnist.npz", x_train=x_train.astype(np.uint8), y_train=y_train, x_test=x_test.astype(np.uint8),
             y_test=y_test)
    _check(load_images("mnist", data_dir=str(npz)), x_train[..., None], y_train, x_test[..., None], y_test)


def _class_folders(root, rng, fmt="PNG"):
    from PIL import Image
    expected = {}
    for split, count in (("train", 3), ("test", 2)):
        images, labels = [], []
        for label, cls in enumerate(("cat", "dog")):
            os.makedirs(os.path.join(root, split, cls))
            for i in range(count):
                image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(image).save(os.path.join(root, split, cls, f"{i:04d}.png"), format=fmt)
                images.append(image)
                labels.append(label)
        expected[split] = (np.stack(images), np.array(labels))
    return expected


def test_class_folders_and_tar(tmp_path):
    expected = _class_folders(str(tmp_path / "data" / "pets" / "pets-png"), np.random.default_rng(2))
    data = load_images("pets", data_dir=str(tmp_path / "data"))
    _check(data, *expected["train"], *expected["test"])
    assert data.class_names == ["cat", "dog"]
    archive = tmp_path / "pets-png.tar.gz"
    _tar(str(archive), str(tmp_path / "data" / "pets" / "pets-png"), "pets-png")
    for _ in range(2):  # decoded, then from the cache
        _check(load_images(str(archive)), *expected["train"], *expected["test"])
    assert len(os.listdir(tmp_path / "cache" / "data")) == 1
    copy = tmp_path / "elsewhere" / "pets-png.tar.gz"  # the same bytes, another folder and mtime: cache reused
    copy.parent.mkdir()
    copy.write_bytes(archive.read_bytes())
    _check(load_images(str(copy)), *expected["train"], *expected["test"])
    assert len(os.listdir(tmp_path / "cache" / "data")) == 1
    _tar(str(copy), str(tmp_path / "data" / "pets" / "pets-png" / "train"), "pets-png/train")  # other content
    with pytest.raises(ValueError, match="no class subfolders with images under 'test/'"):  # decoded afresh, not cached
        load_images(str(copy))


def test_a_tgz_archive_named_after_the_dataset_is_found_in_the_data_dir(tmp_path):
    """data_dir/<name>.tgz is read as data_dir/<name>.tar.gz is."""
    expected = _class_folders(str(tmp_path / "pets-png"), np.random.default_rng(3))
    (tmp_path / "data").mkdir()
    _tar(str(tmp_path / "data" / "pets.tgz"), str(tmp_path / "pets-png"), "pets-png")
    _check(load_images("pets", data_dir=str(tmp_path / "data"), verbose=False), *expected["train"], *expected["test"])


def test_images_with_upper_case_extensions_are_read_in_folders_and_archives(tmp_path):
    """0000.PNG (a camera's or Windows' spelling) is an image, in class folders and in a .tar.gz of them."""
    folder = tmp_path / "pets"
    expected = _class_folders(str(folder), np.random.default_rng(5))
    for path in folder.glob("*/*/*.png"):
        path.rename(path.with_suffix(".PNG"))
    _check(load_images(str(folder), verbose=False), *expected["train"], *expected["test"])
    archive = tmp_path / "pets.tar.gz"
    _tar(str(archive), str(folder), "pets")
    _check(load_images(str(archive), cache=False, verbose=False), *expected["train"], *expected["test"])


def test_a_cached_archive_is_not_decoded_again(tmp_path, monkeypatch):
    """The second load of a class-folder archive reads the cached arrays: no image is decoded."""
    from kernelzoo.zoo.data import images
    expected = _class_folders(str(tmp_path / "pets-png"), np.random.default_rng(6))
    archive = tmp_path / "pets-png.tar.gz"
    _tar(str(archive), str(tmp_path / "pets-png"), "pets-png")
    load_images(str(archive), verbose=False)
    monkeypatch.setattr(images, "_decode", lambda raw, where: pytest.fail(f"{where} decoded again"))
    _check(load_images(str(archive), verbose=False), *expected["train"], *expected["test"])


def test_class_folders_without_images_or_of_other_shapes_are_refused(tmp_path):
    from PIL import Image
    root = tmp_path / "pets"
    _class_folders(str(root), np.random.default_rng(3))
    (root / "train" / "bird").mkdir()
    (root / "test" / "bird").mkdir()  # an empty class in both splits: it would vanish, relabelling nothing
    with pytest.raises(ValueError, match="train/bird/ holds no images"):
        load_images(str(root))
    for split in ("train", "test"):
        (root / split / "bird").rmdir()
    (root / "train" / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    assert load_images(str(root)).class_names == ["cat", "dog"]
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(root / "test" / "cat" / "0000.png")
    for name in os.listdir(root / "test" / "dog"):
        Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(root / "test" / "dog" / name)
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(root / "test" / "cat" / "0001.png")
    with pytest.raises(ValueError, match="train and test images differ in shape"):
        load_images(str(root))


def test_runs_decoding_one_archive_at_once_share_the_cache(tmp_path, monkeypatch):
    # Two runs decoded CIFAR-10 at once and the second rename found no temporary file (one name for both):
    # here a second decode of the same archive completes while the first is writing its cache.
    from kernelzoo.zoo.data import images
    rng = np.random.default_rng(0)
    expected = _class_folders(tmp_path / "data" / "pets" / "pets-png", rng)
    archive = tmp_path / "pets-png.tar.gz"
    _tar(str(archive), str(tmp_path / "data" / "pets" / "pets-png"), "pets-png")
    save, nested = np.savez, []

    def savez_while_another_run_decodes(file, **arrays):
        save(file, **arrays)
        if not nested:
            nested.append(True)
            _check(images._read_class_archive(str(archive), cache=True, verbose=False),
                   *expected["train"], *expected["test"])

    monkeypatch.setattr(images.np, "savez", savez_while_another_run_decodes)
    _check(images._read_class_archive(str(archive), cache=True, verbose=False), *expected["train"], *expected["test"])
    assert nested and os.listdir(tmp_path / "cache" / "data") == [os.path.basename(images._cache_path(str(archive)))]
    _check(load_images(str(archive)), *expected["train"], *expected["test"])  # the cache left is whole


def test_jpeg_decoding_matches_tf_integer_accurate(tmp_path):
    import tensorflow as tf
    from PIL import Image
    rng = np.random.default_rng(3)
    root = tmp_path / "jpegs"
    for split in ("train", "test"):
        os.makedirs(root / split / "a")
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / split / "a" / "0.jpg",
                                                                                  quality=75)
    data = load_images(str(root))
    raw = (root / "train" / "a" / "0.jpg").read_bytes()
    reference = tf.io.decode_jpeg(raw, channels=3, dct_method="INTEGER_ACCURATE").numpy()
    np.testing.assert_array_equal(data.x_train[0], reference)


def test_missing_data_names_path_and_expected_files(tmp_path):
    with pytest.raises(ValueError, match="cifar-10-batches-py") as error:
        load_images("cifar10", data_dir=str(tmp_path))
    assert str(tmp_path) in str(error.value)
    with pytest.raises(ValueError, match="data_dir"):
        load_images("cifar10", data_dir=str(tmp_path / "nope"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="`name`"):
        load_images(3)
    with pytest.raises(ValueError, match="`data_dir`"):
        load_images("cifar10", data_dir=5)
    with pytest.raises(ValueError, match="`name`"):
        load_dataset(None)
    with pytest.raises(ValueError, match="`size`"):
        holdout_split(np.zeros((4, 2, 2, 1)), np.zeros(4, int), 4)


def test_a_data_dir_that_is_a_file_is_refused_as_not_a_directory(tmp_path):
    """data_dir naming a file (say, an archive) is refused as such, not searched."""
    (tmp_path / "cifar10.tar.gz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"^data_dir='.*cifar10.tar.gz' is not a directory$"):
        load_images("cifar10", data_dir=str(tmp_path / "cifar10.tar.gz"))


def test_holdout_split_is_a_deterministic_partition():
    x, y = np.arange(20).reshape(20, 1, 1, 1), np.arange(20)
    (a, ya), (b, yb) = holdout_split(x, y, 5, seed=1)
    assert len(b) == 5 and sorted(np.concatenate([ya, yb]).tolist()) == list(range(20))
    np.testing.assert_array_equal(holdout_split(x, y, 5, seed=1)[1][1], yb)
    assert ya.tolist() == sorted(ya) and yb.tolist() == sorted(yb)  # each part in the order of x


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED, "mnist", "train-images-idx3-ubyte.gz")),
                    reason="../shared/data/mnist not present")
def test_shared_mnist():
    data = load_images("mnist", data_dir=SHARED)
    assert data.x_train.shape == (60000, 28, 28, 1) and data.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(data.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED, "cifar10", "cifar10-jpeg.tar.gz")),
                    reason="../shared/data/cifar10 not present")
def test_shared_cifar10_jpeg(monkeypatch):
    monkeypatch.delenv("KERNELZOO_CACHE")  # share the decoded cache with real runs (first run ~20 s)
    data = load_images("cifar10", data_dir=SHARED)
    assert data.x_train.shape == (50000, 32, 32, 3) and data.x_test.shape == (10000, 32, 32, 3)
    assert data.class_names == CLASSES
    assert np.bincount(data.y_train).tolist() == [5000] * 10
    np.testing.assert_allclose(data.x_train.reshape(-1, 3).mean(0), [125.27, 122.93, 113.86], atol=0.05)


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED, "ml-100k", "u.data")),
                    reason="../shared/data/ml-100k not present")
def test_load_dataset_dispatches_ratings():
    data = load_dataset("ml-100k", data_dir=SHARED)
    assert len(data["ratings"]) == 100000 and data["n_users"] == 943


def _save(path, mode, size=8, seed=0):
    """An image of `mode` (L, RGB, P: a palette of greys, 1: 1-bit) at `path`; its decoded grey or RGB pixels."""
    from PIL import Image
    rgb = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))
    image = {"L": rgb.convert("L"), "RGB": rgb, "P": rgb.convert("L").convert("P"), "1": rgb.convert("1")}[mode]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path)
    return np.asarray(image.convert("RGB" if mode == "RGB" else "L"))


def _grey_folders(root):
    for i, place in enumerate(("train/a", "train/b", "test/a", "test/b")):
        _save(os.path.join(root, place, "0.png"), "L", seed=i)


def test_grey_palette_and_1_bit_images_are_grey_and_one_colour_image_makes_all_rgb(tmp_path, recwarn):
    root = str(tmp_path / "mixed")
    _grey_folders(root)
    palette = _save(os.path.join(root, "train", "a", "1.png"), "P", seed=5)
    _save(os.path.join(root, "train", "b", "1.png"), "1", seed=6)
    data = load_images(root)
    assert data.input_shape == (8, 8, 1) and not recwarn.list
    np.testing.assert_array_equal(data.x_train[1, ..., 0], palette)
    colour = _save(os.path.join(root, "test", "a", "1.png"), "RGB", seed=7)
    with pytest.warns(UserWarning, match="6 of 7 images are grey among colour ones .*all are read as RGB") as said:
        data = load_images(root)
    assert data.input_shape == (8, 8, 3) and len(said) == 1  # said once
    np.testing.assert_array_equal(data.x_test[1], colour)
    np.testing.assert_array_equal(data.x_train[1], np.repeat(palette[..., None], 3, axis=-1))
    _save(os.path.join(root, "train", "b", "2.png"), "L", size=6)
    with pytest.raises(ValueError, match=r"different sizes \(.*train/b/2\.png \(6, 6, 3\), .*0\.png \(8, 8, 3\)\)"):
        load_images(root)


@pytest.mark.parametrize("archived", [False, True])
def test_empty_and_nested_class_folders_are_refused_and_hidden_files_skipped_in_folders_and_archives(tmp_path,
                                                                                                     archived):
    root = tmp_path / "ds"
    _grey_folders(str(root))

    def load():
        if not archived:
            return load_images(str(root))
        _tar(str(tmp_path / "ds.tar.gz"), str(root), "ds")
        return load_images(str(tmp_path / "ds.tar.gz"), cache=False)

    for split in ("train", "test"):
        (root / split / "c").mkdir()
    with pytest.raises(ValueError, match="the class folder train/c/ holds no images"):
        load()
    for split in ("train", "test"):
        (root / split / "c").rmdir()
    _save(str(root / "train" / "a" / "sub" / "1.png"), "L")
    with pytest.raises(ValueError, match="train/a/sub/ is a folder inside a class folder"):
        load()
    os.remove(root / "train" / "a" / "sub" / "1.png")
    with pytest.raises(ValueError, match="train/a/sub/ is a folder inside a class folder"):  # empty, too
        load()
    (root / "train" / "a" / "sub").rmdir()
    (root / "train" / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata: skipped
    (root / "train" / "notes.txt").write_text("a file beside the class folders is no class")
    (root / "train" / ".ipynb_checkpoints").mkdir()  # a hidden folder is no class either
    assert load().class_names == ["a", "b"]


def test_a_data_dir_holding_only_another_dataset_is_not_read_as_the_one_asked(tmp_path):
    _grey_folders(str(tmp_path / "shapes"))
    (tmp_path / "dd").mkdir()
    _tar(str(tmp_path / "dd" / "shapes.tar.gz"), str(tmp_path / "shapes"), "shapes")
    with pytest.raises(ValueError, match="no copy of 'mnist' found .* a subfolder mnist/ holding"):
        load_images("mnist", data_dir=str(tmp_path / "dd"))
    assert load_images("shapes", data_dir=str(tmp_path / "dd")).class_names == ["a", "b"]  # named after it


# ----------------------------------------------------------------------------- STL-10

STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def _write_stl10(folder, counts=(3, 2)):
    """A tiny STL-10 binary copy (channels stored column-major, labels 1..10); {split: (images, 0-based labels)}."""
    rng = np.random.default_rng(4)
    os.makedirs(folder)
    copy = {}
    for split, count in zip(("train", "test", "unlabeled"), counts + (1,)):
        images = rng.integers(0, 256, (count, 96, 96, 3), dtype=np.uint8)
        images.transpose(0, 3, 2, 1).tofile(os.path.join(folder, f"{split}_X.bin"))
        copy[split] = images, np.arange(count) % 10
        (copy[split][1] + 1).astype(np.uint8).tofile(os.path.join(folder, f"{split}_y.bin"))
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    return copy


def test_a_mistyped_stl10_path_is_refused_not_replaced_by_another_copy(tmp_path):
    from kernelzoo.zoo import registry
    from kernelzoo.zoo.data.stl10 import load_stl10
    from kernelzoo.zoo.sc.recipe import SCRecipe
    data = tmp_path / "data"
    _write_stl10(data / "stl10" / "stl10_binary")
    typo = str(tmp_path / "stl10_TYPO")
    assert load_stl10("stl10", str(data)).train[0].shape == (3, 96, 96, 3)  # a name reads the data dir's copy
    with pytest.raises(ValueError, match="`dataset`='stl10_typo': data_dir is read for STL-10"):
        load_stl10("stl10_typo", str(data))  # another name is not STL-10
    for data_dir in (str(data), None):  # neither the data dir's copy nor tfds (whose error would not name it)
        with pytest.raises(ValueError, match="`dataset`='.*stl10_TYPO': no such path"):
            load_stl10(typo, data_dir)
    recipe = SCRecipe()
    with pytest.raises(ValueError, match="`dataset`='.*stl10_TYPO': no such path"):
        recipe.load_data(registry.info("sc_stl10"), str(data), dataset=typo, options=recipe.options())


def test_load_images_reads_the_stl10_binary_copy(tmp_path):
    copy = _write_stl10(tmp_path / "data" / "stl10" / "stl10_binary")
    for name, data_dir in (("stl10", tmp_path / "data"), ("stl-10", tmp_path / "data"),
                           (tmp_path / "data" / "stl10" / "stl10_binary", None)):
        data = load_dataset(name, data_dir)
        _check(data, *copy["train"], *copy["test"])  # the labelled splits, not the unlabelled one
        assert data.class_names == STL10_CLASSES and data.input_shape == (96, 96, 3)


def test_a_path_named_stl_10_is_read_as_stl10(tmp_path):
    """A folder named "STL-10" (hyphenated, capitalised) holding stl10_binary/ is an STL-10 copy."""
    copy = _write_stl10(tmp_path / "STL-10" / "stl10_binary")
    _check(load_images(str(tmp_path / "STL-10")), *copy["train"], *copy["test"])


# ----------------------------------------------------------------------------- decoding and finding copies


def test_16_bit_grey_pngs_are_scaled_as_tf_does_and_32_bit_images_refused(tmp_path):
    import tensorflow as tf
    from PIL import Image
    rng = np.random.default_rng(5)
    root = tmp_path / "deep"
    for place in ("train/a", "train/b", "test/a", "test/b"):
        os.makedirs(root / place)
        Image.fromarray(rng.integers(0, 65536, (8, 8)).astype(np.uint16)).save(root / place / "0.png")
    data = load_images(str(root))
    reference = tf.io.decode_png((root / "train" / "a" / "0.png").read_bytes(), channels=1).numpy()
    np.testing.assert_array_equal(data.x_train[0], reference)
    np.testing.assert_array_equal(reference[..., 0], np.asarray(Image.open(root / "train" / "a" / "0.png")) >> 8)
    os.remove(root / "test" / "b" / "0.png")
    for pixels in (np.zeros((8, 8), np.int32), np.zeros((8, 8), np.float32)):  # Pillow modes I and F
        Image.fromarray(pixels).save(root / "test" / "b" / "0.tif")
        with pytest.raises(ValueError, match=r"test/b/0\.tif': 32-bit .* pixels"):
            load_images(str(root))


def test_hyphenated_and_capitalised_names_find_their_copy_in_the_data_dir(tmp_path, tiny_cifar):
    cifar.write_python_copy(str(tmp_path / "cifar10" / "cifar-10-batches-py"), *tiny_cifar, CLASSES)
    for name in ("cifar-10", "CIFAR-10", "cifar_10"):
        _check(load_images(name, data_dir=str(tmp_path)), *tiny_cifar)


def test_an_archive_of_two_dataset_folders_is_refused_as_their_folder_is(tmp_path):
    for copy in ("v1", "v2"):
        _grey_folders(str(tmp_path / "two" / copy))
    with pytest.raises(ValueError):
        load_images(str(tmp_path / "two"))
    with tarfile.open(tmp_path / "two.tar.gz", "w:gz") as archive:
        for copy in ("v1", "v2"):
            archive.add(str(tmp_path / "two" / copy), arcname=copy)
    with pytest.raises(ValueError, match="two.tar.gz': v1/ and v2/ both hold train/ or test/"):
        load_images(str(tmp_path / "two.tar.gz"), cache=False)


# ----------------------------------------------------------------------------- augmentation


def test_random_shift_flip_takes_images_of_any_size():
    import keras
    from kernelzoo.zoo.augment import RandomShiftFlip
    layer = RandomShiftFlip(shift=2)
    assert layer(keras.Input((None, None, 3))).shape == (None, None, None, 3)  # the size is checked when known
    images = np.arange(2 * 5 * 5 * 3, dtype="float32").reshape(2, 5, 5, 3)
    assert layer(images, training=True).shape == (2, 5, 5, 3)
    with pytest.raises(ValueError, match=r"`shift`=2 must be smaller than the image \(2x2\)"):
        layer(images[:, :2, :2], training=True)
    zeros = RandomShiftFlip(shift=2, fill="constant")  # no reflection: any shift fits (zeros may fill the image)
    assert zeros(images[:, :2, :2], training=True).shape == (2, 2, 2, 3)


def test_random_shift_flip_is_the_identity_when_training_is_not_said():
    """Called without `training` (a model called on images outside fit), the layer passes them on unchanged and
    draws nothing."""
    import keras
    from kernelzoo.zoo.augment import RandomShiftFlip
    images = np.random.default_rng(3).integers(0, 256, (8, 6, 6, 3)).astype("float32")
    layer = RandomShiftFlip(shift=2, seed=1)
    np.testing.assert_array_equal(keras.Sequential([keras.Input((6, 6, 3)), layer])(images), images)
    np.testing.assert_array_equal(layer(images), images)
    assert int(layer.calls.numpy()) == 0


def test_random_shift_flip_draws_every_shift_both_ways_and_flips_half_the_images():
    """Shifts in [-shift, shift] along each axis, each drawn (the range's upper end included); with `flip`, about
    half the images mirrored."""
    from kernelzoo.zoo.augment import RandomShiftFlip
    images = np.zeros((300, 5, 5, 1), "float32")
    images[:, 2, 2] = 1.0
    out = np.asarray(RandomShiftFlip(shift=1, flip=False, fill="constant", seed=1)(images, training=True))
    where = np.argwhere(out[..., 0] == 1.0)
    assert len(where) == 300  # one dot per image, moved by its shift
    assert set(where[:, 1] - 2) == {-1, 0, 1} and set(where[:, 2] - 2) == {-1, 0, 1}
    images = np.zeros((1000, 3, 3, 1), "float32")
    images[:, :, 0] = 1.0  # the left column lit: mirrored, the right one
    out = np.asarray(RandomShiftFlip(shift=0, flip=True, seed=1)(images, training=True))
    mirrored = out[:, 0, 2, 0] == 1.0
    assert np.all(mirrored == (out[:, 0, 0, 0] == 0.0)) and 0.45 < mirrored.mean() < 0.55


def test_random_shift_flip_fills_the_border_by_reflection():
    """fill='reflect' (the default): each shifted image is a crop of the image padded as np.pad's "reflect" (the
    edge pixel not repeated), every shift drawn; no zeros come in."""
    from kernelzoo.zoo.augment import RandomShiftFlip
    image = np.arange(1, 17, dtype="float32").reshape(4, 4, 1)
    out = np.asarray(RandomShiftFlip(shift=1, flip=False, seed=2)(np.stack([image] * 100), training=True))
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="reflect")
    assert {result.tobytes() for result in out} == {padded[r:r + 4, c:c + 4].tobytes() for r in range(3)
                                                     for c in range(3)}


def test_random_shift_flip_from_its_config_draws_as_the_layer_it_describes():
    """get_config holds shift, flip, fill and seed: the layer a saved model reloads draws the very same images."""
    from kernelzoo.zoo.augment import RandomShiftFlip
    images = np.random.default_rng(4).integers(0, 256, (16, 6, 6, 1)).astype("float32")
    layer = RandomShiftFlip(shift=3, flip=False, fill="constant", seed=5)
    again = RandomShiftFlip.from_config(layer.get_config())
    np.testing.assert_array_equal(again(images, training=True), layer(images, training=True))


def test_jitter_colors_brightness_spans_its_whole_range():
    """On a uniform grey image only the brightness factor acts (contrast and saturation move nothing): the factors
    drawn span [1 - 0.8 s, 1 + 0.8 s], the others 1 (no distortion, 20 %)."""
    from kernelzoo.zoo.augment import jitter_colors
    out = np.asarray(jitter_colors(np.full((2000, 2, 2, 3), 100.0, "float32"), 1.0, (4, 5)))
    factors = out[:, 0, 0, 0] / 100.0
    assert np.allclose(out, factors[:, None, None, None] * 100.0, rtol=1e-5, atol=1e-3)
    assert 0.2 - 1e-5 <= factors.min() < 0.25 and 1.75 < factors.max() <= 1.8 + 1e-5


def test_jitter_colors_clips_to_max_value():
    """Images in [0, 1] with max_value=1: the brightened ones are clipped at 1, not at 255."""
    from kernelzoo.zoo.augment import jitter_colors
    out = np.asarray(jitter_colors(np.full((200, 2, 2, 3), 0.9, "float32"), 1.0, (4, 5), max_value=1.0))
    assert out.max() == pytest.approx(1.0) and out.min() >= 0.0
