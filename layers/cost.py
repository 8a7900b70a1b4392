"""Parameter and multiply-accumulate counts of a model (Muller 2018, Table 4)."""
import keras
import numpy as np

from kernelzoo.layers.kernel_dense import KernelDense, SparseKernelDense
from kernelzoo.ops.checks import float_in_range


def _dense_layers(model):
    """Dense-like layers in model order (descending into nested models)."""
    for layer in getattr(model, "layers", ()):
        if isinstance(layer, (KernelDense, SparseKernelDense, keras.layers.Dense)):
            yield layer
        else:
            yield from _dense_layers(layer)


def cost_report(model, input_density=1.0):
    """{"params": trainable scalars, "macs": expected MACs per example}.

    The first dense-like layer's MACs are scaled by `input_density` (the
    expected fraction of non-zero inputs, Table 4 assumes 10 rated items);
    kernel layers count their non-zero effective weights, Dense all weights.
    """
    input_density = float_in_range(input_density, "input_density", 0.0, 1.0)
    params = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    macs = 0.0
    for i, layer in enumerate(_dense_layers(model)):
        density = input_density if i == 0 else 1.0
        if isinstance(layer, keras.layers.Dense):
            nonzero = int(np.count_nonzero(keras.ops.convert_to_numpy(layer.kernel)))
            macs += density * nonzero
        else:
            macs += layer.expected_macs(density)
    return {"params": params, "macs": macs}
