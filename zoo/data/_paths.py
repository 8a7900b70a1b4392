"""Resolve the local data directory (argument, then KERNELZOO_DATA_DIR)."""
import os

from kernelzoo.ops import checks

ENV_VAR = "KERNELZOO_DATA_DIR"


def data_root(data_dir):
    """(root, argument): `data_dir`, else $KERNELZOO_DATA_DIR, with the name an error about it gives ("data_dir"
    or the variable, whichever set it); (None, None) when neither is set."""
    if data_dir is not None:
        return checks.path(data_dir, "data_dir"), "data_dir"
    root = os.environ.get(ENV_VAR)
    return (None, None) if root is None else (checks.path(root, ENV_VAR), ENV_VAR)


def local_dir(data_dir, subdir, marker):
    """The folder holding `marker`: data_dir/subdir or data_dir itself.

    Returns None when neither data_dir nor the environment variable is set
    (the caller may then use TensorFlow Datasets); raises a ValueError naming
    the path and the expected file when a directory is set but lacks it.
    """
    root, source = data_root(data_dir)
    if root is None:
        return None
    for folder in (os.path.join(root, subdir), root):
        if os.path.isfile(os.path.join(folder, marker)):
            return folder
    raise ValueError(
        f"{source}={root!r}: expected {marker!r} in {os.path.join(root, subdir)!r} "
        f"or in {root!r} itself")
