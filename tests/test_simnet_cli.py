"""The SimNet family's commands: `kernelzoo viz simnet-size` (paper 000 Fig. 4/5: points from run folders and
presets, the paper's size statements as identities of our builders, the PNG) and `kernelzoo bench simnet`."""
import json
import os

import numpy as np
import pytest

from kernelzoo import cli
from kernelzoo.zoo.simnet import figures, models


def test_model_kind_names_the_four_curves():
    simnet = "kernelzoo.zoo.simnet.models.simnet_patch_labeling"
    assert figures.model_kind(simnet, {"n": 400, "p": 1, "weighted": True}) == "simnet_wl1"
    assert figures.model_kind(simnet, {"n": 400, "p": 2}) == "simnet_wl2"
    assert figures.model_kind(simnet, {"n": 400, "p": 2, "weighted": False}) is None
    assert figures.model_kind(simnet, {"n": 400}) == "simnet_wl2"  # the builder's default p
    assert figures.model_kind(simnet, {"n": 400, "p": 2, "learn_p": True}) is None  # an lp SimNet
    assert figures.model_kind("x.convnet_baseline", {"n": 6400}) == "convnet"
    assert figures.model_kind("x.coates_baseline", {"n": 1600}) == "coates"
    assert figures.model_kind("x.kernelnet_mnist", {}) is None


def test_learned_parameters_match_the_papers_size_statements():
    # Sec. 6.1: the weighted 400-template SimNet is under 1/9 the size of the 6,400-template ConvNet.
    assert 9 * figures.learned_parameters("simnet_wl1", 400) < figures.learned_parameters("convnet", 6400)
    # Coates et al.: the linear classifier on 4 quadrants x n features, 10 classes.
    assert figures.learned_parameters("coates", 1600) == (4 * 1600 + 1) * 10
    with pytest.raises(ValueError, match="kind"):
        figures.learned_parameters("resnet", 10)


def test_build_kind_gives_each_curve_its_lp_order():
    """simnet_wl1 is the weighted l1 SimNet, simnet_wl2 the weighted l2 one: the same parameter count, so only
    their similarity tells the two curves apart."""
    for kind, similarity in (("simnet_wl1", "l1"), ("simnet_wl2", "l2")):
        layer = models.build_kind(kind, 3).get_layer("similarity")
        assert (layer.similarity, layer.weighted, layer.filters) == (similarity, True, 3)


def _run_folder(path, accuracy):
    model = models.coates_baseline(n=2, input_shape=(10, 10, 3))
    os.makedirs(path)
    model.save(os.path.join(path, "model.keras"))
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as handle:
        json.dump({"builder": "kernelzoo.zoo.simnet.models.coates_baseline", "config": {"n": 1600},
                   "overrides": {"n": 2}}, handle)  # as `kernelzoo train coates_cifar10_n1600 n=2` writes it
    with open(os.path.join(path, "metrics.json"), "w", encoding="utf-8") as handle:
        json.dump({"test_accuracy": accuracy}, handle)
    return str(path)


def test_run_point_reads_a_finished_run_and_names_what_is_missing(tmp_path):
    folder = _run_folder(tmp_path / "coates_n2", 0.25)
    assert figures.run_point(folder) == ("coates", 2, (4 * 2 + 1) * 10, 0.25, "coates_n2")
    os.remove(os.path.join(folder, "metrics.json"))
    with pytest.raises(ValueError, match="metrics.json"):
        figures.run_point(folder)


def test_viz_simnet_size_draws_runs_and_shipped_presets(tmp_path, capsys):
    from PIL import Image
    out = str(tmp_path / "size.png")
    assert cli.main(["viz", "simnet-size", _run_folder(tmp_path / "coates_n2", 0.25), "--shipped", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "coates_n2: Coates et al. (triangle k-means), n 2, 90 learned parameters, test 25.00 %" in printed
    assert "simnet_cifar10_l1: SimNet, weighted l1, n 100" in printed  # a pretrained preset
    image = np.asarray(Image.open(out).convert("L"))
    assert image.shape[1] > 1000 and image.std() > 10  # two panels with content, not a blank canvas
    assert cli.main(["viz", "simnet-size", "--out", out]) == 2
    assert "kernelzoo viz simnet-size: error: nothing to plot of ours: give RUN_DIR" in capsys.readouterr().err


def test_fig4_names_close_points_at_one_n_in_a_column_and_far_ones_apart():
    from matplotlib.figure import Figure
    axis = Figure().add_subplot()
    ours = [("simnet_wl1", 400, 1, 0.7466, "wl1"), ("simnet_wl2", 400, 1, 0.7519, "wl2"),
            ("convnet", 400, 1, 0.6210, "convnet"), ("simnet_wl1", 100, 1, 0.6961, "l1")]
    figures._name_points(axis, ours)
    placed = {text.get_text(): (text.xy, text.xyann) for text in axis.texts}
    assert placed["wl2"][0] == placed["wl1"][0] == (400, pytest.approx(74.66))  # under the lower of the two
    assert placed["wl2"][1][1] > placed["wl1"][1][1]  # the higher point's name first, one row apart
    assert placed["convnet"][0] == (400, pytest.approx(62.10)) and placed["convnet"][1] == placed["wl2"][1]
    assert placed["l1"][0] == (100, pytest.approx(69.61))


def test_bench_simnet_times_the_steps_side_by_side(capsys):
    assert cli.main(["bench", "simnet", "--n", "4", "--convnet-n", "4", "--batch-size", "4", "--steps", "1",
                     "--warmup", "1", "--models", "simnet_wl2,convnet", "--pooling", "auto,slices"]) == 0
    rows = {tuple(line.split()[:4]): line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {("convnet", "4", precision, pooling) for precision in ("float32", "mixed_bfloat16")
                         for pooling in ("auto", "slices")} | {("simnet_wl2", "4", "float32", "-")}
    assert rows[("convnet", "4", "float32", "auto")][6] == "1.00x"  # the reference row
    simnet = rows[("simnet_wl2", "4", "float32", "-")]
    assert float(simnet[4]) > 0 and simnet[6].endswith("x")
    assert cli.main(["bench", "simnet", "--models", "resnet"]) == 2
    assert "kernelzoo bench simnet: error: `--models` must be one of" in capsys.readouterr().err
    assert cli.main(["bench", "simnet", "--pooling", "fused"]) == 2
    assert "--pooling" in capsys.readouterr().err
    from kernelzoo.zoo.simnet import bench_train
    with pytest.raises(ValueError, match="pooling"):
        bench_train.measure("convnet", pooling="fused")


def test_bench_simnet_profiles_the_step(capsys):
    """--profile N lists a row's N longest ops, longest first, without the model's scope, and all ops' total."""
    assert cli.main(["bench", "simnet", "--n", "4", "--batch-size", "4", "--steps", "1", "--warmup", "1",
                     "--models", "simnet_wl2", "--profile", "1000"]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    assert lines[0].startswith("simnet_wl2")
    rows = [line.split(" ms  ") for line in lines[1:]]
    names, times = [name for _, name in rows[:-1]], [float(ms) for ms, _ in rows[:-1]]
    assert rows[-1][1] == f"all {len(names)} ops" and times == sorted(times, reverse=True)
    assert "gradient_tape/similarity_1/KernelzooSimilarityGrad" in names  # the similarity's gradient, unscoped
    assert not any("simnet_patch_labeling" in name for name in names)
    assert cli.main(["bench", "simnet", "--profile", "-1"]) == 2
    assert "--profile" in capsys.readouterr().err
