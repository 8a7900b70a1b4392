"""kernelNet layers: dense layers whose weight matrix is built from a kernel.

`KernelDense`: W_ij = alpha_i K(u_i, v_j) (Muller 2018, Eq. 1/5): each input i
and output j has a location in a d-dimensional space, so the layer has
d (m + n) + m parameters instead of m n.
`SparseKernelDense`: W = A * K_fs(u, v) (Eq. 16/17): a free matrix A masked by
a finite-support kernel, so weights outside the support are exactly zero.
Both share `_LocationsLayer`: the locations, bias, regularisers, call and costs, and `location_noise`:
Gaussian noise of that standard deviation added to the input locations at each training step (Sec. 3.2: noise on
a pixel's location models uncertainty about where it is; a regulariser, off by default).
"""
import keras
from keras import ops

from kernelzoo.layers.kernels import DISTANCES, KERNELS, Grid2D, kernel_matrix
from kernelzoo.ops.checks import (boolean, check_choice, finite_float, float_in_range, nonnegative_float,
                                  positive_float, positive_int)


def _initializer(value):
    """Keras initializer lookup that also knows "grid" (a `Grid2D`)."""
    if isinstance(value, str) and value.lower() == "grid":
        return Grid2D()
    return keras.initializers.get(value)


def _kernel_function(kernel_function, legacy):
    """`kernel_function` ("rbf" when not given), or `legacy`: the `kernel` keyword of saved configs (the name
    in earlier versions); both given must agree, so that neither silently wins."""
    if legacy is None:
        return check_choice("kernel_function", "rbf" if kernel_function is None else kernel_function, KERNELS)
    legacy = check_choice("kernel", legacy, KERNELS)
    if kernel_function is not None and check_choice("kernel_function", kernel_function, KERNELS) != legacy:
        raise ValueError(f"`kernel`={legacy!r} (the name of `kernel_function` in earlier versions) and "
                         f"`kernel_function`={kernel_function!r} disagree: give `kernel_function` only")
    return legacy


