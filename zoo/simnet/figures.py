"""`kernelzoo viz simnet-size`: the paper's Fig. 4 / Fig. 5 (paper 000 Sec. 6) from our own models.

CIFAR-10 test accuracy against the number of templates n (Fig. 4) and against the number of learned
parameters (Fig. 5) for the weighted l1 / l2 SimNets, the ConvNet and the Coates et al. network, our
points beside the paper's. Our points come from run folders (`kernelzoo train ... --out DIR`: config.json
names the builder and n, metrics.json holds the test accuracy, model.keras the trainable parameters) and,
with --shipped, from the family's pretrained presets (their measured figures, re-checked by the data tests).
The paper's points are the ones its text states (Sec. 6.1-6.3); the rest of its curves exist only as
pictures. Its Coates points count the linear classifier only, as ours do: the k-means centroids are fitted
without labels, so `parameter_count` leaves them out.

    kernelzoo viz simnet-size [RUN_DIR ...] [--shipped] [--out simnet_size.png]
"""
import inspect
import json
import os

from kernelzoo.ops.checks import check_choice
from kernelzoo.zoo.plotting import figure_path, pyplot, save_figure
from kernelzoo.zoo.simnet import models

LABELS = {"simnet_wl1": "SimNet, weighted l1", "simnet_wl2": "SimNet, weighted l2", "convnet": "ConvNet",
          "coates": "Coates et al. (triangle k-means)"}
COLORS = {"simnet_wl1": "tab:blue", "simnet_wl2": "tab:orange", "convnet": "tab:green", "coates": "tab:red"}
# (kind, n, accuracy): every point the paper's text gives (Sec. 6.1, 6.2 and the initialised runs of 6.3).
PAPER_POINTS = (("simnet_wl1", 200, 0.760), ("simnet_wl1", 400, 0.768), ("simnet_wl2", 400, 0.771),
                ("convnet", 6400, 0.762), ("coates", 1600, 0.773), ("coates", 3200, 0.783),
                ("coates", 6400, 0.778))


BUILDERS = {"simnet_patch_labeling": models.simnet_patch_labeling, "convnet_baseline": models.convnet_baseline,
            "coates_baseline": models.coates_baseline}


def builder_arguments(builder, config):
    """The arguments a model was built with, from its builder's name and configuration: the builder's defaults, then
    `config` (a FAMILY:BUILDER run records no configuration); None for a builder other than the four curves'."""
    function = BUILDERS.get(builder.rsplit(".", 1)[-1])
    if function is None:
        return None
    return {**{key: parameter.default for key, parameter in inspect.signature(function).parameters.items()},
            **config}


def model_kind(builder, config):
    """The curve a model belongs to ("simnet_wl1", ...), from its builder name and configuration (the builder's
    defaults for the arguments it leaves out); None for a model of none of the four (an unweighted SimNet, or
    one that learns its p, say)."""
    arguments = builder_arguments(builder, config)
    if arguments is None:
        return None
    name = builder.rsplit(".", 1)[-1]
    if name == "simnet_patch_labeling":
        p = arguments["p"]
        return f"simnet_wl{int(p)}" if arguments["weighted"] and not arguments["learn_p"] and p in (1, 2) else None
    return {"convnet_baseline": "convnet", "coates_baseline": "coates"}[name]


def learned_parameters(kind, n):
    """Trainable parameters of the zoo's model of `kind` with n templates (built, not trained)."""
    return models.parameter_count(models.build_kind(kind, n))


def run_point(folder):
    """(kind, n, parameters, test accuracy, label) of a finished run folder; ValueError naming what is missing."""
    paths = {name: os.path.join(folder, name) for name in ("config.json", "metrics.json", "model.keras")}
    missing = [name for name, path in paths.items() if not os.path.isfile(path)]
    if missing:
        raise ValueError(f"run folder {folder!r} lacks {', '.join(missing)} (a finished `kernelzoo train` run "
                         "has all three)")
    with open(paths["config.json"], encoding="utf-8") as handle:
        config = json.load(handle)
    with open(paths["metrics.json"], encoding="utf-8") as handle:
        metrics = json.load(handle)
    built = {**config["config"], **config.get("overrides", {})}  # the preset's arguments, then KEY=VALUE ones
    kind = model_kind(config["builder"], built)
    if kind is None or "test_accuracy" not in metrics:
        raise ValueError(f"run folder {folder!r}: expected a weighted SimNet, ConvNet or Coates run with a test "
                         f"accuracy, got builder {config['builder']!r} and metrics {sorted(metrics)}")
    import keras
    model = keras.models.load_model(paths["model.keras"], compile=False)
    n = builder_arguments(config["builder"], built)["n"]
    return (kind, int(n), models.parameter_count(model), float(metrics["test_accuracy"]),
            os.path.basename(os.path.normpath(folder)))


