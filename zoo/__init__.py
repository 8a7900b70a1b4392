"""kernelzoo.zoo: the papers' networks, their recipes and pretrained weights.

Importing it registers the zoo's own Keras objects (preprocessing layers, the
SimNet baselines' layers, the MovieLens loss), so every saved zoo model loads
with `keras.models.load_model` after `import kernelzoo`.

`finetune(model, train_ds, val_ds, num_classes, ...)` is the function (the module of the same
name, with the head replacement and input adaptation, is `kernelzoo.zoo.finetune` in sys.modules).
"""
from kernelzoo.zoo import data, init, preprocessing, simnet, training
from kernelzoo.zoo.finetune import finetune  # the function shadows its module as an attribute
from kernelzoo.zoo.kernelnet import movielens
from kernelzoo.zoo.registry import card, create, list_models, load

__all__ = ["list_models", "create", "load", "card", "finetune", "data", "init", "preprocessing", "training",
           "simnet", "movielens"]
