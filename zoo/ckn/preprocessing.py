"""Per-image whitening of patches, saved inside the model (raw 0-255 pixels in; nothing is fitted).

The CKN papers feed whitened inputs to the first layer (the CKN-2014 patch map: centred, whitened
patches). `PerImageWhitening` turns every k x k x C patch of an image into a channel vector,
centres it per colour channel, and whitens it with the covariance of that image's own patches,
regularised by `eps` (a share of the covariance's trace). A CKN layer with kernel_size 1 on its
output is a k x k CKN layer on whitened patches. Chosen over a dataset ZCA (global) on held-out
training images (zoo/ckn/ckn_cifar10_unsup.md).
"""
import keras
import numpy as np
from keras import ops

from kernelzoo.ops.checks import positive_float, positive_int


@keras.saving.register_keras_serializable(package="kernelzoo")
class PerImageWhitening(keras.layers.Layer):
    """Each image's k x k patches as channels, centred per channel, then ZCA-whitened with the image's
    own patch covariance C: out = p (C + eps tr(C) / D I)^(-1/2), D = k * k * channels.

    The inverse square root is NEWTON_SCHULZ_STEPS coupled Newton-Schulz iterations (matrix products
    only, so it exports to ONNX, which has no eigendecomposition). Nothing is fitted.
    """

    reads_raw_pixels = True  # input spec: the model takes 0-255 pixels (kernelzoo.zoo.inputs)

    def __init__(self, patch_size=3, eps=0.1, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = positive_int(patch_size, "patch_size")
        self.eps = positive_float(eps, "eps")
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        k, channels = self.patch_size, x.shape[-1]
        depth = k * k * channels
        patches = ops.conv(x, np.eye(depth, dtype="float32").reshape(k, k, channels, depth), padding="same")
        height, width = patches.shape[1], patches.shape[2]
        p = ops.reshape(patches, (-1, height * width, k * k, channels))
        p = ops.reshape(p - ops.mean(p, axis=2, keepdims=True), (-1, height * width, depth))
        p = p - ops.mean(p, axis=1, keepdims=True)
        cov = ops.einsum("bnd,bne->bde", p, p) / (height * width)
        trace = ops.trace(cov, axis1=1, axis2=2)[:, None, None]
        return ops.reshape(ops.matmul(p, inverse_sqrt_spd(cov + self.eps * trace / depth * np.eye(depth), trace)),
                           (-1, height, width, depth))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:3]) + (self.patch_size ** 2 * input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size, "eps": self.eps})
        return config


NEWTON_SCHULZ_STEPS = 20


def inverse_sqrt_spd(matrices, bound):
    """A^(-1/2) of symmetric positive definite matrices (B, D, D) whose eigenvalues lie in (0, bound]
    (B, 1, 1): coupled Newton-Schulz, Y -> (A / bound)^(1/2), Z -> (A / bound)^(-1/2)."""
    eye = np.eye(matrices.shape[-1], dtype="float32")
    y, z = matrices / bound, ops.broadcast_to(eye, ops.shape(matrices))
    for _ in range(NEWTON_SCHULZ_STEPS):
        t = 1.5 * eye - 0.5 * ops.matmul(z, y)
        y, z = ops.matmul(y, t), ops.matmul(t, z)
    return z / ops.sqrt(bound)
