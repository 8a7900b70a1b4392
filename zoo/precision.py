"""Mixed precision for training recipes: Keras's global dtype policy for a run, and the float32 model it saves.

"mixed_bfloat16" computes in bfloat16 with float32 variables (oneDNN runs the convolutions and matmuls on AMX
where the CPU has it); layers may keep parts in float32 (CKNConv2D: all but its patch-anchor products). The
recipes that offer it (spatial contrasting, supervised CKN) save a float32 model.
"""
import contextlib

import keras

from kernelzoo.ops.checks import check_choice

PRECISIONS = ("float32", "mixed_bfloat16")


@contextlib.contextmanager
def precision_policy(name):
    """Keras's global dtype policy set to `name` ("float32" or "mixed_bfloat16") inside the block."""
    name = check_choice("precision", name, PRECISIONS)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def float32_copy(model):
    """An uncompiled copy of the functional `model` with every layer computing in float32 (the same weights): what
    a mixed-precision run saves (uncompiled: no optimizer state of the run)."""
    config = model.get_config()
    for layer in config["layers"]:
        layer["config"]["dtype"] = "float32"
    with precision_policy("float32"):  # the input layer follows the global policy
        copy = keras.Model.from_config(config)
    copy.set_weights(model.get_weights())
    return copy
