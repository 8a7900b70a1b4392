"""Mixed precision for training recipes: Keras's global dtype policy for a run, and the float32 model it saves.

"mixed_bfloat16" computes in bfloat16 with float32 variables (oneDNN runs the convolutions and matmuls on AMX
where the CPU has it); layers may keep parts in float32 (CKNConv2D: all but its patch-anchor products). The
recipes that offer it (spatial contrasting, supervised CKN, the tutorial CNN, the SimNet family) take
`MixedPrecisionMixin`, so they save a float32 model.
"""
import contextlib
import warnings

import keras

from kernelzoo.layers.weights import set_weights
from kernelzoo.ops.checks import check_choice
from kernelzoo.ops.library import cpu_flags
from kernelzoo.zoo import training

PRECISIONS = ("float32", "mixed_bfloat16")
BFLOAT16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo: the CPU computes bfloat16 natively


def warn_if_emulated(name):
    """Warn when `name` is "mixed_bfloat16" but neither a GPU nor the CPU computes bfloat16 natively: oneDNN then
    emulates it, usually slower than float32 (`kernelzoo bench ckn` / `bench sc` show the ratio on a machine)."""
    if check_choice("precision", name, PRECISIONS) != "mixed_bfloat16" or cpu_flags() & set(BFLOAT16_CPU_FLAGS):
        return
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        warnings.warn(f"precision 'mixed_bfloat16' on a CPU without {' or '.join(BFLOAT16_CPU_FLAGS)} and no GPU: "
                      "bfloat16 is emulated, usually slower than float32 (measure with `kernelzoo bench ckn`)",
                      RuntimeWarning, stacklevel=2)


@contextlib.contextmanager
def dtype_policy(name):
    """Keras's global dtype policy set to any policy `name` (a string or a `keras.DTypePolicy`) inside the block,
    the previous one restored after it."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def precision_policy(name):
    """`dtype_policy` for a training precision: `name` is "float32" or "mixed_bfloat16"."""
    return dtype_policy(check_choice("precision", name, PRECISIONS))


def float32_copy(model):
    """An uncompiled copy of the functional `model` with every layer computing in float32 (the same weights): what
    a mixed-precision run saves (uncompiled: no optimizer state of the run)."""
    config = model.get_config()
    _float32_layers(config)
    with precision_policy("float32"):  # the input layer follows the global policy
        copy = keras.Model.from_config(config)
    set_weights(copy, model.get_weights())
    return copy


def _float32_layers(config):
    """Every layer of a functional model's `config` set to compute in float32, inside nested models too."""
    for layer in config["layers"]:
        layer["config"]["dtype"] = "float32"
        if "layers" in layer["config"]:
            _float32_layers(layer["config"])


class MixedPrecisionMixin:
    """Recipe mixin (before `Recipe` in the bases): the `precision` hyper-parameter ("float32" by default;
    --precision), the run trained under its dtype policy, and model.keras saved as `saved_model` of the result
    (a float32 copy after a mixed-precision run)."""

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--precision", choices=PRECISIONS, default=None,
                            help="float32 or Keras mixed_bfloat16 (the saved model is float32)")

    def hyperparameters(self, preset, **changes):
        hp = {"precision": "float32", **super().hyperparameters(preset, **changes)}
        check_choice("precision", hp["precision"], PRECISIONS)
        return hp

    def train_run(self, preset, data, out_dir, *, hp=None, **kwargs):
        hp = self.hyperparameters(preset) if hp is None else hp
        warn_if_emulated(hp["precision"])
        with precision_policy(hp["precision"]):
            return super().train_run(preset, data, out_dir, hp=hp, **kwargs)

    def fit(self, model, data, out_dir, hp, **kwargs):
        """The recipe's fit; model.keras and the returned model are then `saved_model` of the trained one."""
        result = super().fit(model, data, out_dir, hp, **kwargs)
        final = self.saved_model(result["model"], hp)
        if final is not result["model"]:
            training.save_model(final, result["model_path"])
            result["model"] = final
        return result

    def saved_model(self, model, hp):
        """What model.keras holds: `model`, or after a mixed-precision run its compiled float32 copy."""
        return model if hp["precision"] == "float32" else self.compile(float32_copy(model), hp)
