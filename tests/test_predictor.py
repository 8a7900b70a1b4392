"""OnnxPredictor: provider choice, any batch size, uint8/float inputs, clear errors for bad input."""
import keras
import numpy as np
import pytest

from kernelzoo.export import OnnxPredictor, to_onnx
from kernelzoo.layers import Mex, Similarity
from kernelzoo.ops import implementation


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """(uint8 SimNet .onnx, float32 model .onnx, the SimNet)."""
    root = tmp_path_factory.mktemp("predictor")
    keras.utils.set_random_seed(0)
    with implementation("composite"):
        simnet = keras.Sequential([
            keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255.0), Similarity(4, 3),
            Mex(num_instances=3, offsets="shared", offsets_initializer="random_normal"),
            keras.layers.GlobalAveragePooling2D()])
        dense = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="softmax")])
        return to_onnx(simnet, str(root / "u8.onnx")), to_onnx(dense, str(root / "f32.onnx")), simnet


def test_picks_cpu_without_a_gpu_and_describes_itself(paths):
    import onnxruntime as ort

    predictor = OnnxPredictor(paths[0])
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert predictor.provider == "CPUExecutionProvider"
    assert (predictor.input_name, predictor.input_dtype, predictor.input_shape) == ("images", np.uint8, (None, 8, 8, 3))
    assert predictor.output_names == ["logits", "probabilities"]
    assert predictor.signature["head"] == "classifier"
    assert "images uint8(N, 8, 8, 3)" in repr(predictor)


@pytest.mark.parametrize("batch", [0, 1, 7, 70])
def test_predict_any_batch_size_returns_probabilities(paths, batch):
    predictor = OnnxPredictor(paths[0], batch_size=32)
    images = np.random.default_rng(batch).integers(0, 256, (batch, 8, 8, 3), dtype=np.uint8)
    probabilities = predictor.predict(images)
    assert probabilities.shape == (batch, 3) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    if batch:
        with implementation("composite"):
            logits = keras.ops.convert_to_numpy(paths[2](images.astype("float32")))
        np.testing.assert_allclose(predictor.run(images)["logits"], logits, atol=1e-4)
        # whole-number floats are accepted for a uint8 model
        np.testing.assert_allclose(predictor.predict(images.astype("float64")), probabilities)


def test_uint8_model_takes_integer_pixels(paths):
    """Integers in [0, 255] of any integer dtype are pixels, as whole-number floats are (np.asarray of a list of
    pixels is int64)."""
    predictor = OnnxPredictor(paths[0])
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    expected = predictor.predict(images)
    for dtype in (np.int64, np.int32, np.uint16):
        np.testing.assert_array_equal(predictor.predict(images.astype(dtype)), expected)
    np.testing.assert_array_equal(predictor.predict(images.tolist()), expected)


def test_float_model_takes_uint8_and_float(paths):
    predictor = OnnxPredictor(paths[1])
    x = np.arange(10, dtype=np.uint8).reshape(2, 5)
    np.testing.assert_allclose(predictor.predict(x), predictor.predict(x.astype(np.float64)))
    assert predictor.predict([[0.1, 0.2, 0.3, 0.4, 0.5]]).shape == (1, 3)


def test_float_model_casts_ints_and_refuses_values_float32_cannot_hold(paths):
    """Integers are numbers to a float model (not pixels to convert to uint8); float64 beyond float32's range
    would become inf, and NaN outputs: an error instead. NaN inputs stay NaN (models may marginalise them)."""
    predictor = OnnxPredictor(paths[1])
    x = np.arange(10).reshape(2, 5)
    np.testing.assert_allclose(predictor.predict(x), predictor.predict(x.astype(np.float32)))
    assert predictor.predict([[1, 2, 3, 4, 5]]).shape == (1, 3)
    with pytest.raises(ValueError, match="beyond the float32 range"):
        predictor.predict(np.full((1, 5), 1e300))
    assert predictor.check_images(np.full((1, 5), np.nan)).dtype == np.float32
    with pytest.raises(ValueError, match=r"numbers \(float, int or uint8\), got dtype bool"):
        predictor.predict(np.zeros((1, 5), bool))


@pytest.mark.parametrize("images, message", [
    (np.zeros((8, 8, 3), np.uint8), r"shape \(N, 8, 8, 3\).*add a batch axis"),
    (np.zeros((2, 9, 8, 3), np.uint8), r"axis 1 is 9, expected 8"),
    (np.zeros((2, 8, 8, 1), np.uint8), r"axis 3 is 1, expected 3"),
    (np.full((2, 8, 8, 3), 256, np.int32), r"raw pixel values 0-255.*got int32"),
    (np.full((2, 8, 8, 3), -1), r"raw pixel values 0-255.*got int64"),
    (np.zeros((2, 8, 8, 3), bool), r"numbers \(float, int or uint8\), got dtype bool"),
    (np.full((2, 8, 8, 3), 0.5, np.float32), r"raw pixel values 0-255"),
    (np.full((2, 8, 8, 3), 300.0), r"raw pixel values 0-255"),
    (np.full((2, 8, 8, 3), np.nan), r"raw pixel values 0-255"),
    (np.array(["a"]), r"numbers|shape"),
])
def test_rejects_bad_input_clearly(paths, images, message):
    with pytest.raises(ValueError, match=message):
        OnnxPredictor(paths[0]).predict(images)


