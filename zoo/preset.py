"""The typed preset: everything needed to build, train, evaluate and use one zoo model.

A `Preset` plays the role of timm's pretrained config: the builder and its config,
what the model takes (`InputSpec`), the task and its metric, the dataset and its
evaluation protocol, the training hyper-parameters its card states, the weight file
with its SHA-256, the card, and the measured figure beside the paper's. Presets
validate when they are built, so a family whose presets are wrong fails at import.
"""
import dataclasses
import re
import types
from collections.abc import Mapping

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
CIFAR10_JPEG_TEST = "CIFAR-10 (JPEG q75 copy) test, 10,000 images"  # what our CIFAR-10 figures are measured on
# task -> the metric its card figures use (a reconstruction's: the mean squared error on pixels / 255).
TASKS = {"classification": "accuracy", "rating_prediction": "rmse", "reconstruction": "mse"}
INPUT_DTYPES = ("uint8", "float32")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PresetError(ValueError):
    """A preset field is missing or malformed; the message names the preset and the field."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the model takes, per example: `shape` (no batch axis) and `dtype`.

    "uint8" means raw 0-255 pixels (any scaling is a layer saved in the model); "float32"
    is for non-image inputs such as a vector of ratings.
    """

    shape: tuple
    dtype: str = "uint8"
    note: str = ""

    def __post_init__(self):
        shape = tuple(self.shape) if isinstance(self.shape, (tuple, list)) else None
        if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
            raise PresetError(f"InputSpec: `shape` must be a non-empty tuple of positive ints, got {self.shape!r}")
        if self.dtype not in INPUT_DTYPES:
            raise PresetError(f"InputSpec: `dtype` must be one of {INPUT_DTYPES}, got {self.dtype!r}")
        object.__setattr__(self, "shape", shape)

    @property
    def raw_pixels(self):
        return self.dtype == "uint8"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """The dataset: its loader / tfds `name`, the `local` copy read under --data-dir, and `split`.

    `split` is the evaluation protocol of the card figure: "test" (the test split) or, for
    MovieLens-100K, "u1".."u5" (train on uN.base, measure on uN.test).
    """

    name: str
    local: str
    split: str = "test"

    def __post_init__(self):
        for field in ("name", "local", "split"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field):
                raise PresetError(f"DatasetSpec: `{field}` must be a non-empty string, got {getattr(self, field)!r}")


@dataclasses.dataclass(frozen=True)
class Figure:
    """A result: `value` (a fraction for accuracy), `upper` for a range, and `where` it comes from."""

    value: float
    where: str = ""
    upper: float = None

    def __post_init__(self):
        for field in ("value", "upper"):
            number = getattr(self, field)
            if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))):
                raise PresetError(f"Figure: `{field}` must be a number, got {number!r}")

    def format(self, metric):
        """"98.23 %" for accuracy, "0.9071" for RMSE; "a-b" for a range."""
        show = (lambda v: f"{100 * v:.2f} %") if metric == "accuracy" else (lambda v: f"{v:.4f}")
        return show(self.value) if self.upper is None else f"{show(self.value)} - {show(self.upper)}"


@dataclasses.dataclass(frozen=True)
class Preset:
    """One zoo model. `builder` is a dotted path inside its family's package; `recipe` holds the
    training hyper-parameters its card states (read by the family's recipe hooks)."""

    name: str
    family: str
    builder: str
    config: Mapping
    description: str
    inputs: InputSpec
    task: str
    dataset: DatasetSpec
    recipe: Mapping
    card: str
    class_names: tuple = None
    weights: str = None
    sha256: str = None
    measured: Figure = None
    paper: Figure = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise PresetError(f"preset `name` must be lower_snake_case, got {self.name!r}")
        self._require(isinstance(self.family, str) and _NAME.match(self.family), "family", "a lower_snake_case name")
        self._require(isinstance(self.builder, str) and self.builder.startswith(f"kernelzoo.zoo.{self.family}.")
                      and self.builder.count(".") >= 4, "builder", f"a dotted path in kernelzoo.zoo.{self.family}")
        for field in ("config", "recipe"):
            value = getattr(self, field)
            self._require(isinstance(value, Mapping) and all(isinstance(k, str) for k in value), field,
                          "a mapping with string keys")
            object.__setattr__(self, field, types.MappingProxyType(dict(value)))
        self._require(isinstance(self.description, str) and self.description, "description", "a non-empty string")
        self._require(isinstance(self.inputs, InputSpec), "inputs", "an InputSpec")
        self._require(self.task in TASKS, "task", f"one of {tuple(TASKS)}")
        self._require(isinstance(self.dataset, DatasetSpec), "dataset", "a DatasetSpec")
        self._require(isinstance(self.card, str) and self.card.endswith(".md"), "card", "a .md file name")
        if self.task == "classification":
            names = self.class_names
            self._require(isinstance(names, (tuple, list)) and len(names) >= 2
                          and all(isinstance(c, str) and c for c in names), "class_names",
                          "two or more class names (a classification preset)")
            object.__setattr__(self, "class_names", tuple(names))
        else:
            self._require(self.class_names is None, "class_names", f"None for task {self.task!r}")
        self._require((self.weights is None) == (self.sha256 is None), "sha256", "given exactly when weights are")
        if self.weights is not None:
            self._require(isinstance(self.weights, str) and self.weights.endswith(".keras"), "weights",
                          "a .keras file name")
            self._require(isinstance(self.sha256, str) and _SHA256.match(self.sha256), "sha256",
                          "64 lower-case hex digits")
        self._require(self.measured is None or (isinstance(self.measured, Figure) and self.weights is not None),
                      "measured", "a Figure of the shipped weights (None without weights)")
        self._require(self.paper is None or isinstance(self.paper, Figure), "paper", "a Figure or None")

    def _require(self, ok, field, what):
        if not ok:
            raise PresetError(f"preset {self.name!r}: `{field}` must be {what}, got {getattr(self, field)!r}")

    @property
    def metric(self):
        """"accuracy", "rmse" or "mse": the metric of the card figure (from the task)."""
        return TASKS[self.task]

    @property
    def pretrained(self):
        return self.weights is not None

