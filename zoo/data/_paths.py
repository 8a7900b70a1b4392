"""Resolve the local data directory (argument, then KERNELZOO_DATA_DIR)."""
import os

from kernelzoo.ops import checks

ENV_VAR = "KERNELZOO_DATA_DIR"


def local_dir(data_dir, subdir, marker):
    """The folder holding `marker`: data_dir/subdir or data_dir itself.

    Returns None when neither data_dir nor the environment variable is set
    (the caller may then use TensorFlow Datasets); raises a ValueError naming
    the path and the expected file when a directory is set but lacks it.
    """
    root = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
    if root is None:
        return None
    root = checks.path(root, "data_dir")
    for folder in (os.path.join(root, subdir), root):
        if os.path.isfile(os.path.join(folder, marker)):
            return folder
    source = "data_dir" if data_dir is not None else ENV_VAR
    raise ValueError(
        f"{source}={root!r}: expected {marker!r} in {os.path.join(root, subdir)!r} "
        f"or in {root!r} itself")
