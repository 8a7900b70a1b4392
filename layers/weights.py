"""Setting a model's weights so that layers holding state derived from them use the new values."""
import keras


def set_weights(model, weights):
    """`model.set_weights(weights)`, then the statistics its adapted layers derive from their weights.

    keras.layers.Normalization computes with tensors that `finalize_state` derives from its mean and variance
    variables: `set_weights` alone leaves it normalising with the statistics it had (0 and 1 in a fresh copy).
    """
    model.set_weights(weights)
    finalize_adapted(model)


def finalize_adapted(layer):
    """`finalize_state` on every Normalization layer of `layer` (a layer or a model, nested models included)."""
    for inner in getattr(layer, "layers", ()):
        finalize_adapted(inner)
    if isinstance(layer, keras.layers.Normalization) and layer.built:
        layer.finalize_state()
