"""PNG figures without a display: the headless pyplot and the lay-out, write and close every zoo plot ends with."""
import os


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (writes files, needs no display), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path, dpi="figure", crop=False, **layout):
    """Lay `figure` out tightly (`layout`: `tight_layout`'s arguments; `crop`: keep the figure's own layout, a
    nested grid's, and crop the file to what is drawn), write it to `path` (making its folder) and close it (pyplot
    keeps every open figure alive otherwise); returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not crop:
        figure.tight_layout(**layout)
    figure.savefig(path, dpi=dpi, bbox_inches="tight" if crop else None)
    pyplot().close(figure)
    return path
