"""kernelzoo.zoo: the papers' networks, their recipes and pretrained weights, one family per folder.

`list_models(pattern=None, pretrained=None)`, `create(name, **overrides)`, `load(name)`,
`card(name)` and `info(name)` (the typed `Preset`) work for every family. Importing the
package registers every family's Keras objects, so every saved zoo model loads with
`keras.models.load_model` after `import kernelzoo`.

`finetune(model, train_ds, val_ds, num_classes, ...)` is the function (the module of the same
name, with the head replacement and input adaptation, is `kernelzoo.zoo.finetune` in sys.modules).
"""
import importlib

from kernelzoo.zoo.evaluation import measure, preset_of, test_split
from kernelzoo.zoo.finetune import finetune  # the function shadows its module as an attribute
from kernelzoo.zoo.inputs import input_spec, takes_raw_pixels
from kernelzoo.zoo.preset import CIFAR10_CLASSES, MNIST_CLASSES, DatasetSpec, Figure, InputSpec, Preset
from kernelzoo.zoo.registry import FAMILIES, card, create, info, list_models, load

for _family in FAMILIES:  # registers each family's Keras layers and losses
    importlib.import_module(f"kernelzoo.zoo.{_family}")

__all__ = ["list_models", "create", "load", "card", "info", "measure", "test_split", "preset_of", "finetune",
           "input_spec", "takes_raw_pixels", "Preset", "InputSpec", "DatasetSpec", "Figure", "FAMILIES",
           "CIFAR10_CLASSES", "MNIST_CLASSES"]
