"""The `kernelzoo` console script: dispatch, usage errors, and the offline demo."""
import subprocess
import sys

import pytest

from kernelzoo import __version__, cli


def test_version_and_help(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == __version__
    assert cli.main([]) == 0
    assert "build-ops" in capsys.readouterr().out


def test_unknown_command_and_bad_bench_target_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["frobnicate"])
    assert exit_info.value.code == 2
    assert cli.main(["bench", "gpu"]) == 2
    assert "kernelzoo bench {ops,deploy}" in capsys.readouterr().err


def test_demo_checks_the_special_cases_offline():
    result = subprocess.run([sys.executable, "-m", "kernelzoo.cli", "demo"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "linear unweighted similarity == Conv2D" in result.stdout
    assert "BAD" not in result.stdout
