"""The `kernelzoo` console script: dispatch, usage errors, and the offline demo."""
import subprocess
import sys

import pytest

from kernelzoo import __version__, cli


def test_version_and_help(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == __version__
    assert cli.main([]) == 0
    assert "build-ops" in capsys.readouterr().out


def test_unknown_command_and_bad_bench_target_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["frobnicate"])
    assert exit_info.value.code == 2
    assert cli.main(["bench", "gpu"]) == 2
    assert "kernelzoo bench {ops,deploy}" in capsys.readouterr().err


def test_demo_checks_the_special_cases_offline():
    result = subprocess.run([sys.executable, "-m", "kernelzoo.cli", "demo"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "linear unweighted similarity == Conv2D" in result.stdout
    assert "BAD" not in result.stdout
    # the bundled MNIST digits: predictions, export parity and latency for each pretrained classifier
    assert "bundled MNIST test digits" in result.stdout and "CC BY-SA 3.0" in result.stdout
    for name in ("kernelnet_mnist_prior", "kernelnet_mnist_learned", "kernelnet_embedding_mnist"):
        assert f"{name}" in result.stdout
    assert result.stdout.count("ok   parity SavedModel  vs Keras") == 3
    assert result.stdout.count("ok   parity onnxruntime vs Keras") == 3
    assert result.stdout.count("latency (batch 1, median): Keras") == 3
    correct = [int(line.split("/")[0].split()[-1]) for line in result.stdout.splitlines() if "correct" in line]
    assert len(correct) == 3 and min(correct) >= 18, result.stdout


def test_bundled_mnist_samples_are_the_attributed_t10k_digits():
    import os

    import numpy as np

    from kernelzoo.zoo import demo

    images, labels, indices = demo.load_samples()
    assert images.shape == (20, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == [2] * 10
    folder = os.path.dirname(demo.SAMPLES)
    with open(os.path.join(folder, "ATTRIBUTION.md"), encoding="utf-8") as handle:
        attribution = handle.read()
    assert "CC BY-SA 3.0" in attribution and "Yann LeCun and Corinna Cortes" in attribution
    assert ", ".join(str(i) for i in indices) in attribution
    mnist = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")
    if os.path.isdir(mnist):  # the indices point at these very images in the t10k files
        from kernelzoo.zoo.data.mnist import _read_idx
        x = _read_idx(os.path.join(mnist, "t10k-images-idx3-ubyte.gz"), True)
        y = _read_idx(os.path.join(mnist, "t10k-labels-idx1-ubyte.gz"), False)
        np.testing.assert_array_equal(x[indices], images)
        np.testing.assert_array_equal(y[indices], labels)
