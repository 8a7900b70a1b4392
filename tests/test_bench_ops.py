"""`kernelzoo bench ops` runs end to end on its tiny shape (a smoke test, not a timing test)."""
import pytest

from kernelzoo import cli
from kernelzoo.ops import library

if library._compiler() is None:
    pytest.skip("no C++ compiler: the benchmark compares against the custom ops", allow_module_level=True)


def test_bench_ops_tiny_runs_every_row(capsys):
    assert cli.main(["bench", "ops", "--shapes", "tiny", "--reps", "1", "--warmup", "1", "--no-xla"]) == 0
    out = capsys.readouterr().out
    assert "failed" not in out, out
    groups = [line for line in out.splitlines() if line.startswith(("similarity tiny", "mex tiny"))]
    assert len(groups) == 7, groups
    assert "GEMM form against the direct loop" in groups[-2] and "xi fixed" in groups[-1]
    rows = {line.split()[0] + " " + " ".join(line.split()[1:-5]): line.split()[-5:]
            for line in out.splitlines() if line.startswith(("Conv2D", "weighted", "linear", "MaxPool2D", "mex "))}
    assert sum(line.startswith("parameters only") for line in out.splitlines()) == 2  # l1 and l2
    assert sum(line.startswith("xi fixed") for line in out.splitlines()) == 1
    for label in ["weighted l1 custom", "weighted lp composite", "mex custom direct", "mex custom GEMM"]:
        fwd_ms, fwd_ratio, fwdbwd_ms, fwdbwd_ratio, peak_mb = rows[label]
        assert float(fwd_ms) > 0 and float(fwdbwd_ms) > 0 and fwd_ratio.endswith("x"), (label, rows[label])
    assert rows["mex custom direct"][1] == rows["mex custom direct"][3] == "1.00x"


def test_step_peak_memory_is_the_child_process_own():
    """A step process started by one that once held 800 MB reports its own peak, not 800 MB (ru_maxrss would)."""
    import subprocess
    import sys

    import numpy as np

    held = np.ones(800 * 2**20 // 8)  # touched: resident in this process
    code = "from kernelzoo.ops import bench; print(bench._peak_rss())"
    child_peak = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0 < child_peak < held.nbytes


def test_forward_backward_cases_fetch_the_forward():
    """fwd+bwd returns the loss: TF prunes a forward op whose output nothing fetches, and the custom ops'
    gradients do not read it (the column then timed the backward alone)."""
    import numpy as np

    from kernelzoo.ops import bench

    cases = {label: build for group, label, _, build in bench._cases("tiny", no_xla=True)
             if group.startswith("similarity tiny (")}
    _, fwdbwd = cases["weighted l2 custom"]()
    loss, grads = fwdbwd()
    assert loss.shape == () and np.isfinite(float(loss)) and float(loss) != 0.0
    assert [tuple(g.shape) for g in grads] == [(2, 8, 8, 2), (3, 3, 2, 32), (3, 3, 2, 32)]  # input, z, u