def shipped_points():
    """(kind, n, parameters, measured accuracy, preset name) of every pretrained preset of the family."""
    from kernelzoo.zoo import registry
    points = []
    for preset in registry.family_presets("simnet"):
        kind = model_kind(preset.builder, preset.config)
        if preset.weights and preset.measured is not None and kind is not None:
            n = int(builder_arguments(preset.builder, preset.config)["n"])
            points.append((kind, n, learned_parameters(kind, n), preset.measured.value, preset.name))
    return points


def _name_points(axis, ours, close=1.5):
    """Fig. 4's labels (Fig. 5's points crowd: named there only). Points at one n less than `close` accuracy points
    apart are named in one column under the lowest of them, highest first, so that their labels never overlap."""
    for n in sorted({point[1] for point in ours}):
        column = sorted((point for point in ours if point[1] == n), key=lambda point: -point[3])
        groups = [[column[0]]]
        for point in column[1:]:
            if 100 * (groups[-1][-1][3] - point[3]) < close:
                groups[-1].append(point)
            else:
                groups.append([point])
        for group in groups:
            for row, point in enumerate(group):
                axis.annotate(point[4], (n, 100 * group[-1][3]), fontsize=6, textcoords="offset points",
                              xytext=(3, -9 - 7 * row))


def plot(ours, out):
    """Fig. 4 (accuracy against n) and Fig. 5 (against learned parameters) side by side into the PNG `out`:
    `ours` filled markers (labelled with their run or preset in Fig. 4), the paper's points hollow."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(14, 4.8), sharey=True)
    paper = [(kind, n, learned_parameters(kind, n), accuracy) for kind, n, accuracy in PAPER_POINTS]
    for axis, column, xlabel in ((axes[0], 1, "templates n"), (axes[1], 2, "learned parameters")):
        for kind in models.KINDS:
            mine = sorted((p for p in ours if p[0] == kind), key=lambda p: p[column])
            theirs = sorted((p for p in paper if p[0] == kind), key=lambda p: p[column])
            if theirs:
                axis.plot([p[column] for p in theirs], [100 * p[3] for p in theirs], "o--", mfc="none",
                          color=COLORS[kind], label=f"{LABELS[kind]}, paper")
            if mine:
                axis.plot([p[column] for p in mine], [100 * p[3] for p in mine], "s-", color=COLORS[kind],
                          label=f"{LABELS[kind]}, ours")
        axis.set_xscale("log")
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3, which="both")
    _name_points(axes[0], ours)
    axes[0].margins(y=0.12)  # room for the labels under the lowest points
    axes[0].set_ylabel("CIFAR-10 test accuracy (%)")
    axes[0].set_title("Fig. 4: accuracy against templates")
    axes[1].set_title("Fig. 5: accuracy against learned parameters")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: no point hidden
    figure.text(0.5, 0.005, "ours: CIFAR-10 (JPEG q75 copy) test set; paper: its stated cross-validation "
                "accuracies (paper 000 Sec. 6)", ha="center", fontsize=7)
    return save_figure(figure, out, dpi=110, rect=(0, 0.03, 1, 1))


def add_arguments(parser, command):
    check_choice("command", command, ("viz",))
    what = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    size = what.add_parser("simnet-size", help="paper 000 Fig. 4/5: accuracy against templates and parameters")
    size.add_argument("runs", nargs="*", metavar="RUN_DIR", help="finished SimNet / ConvNet / Coates run folders")
    size.add_argument("--shipped", action="store_true", help="add the family's pretrained presets")
    size.add_argument("--out", default="simnet_size.png", help="the PNG to write")


def run(args, command):
    check_choice("command", command, ("viz",))
    figure_path(args.out, "--out")
    ours = [run_point(folder) for folder in args.runs] + (shipped_points() if args.shipped else [])
    if not ours:
        raise ValueError("nothing to plot of ours: give RUN_DIR folders and/or --shipped")
    for kind, n, parameters, accuracy, label in ours:
        print(f"{label}: {LABELS[kind]}, n {n}, {parameters:,} learned parameters, test {100 * accuracy:.2f} %")
    print(f"wrote {plot(ours, args.out)}")
    return 0
