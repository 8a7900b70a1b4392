"""PNG figures without a display: the headless pyplot and the lay-out, write and close every zoo plot ends with."""
import os


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (writes files, needs no display), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_path(path, name="path"):
    """`path`, checked as a figure file to write before any work (a command calls it first): ValueError naming
    `name` when it is a folder, lacks an extension matplotlib writes (savefig would add ".png" to a bare name
    and the command report the wrong file), or its folder cannot be made (made here)."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"`{name}` {path!r} is a folder; give a file such as {os.path.join(path, 'figure.png')!r}")
    formats = FigureCanvasBase.get_supported_filetypes()
    if os.path.splitext(path)[1][1:].lower() not in formats:
        raise ValueError(f"`{name}` {path!r} must end in an image format's extension: "
                         f"{', '.join('.' + extension for extension in sorted(formats))}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise ValueError(f"`{name}`: cannot make the folder {folder!r} ({error.strerror})") from None
    return path


def save_figure(figure, path, dpi="figure", crop=False, **layout):
    """Lay `figure` out tightly (`layout`: `tight_layout`'s arguments; `crop`: keep the figure's own layout, a
    nested grid's, and crop the file to what is drawn), write it to `path` (checked by `figure_path`, its folder
    made) and close it (pyplot keeps every open figure alive otherwise); returns `path`."""
    try:
        path = figure_path(path)
    except ValueError:
        pyplot().close(figure)
        raise
    if not crop:
        figure.tight_layout(**layout)
    figure.savefig(path, dpi=dpi, bbox_inches="tight" if crop else None)
    pyplot().close(figure)
    return path
