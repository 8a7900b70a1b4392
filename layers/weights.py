"""A model's layers, and setting its weights so that layers holding state derived from them use the new values."""
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
    for leaf in leaf_layers(layer):
        if isinstance(leaf, keras.layers.Normalization) and leaf.built:
            leaf.finalize_state()


def leaf_layers(layer):
    """The layers of `layer` (a model: in order, those of nested models in their place; a layer: itself)."""
    if not hasattr(layer, "layers"):
        yield layer
        return
    for inner in layer.layers:
        yield from leaf_layers(inner)
