"""Parameter and multiply-accumulate counts of a model (Muller 2018, Table 4)."""
import keras
import numpy as np

from kernelzoo.layers.kernel_dense import KernelDense, SparseKernelDense
from kernelzoo.layers.weights import leaf_layers
from kernelzoo.ops.checks import float_in_range

COUNTED = (KernelDense, SparseKernelDense, keras.layers.Dense, keras.layers.Conv2D)
# At inference an affine map folded into the layer before it: no MACs of its own.
FOLDED = (keras.layers.BatchNormalization,)


def _nonzero(kernel):
    return int(np.count_nonzero(keras.ops.convert_to_numpy(kernel)))


def _macs(layer, density):
    """Expected MACs of one counted layer per example, its inputs non-zero with probability `density`."""
    if isinstance(layer, (KernelDense, SparseKernelDense)):
        return layer.expected_macs(density)
    if isinstance(layer, keras.layers.Conv2D):  # each non-zero kernel entry once per output position
        shape = layer.output.shape
        positions = np.prod(shape[1:-1] if layer.data_format == "channels_last" else shape[2:])
        return density * _nonzero(layer.kernel) * int(positions)
    return density * _nonzero(layer.kernel)


def cost_report(model, input_density=1.0):
    """{"params": trainable scalars, "macs": expected MACs per example}.

    The first counted layer's MACs are scaled by `input_density` (the expected fraction of non-zero inputs,
    Table 4 assumes 10 rated items); kernel layers count their non-zero effective weights, Dense and Conv2D
    their non-zero kernel entries (Conv2D: at each output position). Only these layers are counted: a model
    with other layers holding weights (a Similarity, a MEX, ...) is refused (ValueError naming their types)
    rather than given too low a count; batch normalisation (folded into the layer before it at inference) and
    layers without floating-point weights (pooling, activations, reshaping; a RandomShiftFlip, whose only weight
    is its call counter) count no MACs.
    """
    input_density = float_in_range(input_density, "input_density", 0.0, 1.0)
    layers = list(leaf_layers(model))
    unknown = sorted({type(layer).__name__ for layer in layers if not isinstance(layer, COUNTED + FOLDED)
                      and any(keras.backend.is_float_dtype(w.dtype) for w in layer.weights)})
    if unknown:
        raise ValueError(f"`model` {model.name!r}: cannot count the MACs of its {', '.join(unknown)} layers (only "
                         f"{', '.join(kind.__name__ for kind in COUNTED)} are counted)")
    params = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    counted = [layer for layer in layers if isinstance(layer, COUNTED)]
    macs = sum(_macs(layer, input_density if i == 0 else 1.0) for i, layer in enumerate(counted))
    return {"params": params, "macs": float(macs)}
