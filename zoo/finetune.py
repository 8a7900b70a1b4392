"""Fine-tuning a zoo model on a new image dataset: `finetune(model, train_ds, val_ds, num_classes, ...)`.

What it does to the model (the input model is left untouched; its layers are cloned):

- **Input adaptation, as layers saved in the model.** The fine-tuned model takes the new
  dataset's raw uint8 pixels (N, H, W, C) as they are; the conversion to the pretrained
  model's input is a few stock Keras layers at its front (`adapt_*`), so the .keras file,
  the SavedModel and the ONNX export all take the new images directly:
  `adapt_scale` (Rescaling: x 1 for models that take raw 0-255 pixels, as every zoo model does,
  x 1/255 for models whose first layer is not preprocessing and so read [0, 1] values;
  `kernelzoo.zoo.takes_raw_pixels` tells them apart), `adapt_channels` (a fixed, non-trainable 1x1
  convolution: grey -> RGB by replication, RGB -> grey by ITU-R BT.601 luma 0.299 R + 0.587 G + 0.114 B, other counts
  by averaging), `adapt_pad` / `adapt_crop` (centred zero padding to a larger input, e.g.
  MNIST 28x28 -> 32x32 for a SimNet, the black MNIST background; centred cropping to a smaller
  one, e.g. CIFAR 32x32 -> 28x28 for a kernelNet) or `adapt_resize` (bilinear, spatial="resize"),
  and `adapt_reshape` to drop the channel axis of (28, 28) models. The first layer is always
  the Rescaling, so exports get a uint8 signature (docs/export.md).
- **Head replacement** for the new class count, fresh weights, the rest copied:
  the final Dense (kernelNet MNIST classifiers, ConvNet and Coates baselines; its activation,
  softmax or none, is kept) or, for the SimNet patch-labeling network, the class-wise MEX
  (`mex_templates`: one instance per class, new offsets initialised at zero; the Similarity
  templates and weights and the whitening are kept, as are the layers after it), or, for the
  spatial-contrasting (SC) networks, the last Conv2D with one filter per class followed only by
  per-channel layers up to the output (`conv3_2` of `sc_mnist`: 1x1 conv, BN, ReLU, global average
  pooling): a Conv2D with the new class count (same kernel size, strides, padding, activation) and
  fresh per-channel layers after it (a new batch normalisation; names kept).
- **freeze**: "features" trains only the head (for a SimNet: the class-wise MEX offsets, and
  its xi when learned; for an SC network: the new conv and its batch normalisation); "none" trains
  every layer (the fixed adapter and layers that were never trainable stay so).
- **Training** with the zoo recipe (`kernelzoo.zoo.training.train`): SGD with momentum,
  lr / 10 after half the epochs, fixed data order per (seed, epoch), checkpoints and log.csv in
  `out_dir`; then accuracy on the validation (and test) split. No augmentation: the source model's
  RandomShiftFlip becomes an identity of the same name.

`from_scratch=True` builds the same adapted architecture with freshly initialised weights
(plus the unsupervised initialisation on the training images: k-means anchors for CKN layers,
which stay frozen, and that of SimNet-type layers) and trains the rest of it (every layer that
trains by gradient) with the same budget: the baseline fine-tuning is measured against.

The CLI hooks (`kernelzoo finetune`) are in `kernelzoo.zoo.finetune_cli`.
"""
import functools
import os
import shutil
import tempfile

import keras
import numpy as np

from kernelzoo.layers.weights import set_weights
from kernelzoo.ops.checks import (check_choice, float_in_range, image_batch, image_shape, int_in_range, positive_float,
                                  positive_int)
from kernelzoo.zoo.augment import RandomShiftFlip
from kernelzoo.zoo.inputs import takes_raw_pixels
from kernelzoo.zoo.recipe import DEFAULTS, Recipe

