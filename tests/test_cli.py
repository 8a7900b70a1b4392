"""The `kernelzoo` console script: dispatch, usage errors, and the offline demo."""
import os
import sys

import pytest

from kernelzoo import __version__, cli, zoo

from conftest import background_job


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
    assert "kernelzoo bench {ops,deploy,sc,ckn,simnet,layerwise}" in capsys.readouterr().err
    assert cli.main(["viz", "loss-landscape"]) == 2
    assert "kernelzoo viz {embedding,dimensionality,simnet-size,runs,layerwise-samples}" in capsys.readouterr().err


# `kernelzoo demo` in a user's shell (TF_CPP_MIN_LOG_LEVEL unset), run beside the in-process tests.
DEMO = background_job("cli-demo", dict(args=[sys.executable, "-m", "kernelzoo.cli", "demo"], timeout=600,
                                       env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}))


@DEMO.mark
def test_demo_checks_the_special_cases_offline():
    (result,) = DEMO.results()
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "retracing" not in result.stderr, result.stderr[-2000:]
    assert not _tf_log_lines(result.stderr), result.stderr[-2000:]
    assert "linear unweighted similarity == Conv2D" in result.stdout
    assert "BAD" not in result.stdout
    # the bundled MNIST digits: predictions, export parity and latency for each pretrained classifier
    assert "bundled MNIST test digits" in result.stdout and "CC BY-SA 3.0" in result.stdout
    mnist = [name for name in zoo.list_models(pretrained=True)
             if zoo.info(name).dataset.name == "mnist" and zoo.info(name).task == "classification"]
    assert {"kernelnet_mnist_prior", "kernelnet_mnist_learned", "kernelnet_embedding_mnist", "sc_mnist"} <= set(mnist)
    for name in mnist:
        assert f"{name}" in result.stdout
    assert result.stdout.count("ok   parity SavedModel  vs Keras") == len(mnist)
    assert result.stdout.count("ok   parity onnxruntime vs Keras") == len(mnist)
    assert result.stdout.count("latency (batch 1, median): Keras") == len(mnist)
    correct = [int(line.split("/")[0].split()[-1]) for line in result.stdout.splitlines() if "correct" in line]
    assert len(correct) == len(mnist) and min(correct) >= 18, result.stdout


def test_demo_refuses_a_negative_seed_naming_it(capsys):
    assert cli.main(["demo", "--seed", "-1"]) == 2
    assert "--seed" in capsys.readouterr().err


def test_list_aligns_every_name(capsys):
    from kernelzoo.zoo import list_models

    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(list_models())
    family_columns = {len(line) - len(line.split(None, 1)[1]) for line in lines}
    assert len(family_columns) == 1, lines


def test_a_closed_pipe_ends_the_listing_quietly():
    """`kernelzoo list | head -3`: the reader leaves before the listing is written; no traceback."""
    import subprocess

    process = subprocess.Popen([sys.executable, "-m", "kernelzoo.cli", "list"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) == 1 and "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


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


def _tf_log_lines(stderr):
    """TensorFlow C++ / absl log lines: "I0000 00:00:... port.cc:153] ...", the absl pre-init notice, CPU flags."""
    import re

    pattern = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl|To enable the following instructions)")
    return [line for line in stderr.splitlines() if pattern.match(line)]


def _kernelzoo(*args, env=None):
    """`kernelzoo ARGS` in a fresh process, TF_CPP_MIN_LOG_LEVEL unset unless `env` sets it (a job step)."""
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environment.update(env or {})
    return dict(args=[sys.executable, "-m", "kernelzoo.cli", *args], timeout=600, env=environment)


def _first_model():
    from kernelzoo.zoo import list_models
    return list_models()[0]


PLAIN_COMMANDS = background_job("cli-plain-commands", _kernelzoo("list"), _kernelzoo("info", _first_model()))


