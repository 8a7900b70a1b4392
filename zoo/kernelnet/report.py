"""Summarise training runs (OUT/result.json files) as mean +- std for the cards.

    python -m kernelzoo.zoo.kernelnet.report runs/ml100k_u*
"""
import argparse
import json
import os
import sys

import numpy as np


def summarize(folders, key):
    """Rows of (folder, value, iterations/epochs, seconds) and (mean, std) of `key`."""
    rows = []
    for folder in folders:
        with open(os.path.join(folder, "result.json")) as handle:
            result = json.load(handle)
        if key not in result:
            raise ValueError(f"{folder}/result.json has no {key!r}")
        rows.append((folder, result[key], result.get("selected_iteration",
                                                    result.get("epochs")), result["seconds"]))
    values = np.array([r[1] for r in rows])
    return rows, (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m kernelzoo.zoo.kernelnet.report")
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--key", default="test_rmse")
    args = parser.parse_args(argv)
    rows, (mean, std) = summarize(args.folders, args.key)
    print(f"| run | {args.key} | iterations/epochs | seconds |\n|---|---|---|---|")
    for folder, value, steps, seconds in rows:
        print(f"| {os.path.basename(folder.rstrip('/'))} | {value:.4f} | {steps} | {seconds:.0f} |")
    print(f"\nmean {mean:.4f} +- {std:.4f} (sample std, n={len(rows)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