class _LocationsLayer(keras.layers.Layer):
    """Shared parts: input locations u (m, d), output locations v (n, d), bias, the
    finite-support `scale` / `distance`, regularisers, call and cost counts.

    A subclass names its kernel in `kernel_function`, creates its own (m, ...) weight in
    `_build_matrix(m)` and turns K(u, v) into the effective weights in `_weights_from(k)`.
    """

    def __init__(self, units, *, dim, scale, distance, activation, use_bias,
                 input_locations_initializer, output_locations_initializer, bias_initializer,
                 input_locations_trainable, output_locations_trainable,
                 input_locations_regularizer, output_locations_regularizer, bias_regularizer,
                 kernel_values_regularizer, effective_regularizer,
                 input_locations_constraint, output_locations_constraint, bias_constraint, location_noise,
                 **kwargs):
        super().__init__(**kwargs)
        self.units = positive_int(units, "units")
        self.dim = positive_int(dim, "dim")
        self.scale = positive_float(scale, "scale")
        self.distance = check_choice("distance", distance, DISTANCES)
        self.activation = keras.activations.get(activation)
        self.use_bias = boolean(use_bias, "use_bias")
        self.input_locations_initializer = _initializer(input_locations_initializer)
        self.output_locations_initializer = _initializer(output_locations_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.input_locations_trainable = boolean(input_locations_trainable, "input_locations_trainable")
        self.output_locations_trainable = boolean(output_locations_trainable, "output_locations_trainable")
        self.input_locations_regularizer = keras.regularizers.get(input_locations_regularizer)
        self.output_locations_regularizer = keras.regularizers.get(output_locations_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_values_regularizer = keras.regularizers.get(kernel_values_regularizer)
        self.effective_regularizer = keras.regularizers.get(effective_regularizer)
        self.input_locations_constraint = keras.constraints.get(input_locations_constraint)
        self.output_locations_constraint = keras.constraints.get(output_locations_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.location_noise = nonnegative_float(location_noise, "location_noise")
        # only a noisy layer owns a seed state: the saved weights of the others stay as they were
        self._noise_seed = keras.random.SeedGenerator() if self.location_noise else None
        for name in ("input_locations_initializer", "output_locations_initializer"):
            if isinstance(getattr(self, name), Grid2D) and self.dim != 2:
                raise ValueError(f"`{name}`='grid' needs dim=2, got dim={self.dim}")

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"{type(self).__name__} needs a known last input dimension, got {input_shape}")
        m = int(input_shape[-1])
        self.input_locations = self.add_weight(
            name="input_locations", shape=(m, self.dim),
            initializer=self.input_locations_initializer,
            regularizer=self.input_locations_regularizer,
            constraint=self.input_locations_constraint, autocast=False,
            trainable=self.input_locations_trainable)
        self.output_locations = self.add_weight(
            name="output_locations", shape=(self.units, self.dim),
            initializer=self.output_locations_initializer,
            regularizer=self.output_locations_regularizer,
            constraint=self.output_locations_constraint, autocast=False,
            trainable=self.output_locations_trainable)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(self.units,), initializer=self.bias_initializer,
                regularizer=self.bias_regularizer, constraint=self.bias_constraint)
        self._build_matrix(m)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: m})

    def _build_matrix(self, m):
        """Create the subclass's own weight for m inputs."""
        raise NotImplementedError

    def _weights_from(self, k):
        """The effective (m, n) weights given the kernel values K(u, v)."""
        raise NotImplementedError

    def kernel_values(self, jitter=False):
        """The (m, n) matrix K(u_i, v_j), float32 from float32 locations (their variables are never autocast:
        under a float16 policy nearby locations would round together and the distances underflow, NaN
        gradients at coincident ones); `jitter`: with u_i moved by the layer's `location_noise`."""
        u = ops.cast(self.input_locations, "float32")
        if jitter and self.location_noise:
            u = u + keras.random.normal(ops.shape(u), stddev=self.location_noise, seed=self._noise_seed,
                                        dtype="float32")
        return kernel_matrix(u, ops.cast(self.output_locations, "float32"), self.kernel_function,
                             scale=self.scale, distance=self.distance, **self._kernel_options())

    def _kernel_options(self):
        """Keyword arguments of `kernel_matrix` beyond scale and distance."""
        return {}

    def effective_kernel(self):
        """The effective (m, n) weight matrix W of the layer."""
        return self._weights_from(self.kernel_values())

    def call(self, inputs, training=None):
        k = self.kernel_values(jitter=bool(training))
        w = ops.cast(self._weights_from(k), self.compute_dtype)
        if self.kernel_values_regularizer is not None:
            self.add_loss(self.kernel_values_regularizer(k))
        if self.effective_regularizer is not None:
            self.add_loss(self.effective_regularizer(w))
        y = ops.matmul(inputs, w)
        if self.bias is not None:
            y = y + self.bias
        return self.activation(y) if self.activation is not None else y

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def parameter_count(self):
        """Number of trainable scalars (the "Parameters" column of Table 4)."""
        return int(sum(int(ops.size(w)) for w in self.trainable_weights))

    def expected_macs(self, input_density=1.0):
        """Expected multiply-accumulates per example (Table 4's "MACs").

        Non-zero effective weights times the expected fraction of non-zero
        inputs (e.g. 10 rated items out of m gives input_density = 10 / m).
        """
        input_density = float_in_range(input_density, "input_density", 0.0, 1.0)
        nonzero = int(ops.convert_to_numpy(ops.count_nonzero(self.effective_kernel())))
        return input_density * nonzero

    def get_config(self):
        config = super().get_config()
        ser = keras.initializers.serialize
        reg = keras.regularizers.serialize
        con = keras.constraints.serialize
        config.update({
            "units": self.units, "dim": self.dim, "scale": self.scale, "distance": self.distance,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "input_locations_initializer": ser(self.input_locations_initializer),
            "output_locations_initializer": ser(self.output_locations_initializer),
            "bias_initializer": ser(self.bias_initializer),
            "input_locations_trainable": self.input_locations_trainable,
            "output_locations_trainable": self.output_locations_trainable,
            "input_locations_regularizer": reg(self.input_locations_regularizer),
            "output_locations_regularizer": reg(self.output_locations_regularizer),
            "bias_regularizer": reg(self.bias_regularizer),
            "kernel_values_regularizer": reg(self.kernel_values_regularizer),
            "effective_regularizer": reg(self.effective_regularizer),
            "input_locations_constraint": con(self.input_locations_constraint),
            "output_locations_constraint": con(self.output_locations_constraint),
            "bias_constraint": con(self.bias_constraint), "location_noise": self.location_noise,
        })
        return config


