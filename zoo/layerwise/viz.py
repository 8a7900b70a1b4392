"""Pictures of the generative model: `plot_samples` draws, for the synthetic digits (or any
HierarchicalModel with 2-D images), the generation of one example level by level (paper 003 Fig. 2,
left) and the mean image of each label (flat for the synthetic digits: nothing for a linear
classifier to use), above a grid of generated images with their labels (Fig. 2, right).

    kernelzoo viz layerwise-samples --out digits.png [--count 24] [--seed 0]
"""
import numpy as np

from kernelzoo.ops.checks import check_choice, nonnegative_int, positive_int
from kernelzoo.zoo.plotting import figure_path, pyplot, save_figure


def plot_samples(model, path, count=24, seed=0, columns=8, mean_of=2000):
    """Write the PNG `path`: the levels X(0), ..., X(d) of the first example and the mean image of
    `mean_of` examples per label (top row), then a grid of `count` examples (below)."""
    plt = pyplot()
    count, columns = positive_int(count, "count"), positive_int(columns, "columns")
    drawn = model.sample(count, seed=seed)
    rows = -(-count // columns)
    names = model.label_names or tuple(str(label) for label in range(model.num_labels))
    top = model.depth + 1 + (model.num_labels if mean_of else 0)
    figure = plt.figure(figsize=(max(1.6 * columns, 2.2 * top), 3.2 + 2.2 * rows), dpi=110)
    outer = figure.add_gridspec(2, 1, height_ratios=[3.2, 2.2 * rows], hspace=0.25)
    upper = outer[0].subgridspec(1, top, wspace=0.3)
    lower = outer[1].subgridspec(rows, columns, hspace=0.35)
    for level in range(model.depth + 1):
        axis = figure.add_subplot(upper[0, level])
        if level < model.depth:
            _draw_classes(axis, drawn.latents[level][0], None if model.class_names is None
                          else model.class_names[level])
            axis.set_title(f"X({level}) over C{level}", fontsize=9)
        else:
            axis.imshow(_image(drawn.images[0]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axis.set_title(f"X({level}): the image ({_digit(model, drawn.latents[0][0])}{names[drawn.labels[0]]})",
                           fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    if mean_of:
        many = model.sample(positive_int(mean_of, "mean_of"), seed=(seed, 1))
        for label in range(model.num_labels):
            axis = figure.add_subplot(upper[0, model.depth + 1 + label])
            chosen = many.images[many.labels == label]
            axis.imshow(_image(chosen.mean(axis=0)), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axis.set_title(f"mean of {len(chosen)} '{names[label]}'", fontsize=9)
            axis.set_xticks([])
            axis.set_yticks([])
    for index in range(count):
        axis = figure.add_subplot(lower[index // columns, index % columns])
        axis.imshow(_image(drawn.images[index]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axis.set_title(f"{_digit(model, drawn.latents[0][index])}{names[drawn.labels[index]]}", fontsize=8)
        axis.axis("off")
    figure.suptitle(f"hierarchical generative model (paper 003 Sec. 3): one example level by level, the mean "
                    f"image per label, {count} samples (seed {seed})", fontsize=10)
    return save_figure(figure, path, crop=True)


def add_arguments(parser, command):
    check_choice("command", command, ("viz",))
    what = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    samples = what.add_parser("layerwise-samples", help="paper 003 Fig. 2: the synthetic digits, level by level")
    samples.add_argument("--out", default="synthetic_digits.png", help="the PNG to write")
    samples.add_argument("--count", type=int, default=24, help="examples in the grid")
    samples.add_argument("--seed", type=int, default=0)


def run(args, command):
    check_choice("command", command, ("viz",))
    figure_path(args.out, "--out")
    positive_int(args.count, "--count")
    nonnegative_int(args.seed, "--seed")
    from kernelzoo.zoo.layerwise.generative import synthetic_digits
    print(f"wrote {plot_samples(synthetic_digits(), args.out, count=args.count, seed=args.seed)}")
    return 0


def _image(image):
    return image[..., 0] if image.shape[-1] == 1 else image


def _draw_classes(axis, classes, names):
    """A class map as a grid of its class names (symbols) or indices."""
    height, width = classes.shape
    axis.set_xlim(-0.5, width - 0.5)
    axis.set_ylim(height - 0.5, -0.5)
    axis.set_aspect("equal")
    size = max(4, min(22, int(180 / max(height, width))))
    for (row, col), value in np.ndenumerate(classes):
        label = str(value) if names is None else names[value]
        axis.text(col, row, label if label.strip() else "·", ha="center", va="center", fontsize=size,
                  color="black" if label.strip() else "lightgrey", family="DejaVu Sans Mono")


def _digit(model, semantic):
    """"7 " when `semantic` is one of the synthetic digits, else ""."""
    from kernelzoo.zoo.layerwise.generative import DIGITS, GLYPHS

    if model.class_names is None or tuple(model.class_names[0]) != GLYPHS:
        return ""
    for digit, rows in enumerate(DIGITS):
        if np.array_equal(semantic, [[GLYPHS.index(symbol) for symbol in row] for row in rows]):
            return f"{digit} "
    return ""
