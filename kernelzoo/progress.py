"""One kind of progress bar for every long step: the Keras bar that `model.fit` draws."""


def progbar(total, label=None, verbose=True, unit="step", values=()):
    """A `keras.utils.Progbar` of `total` steps (None: no end), or None when not `verbose`.

    `label`, when given, is printed on the line above the bar, as `model.fit` prints "Epoch 1/5";
    `values` names the figures passed to `update(..., values=[(name, value)])` that are shown as they
    are (not averaged), for loops that are not Keras `fit` (e.g. a loss per epoch).
    """
    if not verbose:
        return None
    import keras

    if label:
        print(label, flush=True)
    return keras.utils.Progbar(total, unit_name=unit, stateful_metrics=list(values))


def progress(iterable, total=None, label=None, verbose=True, unit="step"):
    """Yield the items of `iterable`, drawing a `progbar` of `total` steps when `verbose`.

    `total` defaults to len(iterable) (None: the bar counts without an end).
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    bar = progbar(total, label, verbose, unit)
    if bar is None:
        yield from iterable
        return
    done = 0
    for item in iterable:
        yield item
        done += 1
        bar.update(done)
    if done and (total is None or done < total):
        bar.update(done, finalize=True)