@keras.saving.register_keras_serializable(package="kernelzoo")
class KernelDense(_LocationsLayer):
    """Dense layer with W_ij = alpha_i K(u_i, v_j) (Eq. 1/5).

    Args:
        units: output size n.
        kernel_function: "rbf" (the default), "dot", "poly", "tanh" or "finite_support" (called
            `kernel` in earlier versions; that keyword, and saved configs holding it, still work).
        dim: dimension d of the locations u_i, v_j.
        gamma: RBF width (Eq. 6). degree, offset: polynomial (u.v + offset)^degree.
        scale: the a of the finite-support kernel (Eq. 7); distance: "euclidean"
            or "squared" distance inside it.
        use_alpha / alpha_trainable: per-input scale alpha_i, learned or fixed.
        *_locations_initializer: any Keras initializer or "grid" (a `Grid2D`:
            pixel locations of an image input, a square grid of units).
        *_locations_trainable: learn the locations or keep them fixed.
        location_noise: standard deviation of the Gaussian noise added to the input
            locations at each training step (module docstring); 0: none.
        kernel_values_regularizer: applied to K(u, v) (Eq. 8, lambda_0).
        effective_regularizer: applied to the effective W.
        activation, use_bias, bias_*: as in `keras.layers.Dense`.
    Returns the dtype policy's compute dtype. The kernel values K(u, v) and the effective W are float32 under
    every policy, float64 included (`kernel_values`): only the product with the inputs and the bias run in the
    compute dtype.
    """

    def __init__(self, units, kernel_function=None, dim=2, gamma=1.0, degree=2, offset=1.0,
                 scale=1.0, distance="euclidean", activation=None, use_bias=True,
                 use_alpha=True, alpha_trainable=True, alpha_initializer="glorot_uniform",
                 input_locations_initializer="random_normal",
                 output_locations_initializer="random_normal", bias_initializer="zeros",
                 input_locations_trainable=True, output_locations_trainable=True,
                 alpha_regularizer=None, input_locations_regularizer=None,
                 output_locations_regularizer=None, bias_regularizer=None,
                 kernel_values_regularizer=None, effective_regularizer=None,
                 alpha_constraint=None, input_locations_constraint=None,
                 output_locations_constraint=None, bias_constraint=None, location_noise=0.0, **kwargs):
        legacy = kwargs.pop("kernel", None)  # the name of `kernel_function` in earlier versions (in saved configs)
        super().__init__(
            units, dim=dim, scale=scale, distance=distance, activation=activation, use_bias=use_bias,
            input_locations_initializer=input_locations_initializer,
            output_locations_initializer=output_locations_initializer,
            bias_initializer=bias_initializer,
            input_locations_trainable=input_locations_trainable,
            output_locations_trainable=output_locations_trainable,
            input_locations_regularizer=input_locations_regularizer,
            output_locations_regularizer=output_locations_regularizer,
            bias_regularizer=bias_regularizer, kernel_values_regularizer=kernel_values_regularizer,
            effective_regularizer=effective_regularizer,
            input_locations_constraint=input_locations_constraint,
            output_locations_constraint=output_locations_constraint,
            bias_constraint=bias_constraint, location_noise=location_noise, **kwargs)
        self.kernel_function = _kernel_function(kernel_function, legacy)
        self.gamma = positive_float(gamma, "gamma")
        self.degree = positive_int(degree, "degree")
        self.offset = finite_float(offset, "offset")
        self.use_alpha = boolean(use_alpha, "use_alpha")
        self.alpha_trainable = boolean(alpha_trainable, "alpha_trainable")
        self.alpha_initializer = keras.initializers.get(alpha_initializer)
        self.alpha_regularizer = keras.regularizers.get(alpha_regularizer)
        self.alpha_constraint = keras.constraints.get(alpha_constraint)

    def _build_matrix(self, m):
        self.alpha = None
        if self.use_alpha:
            self.alpha = self.add_weight(
                name="alpha", shape=(m,), initializer=self.alpha_initializer,
                regularizer=self.alpha_regularizer, constraint=self.alpha_constraint,
                trainable=self.alpha_trainable, autocast=False)

    def _kernel_options(self):
        return {"gamma": self.gamma, "degree": self.degree, "offset": self.offset}

    def _weights_from(self, k):
        if self.alpha is None:
            return k
        return ops.expand_dims(ops.cast(self.alpha, k.dtype), -1) * k  # alpha is float64 under a float64 policy

    def get_config(self):
        config = super().get_config()
        config.update({
            "kernel_function": self.kernel_function, "gamma": self.gamma, "degree": self.degree,
            "offset": self.offset, "use_alpha": self.use_alpha, "alpha_trainable": self.alpha_trainable,
            "alpha_initializer": keras.initializers.serialize(self.alpha_initializer),
            "alpha_regularizer": keras.regularizers.serialize(self.alpha_regularizer),
            "alpha_constraint": keras.constraints.serialize(self.alpha_constraint),
        })
        return config


