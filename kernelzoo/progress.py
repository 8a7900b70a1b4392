"""One kind of progress bar for every long step: the Keras bar that `model.fit` draws."""


def progress(iterable, total=None, label=None, verbose=True, unit="step"):
    """Yield the items of `iterable`, drawing a `keras.utils.Progbar` of `total` steps when `verbose`.

    `total` defaults to len(iterable) (None: the bar counts without an end); `label`, when
    given, is printed on the line above the bar, as `model.fit` prints "Epoch 1/5".
    """
    if not verbose:
        yield from iterable
        return
    import keras

    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if label:
        print(label, flush=True)
    bar = keras.utils.Progbar(total, unit_name=unit)
    done = 0
    for item in iterable:
        yield item
        done += 1
        bar.update(done)
    if done and (total is None or done < total):
        bar.update(done, finalize=True)
