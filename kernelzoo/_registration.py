"""Keras learns kernelzoo's saved objects without `import kernelzoo` importing Keras or the zoo.

`keras.models.load_model` finds a custom object by its registered name ("kernelzoo>Similarity")
in Keras's global registry, so the names must be there before a model is loaded. Importing the
defining modules at `import kernelzoo` would import TensorFlow (the CLI must set TF's log level
first) and the zoo (`import kernelzoo.ops` must stay light). Instead, as soon as Keras is
imported, a stand-in is registered under each name below; the first time Keras deserialises
one, the stand-in imports the module that defines it, whose own registration replaces it.
"""
import importlib
import importlib.abc
import importlib.util
import sys

PACKAGE = "kernelzoo"
# Every object registered with @keras.saving.register_keras_serializable(package="kernelzoo"),
# by the module that registers it (tests/test_registration.py keeps this complete).
CLASSES = {
    "Similarity": "kernelzoo.layers.similarity",
    "Mex": "kernelzoo.layers.mex",
    "MinValue": "kernelzoo.layers.constraints",
    "KernelDense": "kernelzoo.layers.kernel_dense",
    "SparseKernelDense": "kernelzoo.layers.kernel_dense",
    "Grid2D": "kernelzoo.layers.kernels",
    "SparsifyingActivation": "kernelzoo.layers.sparsify",
    "CKNConv2D": "kernelzoo.layers.ckn",
    "FusedBatchNormalization": "kernelzoo.layers.batch_norm",
    "QuadrantPooling": "kernelzoo.zoo.simnet.models",
    "ClassCentering": "kernelzoo.zoo.simnet.models",
    "TriangleCoding": "kernelzoo.zoo.simnet.models",
    "BrightnessContrastNormalization": "kernelzoo.zoo.simnet.preprocessing",
    "PatchWhitening": "kernelzoo.zoo.simnet.preprocessing",
    "PerImageWhitening": "kernelzoo.zoo.ckn.preprocessing",
    "ImageWhitening": "kernelzoo.zoo.ckn.preprocessing",
    "CentroidConv2D": "kernelzoo.zoo.layerwise.layers",
    "PerImageStandardization": "kernelzoo.zoo.layerwise.layers",
    "LocalResponseNormalization": "kernelzoo.zoo.layerwise.layers",
    "RandomShiftFlip": "kernelzoo.zoo.augment",
    "AdamW": "kernelzoo.zoo.recipe",
}
FUNCTIONS = {
    "masked_rating_loss": "kernelzoo.zoo.kernelnet.movielens",
    "pixel_crossentropy": "kernelzoo.zoo.kernelnet.embedding",
    "pixel_squared_error": "kernelzoo.zoo.kernelnet.embedding",
    "one_vs_rest_squared_hinge": "kernelzoo.zoo.linear_classifier",
}


def install():
    """Register the stand-ins now if Keras is imported, else right after it is."""
    if "keras" in sys.modules:
        register_stand_ins()
    elif not any(isinstance(finder, _AfterKerasImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterKerasImport())


def register_stand_ins():
    """A stand-in for every kernelzoo name that Keras does not know yet."""
    import keras

    known = keras.saving.get_custom_objects()
    for names, make in ((CLASSES, _ClassStandIn), (FUNCTIONS, _function_stand_in)):
        for name, module in names.items():
            if f"{PACKAGE}>{name}" not in known:
                keras.saving.register_keras_serializable(package=PACKAGE, name=name)(make(name, module))


def resolve(name, module, stand_in=None):
    """The real object registered as kernelzoo>`name`, importing `module` (which registers it)."""
    import keras

    importlib.import_module(module)
    obj = keras.saving.get_custom_objects().get(f"{PACKAGE}>{name}")
    if obj is None or obj is stand_in:
        raise ImportError(f"{module} does not register the Keras object {PACKAGE}>{name}")
    return obj


class _ClassStandIn:
    """Takes a kernelzoo class's place in Keras's registry until a saved model needs it."""

    def __init__(self, name, module):
        self.name, self.module = name, module

    def from_config(self, config, *args, **kwargs):
        return resolve(self.name, self.module, self).from_config(config, *args, **kwargs)

    def __call__(self, *args, **kwargs):
        return resolve(self.name, self.module, self)(*args, **kwargs)

    def __repr__(self):
        return f"<stand-in for {self.module}.{self.name}>"


def _function_stand_in(name, module):
    """A function that imports and calls the real registered function (Keras stores functions as is)."""

    def stand_in(*args, **kwargs):
        return resolve(name, module, stand_in)(*args, **kwargs)

    stand_in.__name__ = stand_in.__qualname__ = name
    stand_in.__module__ = module
    return stand_in


class _AfterKerasImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of `keras` so the stand-ins register once it has run."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            register_stand_ins()

        spec.loader.exec_module = exec_then_register
        return spec