FREEZE_MODES = ("features", "none")
SPATIAL_MODES = ("pad_crop", "resize")
LUMA = (0.299, 0.587, 0.114)
ADAPTER_PREFIX = "adapt_"
INIT_IMAGES = 5000  # training images the from-scratch baseline's unsupervised initialisation sees at most


# ----------------------------------------------------------------------------- head


def find_head(model):
    """(head layer, kind) of a zoo classifier: kind "dense" (final Dense), "mex" (class-wise MEX) or "conv" (the
    last Conv2D with one filter per class, followed only by per-channel layers to the output: a spatial-contrasting
    network's "1x1 conv classes, BN, ReLU, global average pooling").

    Raises ValueError naming the model's last layer when none is recognisable.
    """
    from kernelzoo.layers import Mex

    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model, got {type(model).__name__}")
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not layers:
        raise ValueError(f"`model` {model.name!r} has no layers")
    last = layers[-1]
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise ValueError(f"`model` {model.name!r} must have one (batch, classes) output to fine-tune; its last "
                         f"layer {last.name!r} ({type(last).__name__}) outputs {_shapes(model.outputs)}")
    classes = model.outputs[0].shape[-1]
    if isinstance(last, keras.layers.Dense):
        return last, "dense"
    for layer in reversed(layers):
        if isinstance(layer, Mex) and layer.num_instances > 1 and layer.num_instances == classes:
            return layer, "mex"
    conv = _class_conv(model.outputs[0], classes)
    if conv is not None:
        return conv, "conv"
    raise ValueError(f"`model` {model.name!r} has no recognisable classification head: its last layer "
                     f"{last.name!r} ({type(last).__name__}) is not a Dense layer, no Mex layer has one "
                     f"instance per class ({classes}), and no Conv2D with one filter per class is followed only by "
                     f"per-channel layers (batch normalization, activation, global pooling) up to the output")


# Layers that act on each channel (class) of a class-wise Conv2D on its own, or across the class axis only:
# what may follow the "conv" head up to the output (they are rebuilt, fresh, for the new class count).
PER_CHANNEL_LAYERS = (keras.layers.BatchNormalization, keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU,
                      keras.layers.Activation, keras.layers.Softmax, keras.layers.Dropout, keras.layers.Identity,
                      keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)


def _class_conv(output, classes):
    """The Conv2D with `classes` filters whose output reaches `output` through PER_CHANNEL_LAYERS only (a chain of
    one-input calls), or None."""
    tensor = output
    while True:
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        layer = history.operation
        inputs = layer._inbound_nodes[history.node_index].input_tensors  # the call that made `tensor`
        if isinstance(layer, keras.layers.Conv2D):
            if layer.filters == classes and layer.groups == 1 and layer.data_format == "channels_last":
                return layer
            return None
        if not isinstance(layer, PER_CHANNEL_LAYERS) or len(inputs) != 1:
            return None
        axis = getattr(layer, "axis", -1)  # BN and Softmax: on the channel (class) axis only
        if axis not in (-1, len(inputs[0].shape) - 1) or getattr(layer, "data_format", None) == "channels_first":
            return None
        tensor = inputs[0]


def _shapes(tensors):
    return [tuple(t.shape) for t in tensors]


def _new_head(head, kind, num_classes):
    config = head.get_config()
    if kind == "dense":
        config["units"] = num_classes
    elif kind == "conv":  # same kernel size, strides, padding, activation, bias and regularizers
        config["filters"] = num_classes
    else:
        config["num_instances"] = num_classes
        xi = config.get("xi")
        if getattr(head, "xi_variable", None) is not None:  # learned xi: start the new instances at its mean
            config["xi"] = float(np.mean(keras.ops.convert_to_numpy(head.xi_variable)))
        elif isinstance(xi, (list, tuple)):  # one xi per instance: start all new instances at their mean
            config["xi"] = float(np.mean(xi))
    config["trainable"] = True
    return head.__class__.from_config(config)


# ----------------------------------------------------------------------------- input adaptation


