"""Full-batch training of a Keras model: L-BFGS-B on its flat weights, or Adam.

`loss_fn(model)` returns the scalar objective (data term); the model's own
regularisation losses (`model.losses`) are added here.
"""
import math
import warnings

import numpy as np
import scipy.optimize
import tensorflow as tf

from kernelzoo.ops.checks import positive_float, positive_int


class FlatWeights:
    """Maps a model's trainable variables to one float64 vector and back."""

    def __init__(self, variables):
        self.variables = list(variables)
        self.shapes = [tuple(v.shape) for v in self.variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]

    def get(self):
        return np.concatenate([np.ravel(v.numpy()) for v in self.variables]).astype(np.float64)

    def set(self, flat):
        start = 0
        for var, shape, size in zip(self.variables, self.shapes, self.sizes):
            var.assign(np.reshape(flat[start:start + size], shape).astype(var.dtype))
            start += size

    def flatten(self, tensors):
        """Concatenate gradients; None (a variable the loss ignores) counts as 0."""
        return np.concatenate([np.zeros(size) if t is None else np.ravel(t.numpy())
                               for t, size in zip(tensors, self.sizes)]).astype(np.float64)


def _objective(model, loss_fn):
    variables = model.trainable_variables

    @tf.function
    def value_and_grads():
        with tf.GradientTape() as tape:
            loss = loss_fn(model)
            if model.losses:
                loss = loss + tf.add_n(model.losses)
        return loss, tape.gradient(loss, variables)

    return value_and_grads


def fit_lbfgs(model, loss_fn, maxiter=500, maxcor=10, every=None, callback=None, restart=False, objective=None):
    """L-BFGS-B (scipy) on the model's flat weights, full batch.

    Every `every` iterations `callback(iteration, loss)` runs with the model
    holding the current iterate (to evaluate or checkpoint); a callback needs
    `every`. With `restart`, every `every` iterations are a fresh L-BFGS-B call
    (its curvature memory dropped, as the rounds of kernelNet's public code), the
    callback after each round with the iterations run so far; at most
    ceil(maxiter / every) rounds, the last one a round that ended before its
    iterations (converged) or whose callback raised StopIteration. Returns scipy's
    result (of the last round, `nit` counting every round); the model ends with its
    final weights. `objective`: the traced loss-and-gradients function to reuse.
    scipy's abnormal stop (no lower loss found along its search direction) ends a
    call as a convergence does, with a RuntimeWarning; a non-finite loss is a
    RuntimeError (`_check_result`).
    """
    maxiter = positive_int(maxiter, "maxiter")
    maxcor = positive_int(maxcor, "maxcor")
    every = None if every is None else positive_int(every, "every")
    if callback is not None and every is None:
        raise ValueError("callback: give `every` (iterations between two calls); without it none is made")
    if restart:
        if every is None:
            raise ValueError("restart: the rounds need `every` (iterations per round)")
        return _lbfgs_rounds(model, loss_fn, maxiter, maxcor, every, callback, objective)
    flat = FlatWeights(model.trainable_variables)
    value_and_grads = objective or _objective(model, loss_fn)
    count = [0]

    def fun(x):
        flat.set(x)
        loss, grads = value_and_grads()
        return float(loss), flat.flatten(grads)

    def on_step(intermediate_result):
        count[0] += 1
        if callback is not None and count[0] % every == 0:
            flat.set(intermediate_result.x)
            callback(count[0], float(intermediate_result.fun))

    result = scipy.optimize.minimize(fun, flat.get(), jac=True, method="L-BFGS-B",
                                     callback=on_step,
                                     options={"maxiter": maxiter, "maxcor": maxcor})
    flat.set(result.x)
    return _check_result(result)


def _check_result(result):
    """scipy's L-BFGS-B `result`, after a RuntimeError on a non-finite loss and a RuntimeWarning on an abnormal
    stop (status 2: typically a line search that found no lower loss, as float32 gradients near a minimum cause;
    the iterate is the last one scipy accepted). Statuses 0 (converged), 1 (iteration or evaluation limit) and 99
    (the callback raised StopIteration) pass."""
    if not math.isfinite(result.fun):
        raise RuntimeError(f"L-BFGS-B: the loss is {result.fun} after {result.nit} iterations ({result.message})")
    if result.status not in (0, 1, 99):
        warnings.warn(f"L-BFGS-B stopped abnormally after {result.nit} iterations (scipy status {result.status}: "
                      f"{result.message}); training ends on its last accepted iterate", RuntimeWarning, stacklevel=3)
    return result


def _lbfgs_rounds(model, loss_fn, maxiter, maxcor, every, callback, objective):
    """`fit_lbfgs` with `restart`: rounds of `every` iterations, each a fresh L-BFGS-B call."""
    value_and_grads = objective or _objective(model, loss_fn)
    done = 0
    for _ in range(math.ceil(maxiter / every)):
        asked = min(every, maxiter - done)
        result = fit_lbfgs(model, loss_fn, asked, maxcor, objective=value_and_grads)
        converged = result.nit < asked
        done += int(result.nit)
        result.nit = done
        if callback is not None:
            try:
                callback(done, float(result.fun))
            except StopIteration:
                break
        if converged:
            break
    return result


def adam_steps(model, loss_fn, learning_rate=1e-3, optimizer=None):
    """A function `run(steps)` taking `steps` full-batch Adam steps and returning the last loss.

    One optimizer serves every call, so its moments (and bias correction) carry over from one
    call to the next, as in one long run split into epochs. `optimizer`: the Adam to continue (a resumed
    run's, holding its moments; its own learning rate); default a fresh one at `learning_rate`.
    """
    import keras

    if optimizer is None:
        optimizer = keras.optimizers.Adam(positive_float(learning_rate, "learning_rate"))
    variables = model.trainable_variables
    optimizer.build(variables)  # its slots exist before the step is traced
    value_and_grads = _objective(model, loss_fn)

    @tf.function
    def step():  # one graph per step: Adam's update run eagerly cost ~20x the gradient itself
        loss, grads = value_and_grads()
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    def run(steps):
        steps = positive_int(steps, "steps")
        loss = None
        for _ in range(steps):
            loss = step()
        return float(loss)

    run.optimizer = optimizer
    return run


def fit_adam(model, loss_fn, steps=100, learning_rate=1e-3):
    """`steps` full-batch Adam steps on a fresh optimizer; returns the last loss."""
    steps = positive_int(steps, "steps")
    return adam_steps(model, loss_fn, learning_rate)(steps)
