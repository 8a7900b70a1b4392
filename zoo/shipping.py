"""`kernelzoo ship`: a trained model written as the weight file the zoo carries, within the weight budget.

Shipped weights travel inside the repository, so a checkout (and what tools copy of it, 64 MiB to a GPU
machine) stays small: at most MAX_FILE_BYTES a file and MAX_TOTAL_BYTES for the whole zoo. Keras writes
`.keras` archives uncompressed; the zoo's deflate by 8-25 % (a kernelNet's fixed grid locations: 68 %), and
`keras.models.load_model` reads a deflated archive as it is, so shipped files are deflated. A shipped file holds
no optimizer state (it is saved from the model loaded with compile=False).
"""
import os
import tempfile
import zipfile

import keras
import numpy as np

from kernelzoo.zoo import evaluation, registry
from kernelzoo.zoo.training import CONFIG_FILE, MODEL_FILE

MAX_FILE_BYTES, MAX_TOTAL_BYTES = 16 * 2 ** 20, 48 * 2 ** 20
# Weights not written to the file but recomputed when it loads, so equal to the source's up to rounding.
RECOMPUTED_ON_LOAD = ("/factor",)  # CKNConv2D's Nystrom factor


def deflate(source, target):
    """Copy the zip archive `source` to `target` with every member deflated (names, order and dates kept).

    `target` may be `source`: the archive is written beside it and renamed over it.
    """
    with zipfile.ZipFile(source) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    temporary = f"{target}.tmp"
    with zipfile.ZipFile(temporary, "w") as archive:
        for info, data in members:
            packed = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            packed.external_attr = info.external_attr
            archive.writestr(packed, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    os.replace(temporary, target)


def shipped_sizes(replacing=None):
    """{name: bytes} of every shipped weight file; `replacing` (name, bytes) counts a file about to be written."""
    sizes = {name: os.path.getsize(registry.weights_path(name)) for name in registry.list_models(pretrained=True)}
    if replacing is not None:
        sizes[replacing[0]] = replacing[1]
    return sizes


def check_budget(sizes):
    """The total bytes of `sizes`; ValueError naming the file or the total over the weight budget (at most its
    limit is allowed)."""
    name, largest = max(sizes.items(), key=lambda item: item[1])
    if largest > MAX_FILE_BYTES:
        raise ValueError(f"{name}: {largest / 2 ** 20:.2f} MiB, the limit is {MAX_FILE_BYTES / 2 ** 20:.0f} MiB a file")
    total = sum(sizes.values())
    if total > MAX_TOTAL_BYTES:
        raise ValueError(f"the shipped weights would total {total / 2 ** 20:.2f} MiB, the limit is "
                         f"{MAX_TOTAL_BYTES / 2 ** 20:.0f} MiB: host larger weights outside the repository")
    return total


def target_path(name):
    """Where `name`'s weights ship: its preset's `weights`, else `<name>.keras`, in its family's folder."""
    preset = registry.info(name)
    return os.path.join(registry.folder(preset), preset.weights or f"{name}.keras")


def ship(model_path, name, target=None):
    """Write the model at `model_path` (a .keras file or a run folder) as `name`'s shipped weights.

    `target` (default `target_path(name)`) is where the file goes, counted as `name`'s in the budget.
    The file is checked before it replaces anything: a run folder's preset, the preset's input shape and class
    count, the source's weights, and the budget with it counted. Returns (path, sha256, bytes, the shipped
    weights' total bytes with it).
    """
    if os.path.isdir(model_path):
        model_path = os.path.join(model_path, MODEL_FILE)
    if not os.path.isfile(model_path):
        raise ValueError(f"model_path={model_path!r} is neither a .keras file nor a run folder holding {MODEL_FILE}")
    preset = registry.info(name)
    check_run_preset(model_path, preset)
    model = keras.models.load_model(model_path, compile=False)
    check_model_fits(model, model_path, preset)
    target = target or target_path(name)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(target)) as folder:
        staged = os.path.join(folder, os.path.basename(target))
        model.save(staged)
        deflate(staged, staged)
        _check_same_weights(model, keras.models.load_model(staged, compile=False), model_path)
        total = check_budget(shipped_sizes(replacing=(name, os.path.getsize(staged))))
        os.replace(staged, target)
    return target, registry.sha256(target), os.path.getsize(target), total


def check_run_preset(model_path, preset):
    """ValueError naming both presets when `model_path` sits in a run folder whose config.json trained another."""
    from kernelzoo.zoo.evaluation import run_config
    trained = (run_config(model_path) or {}).get("preset", preset.name)
    if trained != preset.name:
        raise ValueError(f"model_path={model_path!r} is a run of preset {trained!r} (its {CONFIG_FILE}), not of "
                         f"{preset.name!r}: ship it as {trained!r}, or train {preset.name!r}")


def check_model_fits(model, model_path, preset):
    """ValueError when the model does not take the preset's inputs or (a classifier) score its classes."""
    if tuple(model.input_shape[1:]) != tuple(preset.inputs.shape):
        raise ValueError(f"model_path={model_path!r} takes inputs {tuple(model.input_shape[1:])}, "
                         f"{preset.name!r} takes {tuple(preset.inputs.shape)}")
    if preset.task == "classification":
        evaluation.check_scores(model, preset.class_names, repr(preset.name), hint=f" (model_path={model_path!r})")


def _check_same_weights(model, shipped, model_path):
    """Equal weights; those a layer recomputes on load (a CKN's Nystrom factor) up to float32 rounding."""
    def same(ours, theirs):
        a, b = keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs)
        if ours.path.endswith(RECOMPUTED_ON_LOAD):
            return np.allclose(a, b, rtol=1e-6, atol=1e-7)
        return np.array_equal(a, b)

    pairs = list(zip(model.weights, shipped.weights))
    if len(model.weights) != len(shipped.weights) or not all(a.path == b.path and same(a, b) for a, b in pairs):
        raise RuntimeError(f"the file written from {model_path} does not hold its weights")


def add_arguments(parser, command):
    parser.add_argument("model", metavar="RUN_DIR|FILE.keras", help="the trained model (a run folder's model.keras)")
    parser.add_argument("name", help="the zoo name it ships as (`kernelzoo list`)")


def run(args, command):
    path, digest, size, total = ship(args.model, args.name)
    print(f"wrote {path}: {size / 2 ** 20:.2f} MiB, sha256 {digest}")
    print(f"shipped weights with it: {total / 2 ** 20:.2f} of {MAX_TOTAL_BYTES / 2 ** 20:.0f} MiB")
    print(f'set in its preset: weights="{os.path.basename(path)}", sha256="{digest}", and `measured` from '
          f"`kernelzoo eval {args.name} --data-dir DATA`")
    return 0