@PLAIN_COMMANDS.mark
def test_plain_commands_print_no_tensorflow_log_lines():
    listing, info = PLAIN_COMMANDS.results()
    assert listing.returncode == 0 and _first_model() in listing.stdout, listing.stderr[-2000:]
    assert info.returncode == 0, info.stderr[-2000:]
    for result in (listing, info):
        assert not _tf_log_lines(result.stderr), result.stderr
        assert result.stderr.strip() == "", result.stderr


_QUIET_CODE = ("import os, sys; from kernelzoo import cli; cli.quiet_tensorflow({verbose}); "
               "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), 'tensorflow' in sys.modules)")
_QUIET_CASES = ((False, {}, "3 True"), (True, {}, "None False"), (False, {"TF_CPP_MIN_LOG_LEVEL": "1"}, "1 False"))
QUIET = background_job("cli-quiet-tensorflow", *[
    dict(args=[sys.executable, "-c", _QUIET_CODE.format(verbose=verbose)], timeout=300,
         env={**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}, **env})
    for verbose, env, _ in _QUIET_CASES])


@QUIET.mark
def test_verbose_or_a_user_log_level_leaves_tensorflow_logging_alone():
    for (_, _, expected), result in zip(_QUIET_CASES, QUIET.results(), strict=True):
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == expected
        if expected.startswith("3"):
            assert result.stderr.strip() == "", result.stderr
    assert cli.main(["-v", "--version"]) == 0 and cli.main(["--version", "--verbose"]) == 0


def test_a_subcommand_error_is_one_line_or_with_verbose_its_traceback(capsys):
    assert cli.main(["info", "no_such_model"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("kernelzoo info: error: ") and "no_such_model" in error and error.count("\n") == 1
    with pytest.raises(ValueError, match="no_such_model"):
        cli.main(["info", "no_such_model", "--verbose"])


def test_eval_json_is_written_after_every_model(tmp_path, monkeypatch, capsys):
    """A failure on the second model keeps the first one's result; the summary comes with the last model."""
    import json

    from kernelzoo.zoo import evaluation

    def fake_measure(model, *args, **kwargs):
        if model == "broken":
            raise ValueError("cannot measure")
        return {"metric": "accuracy", "value": {"a": 0.9, "b": 0.8}[model], "preset": "p", "data": "test",
                "examples": 10, "card": None, "paper": None}

    monkeypatch.setattr(evaluation, "measure", fake_measure)
    path = tmp_path / "eval.json"
    assert cli.main(["eval", "a", "broken", "--json", str(path)]) == 2
    assert [run["value"] for run in json.loads(path.read_text())["runs"]] == [0.9]
    assert cli.main(["eval", "a", "b", "--json", str(path)]) == 0
    written = json.loads(path.read_text())
    assert written["summary"]["n"] == 2 and not (tmp_path / "eval.json.tmp").exists()


def test_eval_passes_its_options_to_measure(monkeypatch, capsys):
    """--data-dir, --preset, --dataset, --holdout, --seed and --quiet reach the measurement; one model: its line, no
    mean +- std."""
    from kernelzoo.zoo import evaluation

    seen = []

    def fake_measure(model, data_dir, **kwargs):
        seen.append(dict(kwargs, model=model, data_dir=data_dir))
        return {"metric": "accuracy", "value": 0.5, "preset": "p", "data": "held-out", "examples": 40, "card": None,
                "paper": None}

    monkeypatch.setattr(evaluation, "measure", fake_measure)
    assert cli.main(["eval", "a.keras", "--data-dir", "/my/data", "--preset", "p", "--dataset", "stripes",
                     "--holdout", "40", "--seed", "3", "--quiet"]) == 0
    assert seen == [{"model": "a.keras", "data_dir": "/my/data", "preset": "p", "dataset": "stripes", "holdout": 40,
                     "seed": 3, "verbose": 0}]
    out = capsys.readouterr().out
    assert out.startswith("a.keras: accuracy measured") and "+-" not in out, out
