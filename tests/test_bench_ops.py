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


@pytest.fixture
def stubbed_bench(monkeypatch):
    """`kernelzoo bench ops` with nothing built or timed: one op group (Conv2D and a custom row, 1 ms each) and
    training steps of fixed times (custom 0.1 s, composite 0.2 s)."""
    from kernelzoo.ops import bench

    def cases(shape, no_xla=False):
        for label, is_base in (("Conv2D", True), ("weighted l2 custom", False)):
            yield "similarity", label, is_base, lambda: (None, None)

    def step(what, impl, backend, args):
        return {"custom": 0.1, "composite": 0.2}[impl], 2**20, 2**21, None

    monkeypatch.setattr(library, "available", lambda: True)
    monkeypatch.setattr(bench, "_build_line", lambda: "custom ops built for the test")
    monkeypatch.setattr(bench, "_cases", cases)
    monkeypatch.setattr(bench, "_time", lambda fn, reps, warmup: 0.001)
    monkeypatch.setattr(bench, "_step_subprocess", step)
    return bench


def test_bench_ops_header_states_the_threads_tensorflow_runs_with(stubbed_bench, monkeypatch, capsys):
    """$TF_NUM_INTRAOP_THREADS sets TensorFlow's threads without --threads (TF reports 0 for its default then)."""
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "1")
    assert cli.main(["bench", "ops", "--shapes", "tiny", "--no-steps", "--memory", "none"]) == 0
    assert "intra-op threads 1" in capsys.readouterr().out.splitlines()[0]


@pytest.mark.parametrize("flag,value", [("--reps", "0"), ("--reps", "-1"), ("--warmup", "-1"), ("--threads", "-2")])
def test_bench_ops_names_a_bad_count(stubbed_bench, capsys, flag, value):
    assert cli.main(["bench", "ops", "--shapes", "tiny", "--no-steps", "--memory", "none", flag, value]) == 2
    assert f"`{flag}` must be" in capsys.readouterr().err


def test_time_is_the_median_of_the_runs(monkeypatch):
    """An even count of runs: the mean of the middle two, not the upper one."""
    import types

    from kernelzoo.ops import bench

    now, durations = [0.0], [0.5, 1.0, 2.0, 3.0, 4.0]  # one warm-up run, then four timed

    def run():
        now[0] += durations.pop(0)
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    assert bench._time(run, reps=4, warmup=1) == pytest.approx(2.5)


def _step_ratios(out):
    """{label: ratio} of the step table's rows that ran."""
    rows = [line for line in out.split("training steps", 1)[1].splitlines() if line[:30].strip()]
    return {line[:30].strip(): line[30:].split()[1] for line in rows
            if line[:30].strip() in ("custom", "composite", "composite (JAX)") and "skipped" not in line}


def test_step_ratios_are_to_the_custom_row_only(stubbed_bench, capsys):
    """Without the custom row (--only composite) the step table shows no ratio, not 1.00x under "time / custom"."""
    assert cli.main(["bench", "ops", "--steps-only", "--memory", "none"]) == 0
    ratios = _step_ratios(capsys.readouterr().out)
    assert ratios["custom"] == "1.00x" and ratios["composite"] == "2.00x"
    assert cli.main(["bench", "ops", "--steps-only", "--memory", "none", "--only", "composite"]) == 0
    ratios = _step_ratios(capsys.readouterr().out)
    assert "custom" not in ratios and ratios["composite"] == "-"
