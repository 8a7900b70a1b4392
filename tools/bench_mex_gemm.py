"""Class-wise MEX at the SimNet shape: the exp-domain GEMM form against the direct form, one process.

    .venv/bin/python tools/bench_mex_gemm.py [--data normal|shipped] [--batch 64] [--channels N]
        [--classes 10] [--regions 2] [--xi 1] [--reps 7] [--images NPZ]

Both forms run the same custom op (`KernelzooMex` / `KernelzooMexGrad`) with offsets and a shared
xi, interleaved: the direct one via the op's `gemm=False` attr. Data: `normal` (default), input
(batch, 27, 27, channels) and offsets ~ N(0, 1), as `kernelzoo bench ops`; `shipped`, the class-wise
MEX input and offsets of the shipped simnet_cifar10_l1 on the first --batch CIFAR-10 test images
(--images: an .npz holding x_test, default the cached JPEG copy in ~/.cache/kernelzoo/data), its
n = 100 channels tiled with N(0, 1) jitter to --channels when more are asked. Prints the median wall
and CPU (process) time of the forward and of forward+backward, and the largest difference between
the two forms.
"""
import argparse
import glob
import os
import time

import numpy as np


def _normal_data(batch, n, k, regions, rng):
    x = rng.normal(size=(batch, 27, 27, n)).astype("float32")
    off = rng.normal(size=(regions, regions, k, 1, 1, n)).astype("float32")
    return x, off, 1.0


def _shipped_data(batch, n, images, rng):
    import keras

    from kernelzoo.zoo import registry

    if images is None:
        found = sorted(glob.glob(os.path.expanduser("~/.cache/kernelzoo/data/cifar10*.npz")))
        if not found:
            raise SystemExit("no cached CIFAR-10 copy: pass --images (an .npz with x_test) or use --data normal")
        images = found[0]
    model = registry.load("simnet_cifar10_l1", compile=False)
    mex = model.get_layer("mex_templates")
    x = keras.Model(model.inputs, mex.input)(np.load(images)["x_test"][:batch].astype("float32")).numpy()
    off = next(w for w in mex.weights if "offsets" in w.name).numpy()
    learned = [w.numpy() for w in mex.weights if w.name == "xi"]
    xi = float(np.ravel(learned[0] if learned else mex.xi)[0])
    native = x.shape[-1]
    n = n or native
    if n > native:  # tile the templates (a jittered copy of each)
        reps = -(-n // native)
        x = np.concatenate([x + (j > 0) * rng.normal(size=x.shape) for j in range(reps)], -1)[..., :n]
        off = np.concatenate([off + (j > 0) * rng.normal(size=off.shape) for j in range(reps)], -1)[..., :n]
    return x[..., :n].astype("float32"), off[..., :n].astype("float32"), xi


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["normal", "shipped"], default="normal")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--channels", type=int, default=None, help="default: 400 (normal), 100 (shipped)")
    ap.add_argument("--classes", type=int, default=10, help="normal data only")
    ap.add_argument("--regions", type=int, default=2, help="normal data only")
    ap.add_argument("--xi", type=float, default=None, help="default: 1 (normal), the model's (shipped)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--images", default=None)
    args = ap.parse_args(argv)

    import tensorflow as tf

    from kernelzoo.ops import library

    lib = library.load()
    rng = np.random.default_rng(0)
    if args.data == "normal":
        x, off, xi_value = _normal_data(args.batch, args.channels or 400, args.classes, args.regions, rng)
    else:
        x, off, xi_value = _shipped_data(args.batch, args.channels, args.images, rng)
    xi_value = xi_value if args.xi is None else args.xi
    regions, k, n = off.shape[0], off.shape[2], x.shape[-1]
    x, off = tf.constant(x), tf.constant(off)
    xi = tf.constant(np.full(k, xi_value, "float32"))
    c = tf.zeros((0,))
    g = tf.constant(rng.normal(size=tuple(x.shape[:3]) + (k,)).astype("float32"))

    def run(gemm, backward):
        kw = dict(num_instances=k, pool_size=[1, 1], channel_block=n, strides=[1, 1], padding="valid",
                  softmax_mode=False, use_offsets=True, use_c=False, gemm=gemm)
        out = [lib.kernelzoo_mex(x, xi, off, c, **kw)]
        if backward:
            out += list(lib.kernelzoo_mex_grad(x, xi, off, c, g, **kw))[:3]
        return [t.numpy() for t in out]

    cases = [(gemm, backward) for backward in (False, True) for gemm in (False, True)]
    wall = {case: [] for case in cases}
    cpu = {case: [] for case in cases}
    results = {}
    for rep in range(args.reps + 1):
        for case in cases:
            w0, c0 = time.perf_counter(), time.process_time()
            out = run(*case)
            if rep:  # the first round warms up
                wall[case].append(time.perf_counter() - w0)
                cpu[case].append(time.process_time() - c0)
            results[case] = out

    print(f"class-wise MEX {'x'.join(str(d) for d in x.shape)}, {k} instances, {regions}x{regions} offset "
          f"regions, xi={xi_value}, data={args.data}; median of {args.reps}, wall / CPU ms")
    for backward in (False, True):
        label = "forward+backward" if backward else "forward         "
        cols = []
        for gemm in (False, True):
            case = (gemm, backward)
            cols.append(f"{'gemm' if gemm else 'direct'} {1e3 * np.median(wall[case]):7.1f} / "
                        f"{1e3 * np.median(cpu[case]):7.1f}")
        speedup = np.median(wall[(False, backward)]) / np.median(wall[(True, backward)])
        print(f"  {label}  {cols[0]}   {cols[1]}   speedup (wall) {speedup:.2f}x")
    for i, name in enumerate(["value", "grad x", "grad xi", "grad offsets"]):
        a, b = results[(True, True)][i], results[(False, True)][i]
        err = np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)
        print(f"  max |gemm - direct| / max |direct|, {name}: {err:.1e}")


if __name__ == "__main__":
    main()
