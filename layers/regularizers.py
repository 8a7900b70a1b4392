"""Weight decay as the papers' SGD frameworks (Caffe, Torch7, TensorFlow 1) define it, for the zoo's builders."""
import keras

from kernelzoo.ops.checks import nonnegative_float


def sgd_weight_decay(value, name="weight_decay"):
    """The L2 regularizer of SGD weight decay `value`, or None for 0.

    Caffe's and Torch7's SGD add `value * w` to the gradient (through the momentum): the loss term
    (value / 2) * ||w||^2 (TensorFlow's `value * tf.nn.l2_loss(w)`), unlike the decoupled `weight_decay`
    of Keras's optimizers.
    """
    value = nonnegative_float(value, name)
    return keras.regularizers.L2(value / 2.0) if value > 0 else None
