"""PNG figures without a display: the headless pyplot and the lay-out, write and close every zoo plot ends with."""
import os


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (writes files, needs no display), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path, dpi="figure", **layout):
    """Lay `figure` out tightly (`layout`: `tight_layout`'s arguments), write it to `path` (making its folder) and
    close it (pyplot keeps every open figure alive otherwise); returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.tight_layout(**layout)
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)
    return path