def test_constructor_errors(paths, tmp_path):
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        OnnxPredictor(str(tmp_path / "missing.onnx"))
    with pytest.raises(ValueError, match="not available here"):
        OnnxPredictor(paths[0], providers=["NoSuchExecutionProvider"])
    with pytest.raises(ValueError, match="batch_size"):
        OnnxPredictor(paths[0], batch_size=0)
    with pytest.raises(ValueError, match="`providers` is empty"):
        OnnxPredictor(paths[0], providers=[])
    assert OnnxPredictor(paths[0], providers="CPUExecutionProvider").provider == "CPUExecutionProvider"


def _foreign_model(path, node, inputs, outputs, constants=(), signature=None):
    """Save a one-node ONNX model (opset 13) not written by kernelzoo: `inputs` / `outputs` as (name, ONNX element
    type, shape), `constants` as (name, array) float32 or int64 initialisers; `signature` as kernelzoo_signature
    metadata. Returns `path`."""
    import onnx
    from onnx import helper, numpy_helper

    value_info = [helper.make_tensor_value_info(*entry) for entry in (*inputs, *outputs)]
    graph = helper.make_graph([node], path.stem, value_info[:len(inputs)], value_info[len(inputs):],
                              [numpy_helper.from_array(array, name) for name, array in constants])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    if signature is not None:
        helper.set_model_props(model, {"kernelzoo_signature": signature})
    onnx.save(model, str(path))
    return path


def test_a_fixed_batch_model_is_fed_that_many_rows_at_a_time(tmp_path):
    """A foreign ONNX file with input (2, 3): rows go in pairs, the last pair padded, its padding cut off."""
    from onnx import TensorProto, helper

    weights = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = _foreign_model(tmp_path / "fixed.onnx", helper.make_node("MatMul", ["x", "w"], ["y"]),
                          [("x", TensorProto.FLOAT, [2, 3])], [("y", TensorProto.FLOAT, [2, 4])], [("w", weights)])
    predictor = OnnxPredictor(path, batch_size=64)
    rows = np.random.default_rng(0).random((5, 3)).astype(np.float32)
    np.testing.assert_allclose(predictor.predict(rows), rows @ weights, rtol=1e-6)


def test_an_explicit_provider_that_does_not_start_is_an_error(paths, monkeypatch):
    """onnxruntime-gpu lists CUDA as available even where it cannot load CUDA, and then runs on the CPU: asked for
    CUDA, that is an error naming both; left to choose, the CPU with a warning."""
    import onnxruntime as ort

    real = ort.InferenceSession

    def without_cuda(path, options=None, providers=None):
        return real(path, options, providers=[p for p in providers if p != "CUDAExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", without_cuda)
    with pytest.raises(ValueError, match=r"could not start providers \['CUDAExecutionProvider'\].*"
                                         r"in use: \['CPUExecutionProvider'\]"):
        OnnxPredictor(paths[0], providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.warns(RuntimeWarning, match="could not use the GPU.*running on the CPU"):
        assert OnnxPredictor(paths[0]).provider == "CPUExecutionProvider"


def test_files_onnxruntime_cannot_load_or_run_raise_value_error_naming_them(tmp_path):
    from onnx import TensorProto, helper

    not_onnx = tmp_path / "model.keras"
    not_onnx.write_bytes(b"PK\x03\x04 not a protobuf")
    with pytest.raises(ValueError, match=f"onnxruntime cannot load '{not_onnx}'"):
        OnnxPredictor(not_onnx)
    path = _foreign_model(  # reshapes any (N, 3) batch to 4 values: fails when it runs
        tmp_path / "reshape.onnx", helper.make_node("Reshape", ["x", "shape"], ["y"]),
        [("x", TensorProto.FLOAT, ["N", 3])], [("y", TensorProto.FLOAT, [4])], [("shape", np.int64([4]))])
    with pytest.raises(ValueError, match=f"onnxruntime failed to run '{path}'"):
        OnnxPredictor(path).run(np.zeros((1, 3), np.float32))
    unreadable = _foreign_model(tmp_path / "signed.onnx", helper.make_node("Identity", ["x"], ["y"]),
                                [("x", TensorProto.FLOAT, ["N", 3])], [("y", TensorProto.FLOAT, ["N", 3])],
                                signature="{not json")
    with pytest.raises(ValueError, match=f"'{unreadable}': unreadable kernelzoo_signature metadata"):
        OnnxPredictor(unreadable)


def test_an_empty_batch_gives_each_output_its_own_dtype(tmp_path):
    """Zero images run nothing, yet each output comes back with the dtype the model declares (here uint8)."""
    from onnx import TensorProto, helper

    path = _foreign_model(tmp_path / "cast.onnx", helper.make_node("Cast", ["x"], ["y"], to=TensorProto.UINT8),
                          [("x", TensorProto.FLOAT, ["N", 3])], [("y", TensorProto.UINT8, ["N", 3])])
    predictor = OnnxPredictor(path)
    assert predictor.run(np.full((2, 3), 7.0, np.float32))["y"].dtype == np.uint8
    empty = predictor.run(np.zeros((0, 3), np.float32))["y"]
    assert empty.dtype == np.uint8 and empty.shape == (0, 3)


def test_run_draws_a_progress_bar_when_verbose(paths, capsys):
    images = np.zeros((5, 8, 8, 3), np.uint8)
    out = OnnxPredictor(paths[0], batch_size=2).run(images, verbose=True)
    assert out["logits"].shape == (5, 3) and "onnxruntime" in capsys.readouterr().out