def _target_shape(model):
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape) or len(shape) not in (2, 3):
        raise ValueError(f"`model` {model.name!r} must take images of a fixed shape (H, W) or (H, W, C), "
                         f"got input shape {shape}")
    return shape


def _adapter_name(suffix, taken):
    """adapt_<suffix>, or adapt_<suffix>_2, _3, ... when `taken` has it (a fine-tuned model's own adapter)."""
    name, count = ADAPTER_PREFIX + suffix, 1
    while name in taken:
        count += 1
        name = f"{ADAPTER_PREFIX}{suffix}_{count}"
    return name


def input_adapter(x, source_shape, target_shape, raw_pixels, spatial="pad_crop", taken=()):
    """Apply the adapter layers (module docstring) to tensor `x` of shape source_shape; returns the tensor.

    `taken`: the layer names the adapted model already has; the adapter's layers get other ones.
    """
    spatial = check_choice("spatial", spatial, SPATIAL_MODES)
    name = functools.partial(_adapter_name, taken=set(taken))
    height, width, channels = source_shape
    t_height, t_width = target_shape[:2]
    t_channels = target_shape[2] if len(target_shape) == 3 else 1
    x = keras.layers.Rescaling(1.0 if raw_pixels else 1.0 / 255.0, name=name("scale"))(x)
    if channels != t_channels:
        mixer = keras.layers.Conv2D(t_channels, 1, use_bias=False, trainable=False, name=name("channels"))
        x = mixer(x)
        if channels == 3 and t_channels == 1:
            matrix = np.asarray(LUMA, "float32").reshape(3, 1)
        else:
            matrix = np.full((channels, t_channels), 1.0 / channels, "float32")
        mixer.set_weights([matrix.reshape(1, 1, channels, t_channels)])
    if (height, width) != (t_height, t_width):
        if spatial == "resize":
            x = keras.layers.Resizing(t_height, t_width, interpolation="bilinear", name=name("resize"))(x)
        else:
            pad, crop = [], []
            for size, target in ((height, t_height), (width, t_width)):
                delta = target - size
                pad.append((max(delta, 0) // 2, max(delta, 0) - max(delta, 0) // 2))
                crop.append((max(-delta, 0) // 2, max(-delta, 0) - max(-delta, 0) // 2))
            if any(sum(p) for p in pad):
                x = keras.layers.ZeroPadding2D(tuple(pad), name=name("pad"))(x)
            if any(sum(c) for c in crop):
                x = keras.layers.Cropping2D(tuple(crop), name=name("crop"))(x)
    if len(target_shape) == 2:
        x = keras.layers.Reshape(tuple(target_shape), name=name("reshape"))(x)
    return x


# ----------------------------------------------------------------------------- the new model


def adapt_model(model, num_classes, input_shape, *, freeze="features", spatial="pad_crop", copy_weights=True):
    """A new model: input adapter + `model`'s layers (cloned, weights copied; augmentation dropped) + a new head.

    Args:
      model: a functional keras.Model classifier (find_head must recognise its head).
      num_classes: classes of the new dataset (>= 2).
      input_shape: (H, W, C) of the new dataset's images (uint8 pixel values).
      freeze: "features" (only the head and what follows it train) or "none".
      spatial: "pad_crop" or "resize" (how the image size is matched).
      copy_weights: False gives the same architecture freshly initialised (the from-scratch baseline).
    """
    freeze = check_choice("freeze", freeze, FREEZE_MODES)
    num_classes = int_in_range(num_classes, "num_classes", 2)
    source = image_shape(input_shape)
    head, kind = find_head(model)
    if isinstance(model, keras.Sequential):  # its layer graph as a functional model (same layers)
        model = keras.Model(model.inputs[0], model.outputs[0], name=model.name)
    if not hasattr(model, "_run_through_graph"):
        raise ValueError(f"`model` {model.name!r} must be a functional or Sequential keras.Model "
                         f"(got {type(model).__name__})")
    target = _target_shape(model)
    order = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    after_head = set(order[order.index(head) + 1:])
    # a class-wise conv's per-channel layers (its BN) have one weight per old class: rebuilt fresh, not copied
    fresh = after_head if kind == "conv" else set()
    clones = {}

    def operation_fn(layer):
        if isinstance(layer, RandomShiftFlip):  # fine-tuning has no augmentation (it would mirror digits)
            return keras.layers.Identity(name=layer.name)
        if layer is head:
            new = _new_head(head, kind, num_classes)
        else:
            new = layer.__class__.from_config(layer.get_config())
        clones[id(layer)] = (layer, new)
        return new

    inputs = keras.Input(source, name="image")
    x = input_adapter(inputs, source, target, takes_raw_pixels(model), spatial, [layer.name for layer in order])
    outputs = model._run_through_graph(x, operation_fn=operation_fn)
    new_model = keras.Model(inputs, outputs, name=f"{model.name}_finetuned_{num_classes}")
    for old, new in clones.values():
        if old is not head and old not in fresh and copy_weights and old.weights:
            set_weights(new, old.get_weights())
        if freeze == "features" and old is not head and old not in after_head:
            new.trainable = False
    return new_model


def _reinitialise_unsupervised(model, images, seed, verbose):
    """The unsupervised initialisation of the layers that have one, when the model has them: CKN anchors by
    spherical k-means (frozen, as the CKN recipes leave them), then SimNet-type layers (ZCA, GMM, k-means, an
    adaptable Normalization; one built with constants, as in the SC networks, keeps them), on
    INIT_IMAGES of `images` drawn at random (seeded): the first ones would follow a class-sorted dataset's order."""
    from kernelzoo.layers import Similarity
    from kernelzoo.zoo.ckn.kmeans import ckn_layers, init_ckn_layers
    from kernelzoo.zoo.simnet import PatchWhitening, TriangleCoding

    if len(images) > INIT_IMAGES:
        images = images[np.sort(np.random.default_rng(seed).choice(len(images), INIT_IMAGES, replace=False))]
    if ckn_layers(model):
        init_ckn_layers(model, images, seed=seed, verbose=verbose)
    kinds = (PatchWhitening, Similarity, TriangleCoding)

    def fitted(layer):  # a Normalization built with constants (an SC network's per-channel mean / std) has no fit
        if isinstance(layer, keras.layers.Normalization):
            return layer.input_mean is None
        return isinstance(layer, kinds)

    if any(fitted(layer) for layer in model.layers):
        from kernelzoo.zoo.simnet.init import unsupervised_init
        unsupervised_init(model, images, seed=seed, verbose=verbose)


# ----------------------------------------------------------------------------- training


def finetune(model, train_ds, val_ds, num_classes, *, freeze="features", epochs=10, batch_size=64, lr=0.01,
             momentum=0.9, lr_drop_every=None, test_ds=None, spatial="pad_crop", from_scratch=False, out_dir=None,
             seed=0, verbose=1, max_steps_per_epoch=None, resume=False, data_settings=None):
    """Fine-tune `model` on a new image-classification dataset; returns (fine-tuned model, metrics).

    Args:
      model: a keras.Model classifier, a zoo model name (its pretrained weights are loaded) or a .keras path.
      train_ds, val_ds: (images uint8 (N, H, W, C), integer labels (N,)) pairs; val_ds may be None.
      num_classes: number of classes of the new dataset (>= 2; labels must lie in [0, num_classes)).
      freeze: "features" (train the new head only) or "none" (train everything).
      epochs, batch_size, lr, momentum, lr_drop_every: the zoo SGD recipe (lr / 10 after half the epochs).
        For a SimNet with freeze="features" a larger lr may be needed: each MEX offset gets only a
        share of its class logit's gradient (docs/finetune.md).
      test_ds: optional (images, labels) evaluated at the end.
      spatial: "pad_crop" (centred zero padding / cropping) or "resize" (bilinear) to the model's input size.
      from_scratch: same adapted architecture, fresh weights (and unsupervised init: CKN layers get k-means
        anchors and stay frozen), every other layer trained.
      out_dir: run folder (log.csv, checkpoints, model.keras); default a temporary folder, removed after.
      seed: data order and the new head's initial weights (every weight's with from_scratch).
      max_steps_per_epoch: cap the steps of each epoch (quick runs, tests).
      resume: continue the run in `out_dir` from its last checkpoint (`training.train`; refused when its
        config.json holds other settings, the number of epochs aside, or when the epochs would change the lr of
        an epoch already trained: `check_resume_epochs`); without it a run there is refused.
      data_settings: what made the arrays (e.g. the CLI's dataset, its source, --limit-train, --val-size,
        --limit-test), a dict recorded with the options in config.json: a resume on other data is refused.
    Returns (model, metrics): metrics holds freeze, epochs, from_scratch, trainable / total params,
    history (per-epoch dicts), val_accuracy / val_loss, test_accuracy / test_loss (when given), examples.
    """
    from kernelzoo.zoo import training

    freeze = check_choice("freeze", freeze, FREEZE_MODES)
    spatial = check_choice("spatial", spatial, SPATIAL_MODES)
    num_classes = int_in_range(num_classes, "num_classes", 2)
    epochs = positive_int(epochs, "epochs")
    batch_size = positive_int(batch_size, "batch_size")
    lr = positive_float(lr, "lr")
    momentum = float_in_range(momentum, "momentum", 0, 1, "[)")
    check_run_dir(out_dir, resume)
    check_resume_epochs(out_dir, epochs, lr, lr_drop_every)
    source = model.name if isinstance(model, keras.Model) else str(model)
    model = resolve_model(model)
    find_head(model)
    x_train, y_train = _data(train_ds, "train_ds", num_classes)
    val = None if val_ds is None else _data(val_ds, "val_ds", num_classes, x_train.shape[1:])
    test = None if test_ds is None else _data(test_ds, "test_ds", num_classes, x_train.shape[1:])
    if from_scratch:
        freeze = "none"
    temporary = out_dir is None
    run_dir = tempfile.mkdtemp(prefix="kernelzoo-finetune-") if temporary else os.fspath(out_dir)
    new_model = None  # resuming: training.train loads the last checkpoint
    if training.read_state(run_dir) is None:
        keras.utils.set_random_seed(seed)  # the new head's weights (all weights with from_scratch)
        new_model = adapt_model(model, num_classes, x_train.shape[1:], freeze=freeze, spatial=spatial,
                                copy_weights=not from_scratch)
        if from_scratch:
            _reinitialise_unsupervised(new_model, x_train, seed, bool(verbose))
        Recipe().compile(new_model, dict(DEFAULTS, lr=lr, momentum=momentum))  # SGD, loss on logits or probabilities
    config = {"options": {"model": source, "freeze": freeze, "spatial": spatial, "from_scratch": bool(from_scratch),
                          "num_classes": num_classes, **(data_settings or {})},
              "hyperparameters": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "momentum": momentum,
                                  "lr_drop_every": lr_drop_every, "max_steps_per_epoch": max_steps_per_epoch},
              "seed": seed}
    try:
        result = training.train(new_model, (x_train, y_train), out_dir=run_dir, epochs=epochs, batch_size=batch_size,
                                lr_schedule=training.step_schedule(lr, epochs, lr_drop_every), val_data=val,
                                seed=seed, resume=resume, verbose=verbose, tensorboard=False,
                                max_steps_per_epoch=max_steps_per_epoch, config=config)
    finally:
        if temporary:
            shutil.rmtree(run_dir, ignore_errors=True)
    new_model = result["model"]
    metrics = {"freeze": freeze, "epochs": epochs, "lr": float(lr), "from_scratch": bool(from_scratch),
               "spatial": spatial, "num_classes": num_classes, "train_examples": int(len(x_train)),
               "trainable_params": int(sum(np.prod(w.shape) for w in new_model.trainable_weights)),
               "params": int(new_model.count_params()), "history": result["history"]}
    for name, data in (("val", val), ("test", test)):
        if data is not None:
            scores = training.evaluate(new_model, data)
            metrics[f"{name}_accuracy"] = float(scores["accuracy"])
            metrics[f"{name}_loss"] = float(scores["loss"])
            metrics[f"{name}_examples"] = int(scores["examples"])
    return new_model, metrics


def check_run_dir(run_dir, resume, names=("out_dir", "resume")):
    """ValueError, before anything loads, when `run_dir` already holds a run and `resume` is not set, or `resume`
    is set without a `run_dir`; `names` are the two arguments as the caller spells them (e.g. CLI flags)."""
    from kernelzoo.zoo import training

    run_name, resume_name = names
    if resume and run_dir is None:
        raise ValueError(f"`{resume_name}` needs `{run_name}`: the run folder to continue")
    if not resume and run_dir is not None and training.read_state(os.fspath(run_dir)) is not None:
        raise ValueError(f"`{run_name}`={os.fspath(run_dir)!r} already holds a run: pass `{resume_name}` to continue "
                         f"it, or choose another `{run_name}`")


def check_resume_epochs(run_dir, epochs, lr, lr_drop_every=None, name="epochs"):
    """ValueError naming `name` (the epochs argument as the caller spells it) when resuming the run in `run_dir`
    for `epochs` would give an epoch it already trained another lr: the default drop after half the epochs moves
    with them, and the recipe the card states would not be the one log.csv shows."""
    from kernelzoo.zoo import training

    state = None if run_dir is None else training.read_state(os.fspath(run_dir))
    if state is None:
        return
    trained = training.read_config(os.fspath(run_dir))["hyperparameters"]["epochs"]
    used, wanted = (training.step_schedule(lr, n, lr_drop_every) for n in (trained, epochs))
    for epoch in range(state["epoch"]):
        if used(epoch) != wanted(epoch):
            raise ValueError(f"`{name}`={epochs} would train epoch {epoch + 1} at lr {wanted(epoch):g}, but epoch "
                             f"{epoch + 1} was trained at lr {used(epoch):g} (the run was started for {trained} "
                             f"epochs): resume with epochs that keep the lr drop, or start a new run")


def resolve_model(model):
    """A keras.Model from a model, a zoo model name (pretrained weights) or a .keras file path."""
    if isinstance(model, keras.Model):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        from kernelzoo.zoo import registry
        if path.endswith(".keras"):
            if not os.path.isfile(path):
                raise ValueError(f"`model`={path!r}: no such .keras file")
            return registry.load_file(path)
        if path in registry.list_models():
            if not registry.info(path).pretrained:
                raise ValueError(f"`model`={path!r} has no pretrained weights yet: nothing to fine-tune "
                                 "(train it first, or pass a .keras file)")
            return registry.load(path)
        raise ValueError(f"`model` must be a keras.Model, a zoo model name ({registry.list_models()}) or a "
                         f".keras file, got {path!r}")
    raise ValueError(f"`model` must be a keras.Model, a zoo model name or a .keras path, got {type(model).__name__}")


def _data(data, name, num_classes, shape=None):
    """The checked (uint8 images (N, H, W, C), labels) of argument `name`: the adapter expects 0-255 pixels."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"`{name}` must be an (images, labels) pair, got {type(data).__name__}")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if x.ndim == 3:  # (N, H, W) grey images
        x = x[..., None]
    x = image_batch(x, name)
    if x.dtype != np.uint8:  # float [0, 1] images would reach a model reading 0-255 pixels nearly black
        raise ValueError(f"`{name}` images must be uint8 pixels (0-255, as load_images gives them), got {x.dtype}")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"`{name}` images are {tuple(x.shape[1:])}, the training images {tuple(shape)}")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"`{name}` labels must be {len(x)} integers, got {y.dtype} {y.shape}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"`{name}` labels must lie in [0, num_classes={num_classes}), got [{y.min()}, {y.max()}]")
    return x, y