@keras.saving.register_keras_serializable(package="kernelzoo")
class SparseKernelDense(_LocationsLayer):
    """Sparse fully-connected layer W = A * K_fs(u, v) (Eq. 16/17).

    A is a free (m, n) matrix (the `kernel` weight, as in keras.layers.Dense);
    K_fs(u, v) = max(0, 1 - scale * D(u_i, v_j)) (Eq. 7) zeroes every weight
    whose locations are further apart than the support, so W has exact zeros.
    Sec. 3.5.2's regularisers are Keras regularisers: lambda_2 via
    `kernel_regularizer` (on A) or `effective_regularizer` (on W), lambda_0 via
    `kernel_values_regularizer` (on K_fs, Eq. 8). The paper's MovieLens code
    uses distance="squared" and locations drawn from N(0, 1e-3) (all weights
    start inside the support), the defaults here. `location_noise` and dtypes: as `KernelDense`'s.
    """

    kernel_function = "finite_support"

    def __init__(self, units, dim=5, scale=1.0, distance="squared", activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform",
                 input_locations_initializer=None, output_locations_initializer=None,
                 bias_initializer="zeros", input_locations_trainable=True,
                 output_locations_trainable=True, kernel_regularizer=None,
                 input_locations_regularizer=None, output_locations_regularizer=None,
                 bias_regularizer=None, kernel_values_regularizer=None,
                 effective_regularizer=None, kernel_constraint=None,
                 input_locations_constraint=None, output_locations_constraint=None,
                 bias_constraint=None, location_noise=0.0, **kwargs):
        small = {"class_name": "TruncatedNormal", "config": {"mean": 0.0, "stddev": 1e-3}}
        super().__init__(
            units, dim=dim, scale=scale, distance=distance, activation=activation, use_bias=use_bias,
            input_locations_initializer=small if input_locations_initializer is None
            else input_locations_initializer,
            output_locations_initializer=small if output_locations_initializer is None
            else output_locations_initializer,
            bias_initializer=bias_initializer,
            input_locations_trainable=input_locations_trainable,
            output_locations_trainable=output_locations_trainable,
            input_locations_regularizer=input_locations_regularizer,
            output_locations_regularizer=output_locations_regularizer,
            bias_regularizer=bias_regularizer, kernel_values_regularizer=kernel_values_regularizer,
            effective_regularizer=effective_regularizer,
            input_locations_constraint=input_locations_constraint,
            output_locations_constraint=output_locations_constraint,
            bias_constraint=bias_constraint, location_noise=location_noise, **kwargs)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)

    def _build_matrix(self, m):
        self.kernel = self.add_weight(
            name="kernel", shape=(m, self.units), initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer, constraint=self.kernel_constraint, autocast=False)

    def _weights_from(self, k):
        return ops.cast(self.kernel, k.dtype) * k  # the kernel is float64 under a float64 policy, K float32

    def get_config(self):
        config = super().get_config()
        config.update({
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
        })
        return config
