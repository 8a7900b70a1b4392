"""What a model takes, read off its own layers: the input spec that export and fine-tuning use.

A model takes raw 0-255 pixels when its first layer, after any Keras augmentation layers (RandomFlip,
RandomCrop, ..., RandAugment, MixUp: they pass on whatever range they get), is preprocessing: a Keras
preprocessing layer (Rescaling, Normalization, Resizing, ...) or a layer whose class sets
`reads_raw_pixels = True` (the SimNet family's PatchWhitening and BrightnessContrastNormalization).
Every zoo image model starts with one.
"""
import keras
import numpy as np

from kernelzoo.zoo.preset import InputSpec

_KERAS_PREPROCESSING = "keras.src.layers.preprocessing"
_KERAS_AUGMENTATION = ("RandAugment", "AugMix", "MixUp", "CutMix")  # and every Random* layer


def takes_raw_pixels(model):
    """Whether `model` reads 0-255 pixel values (its first layer after any augmentation is preprocessing)."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    layer = next((layer for layer in layers if not _keras_augmentation(layer)), None)
    return layer is not None and (_keras_preprocessing(layer) or bool(getattr(layer, "reads_raw_pixels", False)))


def _keras_preprocessing(layer):
    return type(layer).__module__.startswith(_KERAS_PREPROCESSING)


def _keras_augmentation(layer):
    name = type(layer).__name__
    return _keras_preprocessing(layer) and (name.startswith("Random") or name in _KERAS_AUGMENTATION)


def input_spec(model):
    """The InputSpec of a built single-input model: its input shape, uint8 when it takes raw pixels."""
    if not isinstance(model, keras.Model) or len(model.inputs) != 1:
        raise ValueError(f"`model` must be a built single-input keras.Model, got {type(model).__name__}")
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ValueError(f"`model` {model.name!r} has an input of unknown size {shape}")
    image = len(shape) >= 2
    return InputSpec(shape, "uint8" if image and takes_raw_pixels(model) else "float32")


def as_model_input(images, model):
    """`images` reshaped to the model's input shape when only a unit channel axis differs.

    (N, 28, 28, 1) MNIST arrays feed (28, 28) models and back; other mismatches raise.
    """
    images = np.asarray(images)
    shape = tuple(model.inputs[0].shape[1:])
    if images.shape[1:] == shape:
        return images
    if int(np.prod(images.shape[1:])) == int(np.prod(shape)) and _squeeze(images.shape[1:]) == _squeeze(shape):
        return images.reshape((len(images),) + shape)
    raise ValueError(f"`images` of shape {images.shape[1:]} do not fit the input {shape} of {model.name!r}")


def _squeeze(shape):
    return tuple(d for d in shape if d != 1)
