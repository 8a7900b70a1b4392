"""kernelzoo.progress: the one progress bar (Keras's) of the long steps."""
from kernelzoo.progress import progress


def test_progress_yields_every_item_and_draws_a_keras_bar(capsys):
    assert list(progress(range(5), label="decoding", unit="image")) == [0, 1, 2, 3, 4]
    out = capsys.readouterr().out
    assert out.startswith("decoding\n") and "5/5" in out
    assert list(progress(iter("abc"))) == ["a", "b", "c"]  # no length: counts without an end
    assert "3/Unknown" in capsys.readouterr().out
    assert list(progress([1, 2], label="quiet", verbose=False)) == [1, 2]
    assert capsys.readouterr().out == ""


def test_progbar_for_loops_that_are_not_fit(capsys):
    from kernelzoo.progress import progbar

    assert progbar(3, "quiet", verbose=False) is None
    bar = progbar(3, "lbfgs: epochs", unit="epoch", values=("rmse",))
    bar.update(1, values=[("rmse", 1.5)])
    bar.update(3, values=[("rmse", 0.25)])
    out = capsys.readouterr().out
    assert out.startswith("lbfgs: epochs\n") and "3/3" in out and "rmse: 0.2500" in out  # the last value, not a mean
