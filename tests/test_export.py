"""Export: Keras vs SavedModel vs ONNX round trips, serving without kernelzoo, graph checks, errors, CLI."""
import argparse
import json
import os
import sys
import textwrap

import keras
import numpy as np
import pytest

import kernelzoo
from kernelzoo.export import ExportError, OnnxPredictor, UnsupportedLayerError, serving_spec, to_onnx, to_saved_model
from kernelzoo.export.verify import (MAX_ABS_GOAL, artifact_outputs, compare, float32_tolerance, format_report,
                                     make_inputs, verify_artifact)
from kernelzoo.layers import Mex, Similarity
from kernelzoo.ops import implementation
from kernelzoo.zoo import registry
from kernelzoo.zoo.precision import dtype_policy

from conftest import started_job

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
RANDOM_OFFSETS = keras.initializers.RandomNormal(stddev=1.0, seed=3)  # untrained MEX offsets of 0 tie every class


def _simnet_l2():
    return keras.Sequential([
        keras.Input((12, 12, 3)), keras.layers.Rescaling(1 / 255.0),
        Similarity(8, 3, similarity="l2", weighted=True),
        Mex(num_instances=10, offsets=(2, 2), xi=1.0, offsets_initializer=RANDOM_OFFSETS),
        Mex(pool_size=10, channel_block=1, xi=0.0, learn_xi=False),
        keras.layers.Flatten()], name="simnet_l2")


def _simnet_l1():
    return keras.Sequential([
        keras.Input((12, 12, 3)), keras.layers.Normalization(mean=120.0, variance=60.0 ** 2),
        Similarity(6, 3, strides=2, padding="same", similarity="l1", weighted=False),
        Mex(num_instances=4, offsets="unshared", use_c=True, xi=[1.0, 0.0, -2.0, 0.5],
            offsets_initializer=RANDOM_OFFSETS),
        Mex(pool_size=6, channel_block=1, xi=float("inf"), learn_xi=False),
        keras.layers.Flatten()], name="simnet_l1")


def _simnet_lp_dense_softmax():
    return keras.Sequential([
        keras.Input((12, 12, 3)), keras.layers.Rescaling(1 / 255.0),
        Similarity(4, 3, similarity="lp", p=1.5, learn_p=True, normalization_term=True),
        Mex(num_instances=2, pool_size=2, channel_block=2, offsets="shared", offsets_initializer=RANDOM_OFFSETS),
        keras.layers.Flatten(), keras.layers.Dense(5, activation="softmax")], name="simnet_lp")


def _simnet_float_nan():
    """float32 input (no preprocessing), NaN marginalised, 'same' padding, softmax-mode MEX, linear head."""
    return keras.Sequential([
        keras.Input((10, 10, 3)),
        Similarity(6, 3, padding="same", similarity="lp", p=[1.0, 3.0, 1.5, 2.0, 0.5, 1.0], ignore_nan=True),
        Mex(num_instances=3, pool_size=(2, 3), strides=1, padding="same", offsets=(2, 2), softmax_mode=True,
            offsets_initializer=RANDOM_OFFSETS),
        Similarity(4, 1, similarity="linear"), keras.layers.GlobalAveragePooling2D()], name="simnet_float")


def _keras_cnn():
    return keras.Sequential([
        keras.Input((12, 12, 1)), keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.Flatten(), keras.layers.Dropout(0.3),
        keras.layers.Dense(5), keras.layers.Softmax()],
        name="keras_cnn")


def _kernelnet():
    from kernelzoo.zoo.kernelnet.mnist import kernelnet_mnist
    return kernelnet_mnist(grids=(2,), grid_sides=(5,), gammas=(150.0,), image_size=12)


def _ratings_autoencoder():
    from kernelzoo.layers.sparsify import SparsifyingActivation
    return keras.Sequential([keras.Input((20,)), keras.layers.Dense(8, activation="sigmoid"),
                             SparsifyingActivation(0.5), keras.layers.Dense(20)], name="autoencoder")


BUILDERS = {"simnet_l2": _simnet_l2, "simnet_l1": _simnet_l1, "simnet_lp": _simnet_lp_dense_softmax,
            "simnet_float": _simnet_float_nan, "keras_cnn": _keras_cnn, "kernelnet": _kernelnet,
            "autoencoder": _ratings_autoencoder}


@pytest.fixture(scope="module", autouse=True)
def composite_reference():
    """The Keras reference runs the composite ops here (the custom library is compared in its own test)."""
    with implementation("composite"):
        yield


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{name: (model, onnx path, SavedModel path)}, exported once for the module; then simnet_l2's SavedModel
    starts serving in a fresh process (test_saved_model_serves_without_kernelzoo)."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("exported")
    out = {}
    for name, build in BUILDERS.items():
        with implementation("composite"):
            model = build()
        out[name] = (model, to_onnx(model, str(root / f"{name}.onnx")),
                     to_saved_model(model, str(root / f"{name}_savedmodel")))
    _start_serving_without_kernelzoo(out["simnet_l2"][0], out["simnet_l2"][2], tmp_path_factory.mktemp("serving"))
    return out


def _check_parity(report, n):
    assert report["n"] == n
    assert report["nan_mismatch"] == 0
    assert report["max_abs"] <= float32_tolerance(report["max_reference"], report.get("rounding_floor", 0.0)), report
    assert report.get("top1_agreement", 1.0) == 1.0, report


@pytest.mark.parametrize("name", list(BUILDERS))
def test_round_trip_keras_saved_model_onnx(exported, reference_once, name):
    model, onnx_path, saved_path = exported[name]
    images, source = make_inputs(model, num=32, seed=1)
    assert source == "generated"
    for path in (onnx_path, saved_path):
        _check_parity(verify_artifact(model, path, images=images), 32)


def test_serving_spec_rules(exported):
    spec = {name: serving_spec(model) for name, (model, _, _) in exported.items()}
    assert (spec["simnet_l2"].input_dtype, spec["simnet_l2"].input_name) == ("uint8", "images")
    assert spec["simnet_l1"].input_dtype == "uint8"  # Normalization first: raw pixels
    assert spec["simnet_float"].input_dtype == "float32"
    assert spec["kernelnet"].input_dtype == "uint8" and spec["kernelnet"].logits_source == "activation"  # raw pixels
    assert spec["simnet_lp"].logits_source == "activation"
    assert spec["keras_cnn"].logits_source == "softmax_input"
    assert spec["autoencoder"].head == "raw" and spec["autoencoder"].output_names == ("outputs",)
    assert spec["simnet_l2"].output_names == ("logits", "probabilities")


def test_softmax_models_export_pre_softmax_logits(exported):
    model, onnx_path, _ = exported["keras_cnn"]
    images, _ = make_inputs(model, num=8)
    out = OnnxPredictor(onnx_path).run(images)
    probabilities = keras.ops.convert_to_numpy(model(images.astype("float32")))
    np.testing.assert_allclose(out["probabilities"], probabilities, atol=1e-6)
    logits = out["logits"]
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), probabilities, atol=1e-6)


def _dense_head(*layers, input_shape=(6, 6, 1)):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), *layers], name="dense_head")


def test_auto_rules_for_other_heads():
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    tf_softmax = serving_spec(_dense_head(keras.layers.Dense(3, activation=tf.nn.softmax)))
    assert (tf_softmax.head, tf_softmax.logits_source) == ("classifier", "activation")
    assert serving_spec(_dense_head(keras.layers.Dense(1, activation="sigmoid"))).head == "raw"
    assert serving_spec(_dense_head(keras.layers.Dense(4, activation="sigmoid"))).head == "raw"  # multi-label
    assert serving_spec(_dense_head(keras.layers.Dense(1))).head == "raw"
    nested = _dense_head(keras.Sequential([keras.layers.Dense(8), keras.layers.Dense(3, activation="softmax")]))
    assert serving_spec(nested).logits_source == "activation"
    nested_layer = _dense_head(keras.Sequential([keras.layers.Dense(3), keras.layers.Softmax()]))
    with pytest.raises(ExportError, match="nested model.*head='raw'"):
        serving_spec(nested_layer)
    assert serving_spec(nested_layer, head="raw").head == "raw"


def test_auto_input_dtype_looks_past_augmentation():
    conv = keras.layers.Conv2D(2, 3)
    flipped_floats = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.RandomFlip(), conv])
    assert serving_spec(flipped_floats).input_dtype == "float32"
    flipped_pixels = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.RandomFlip(),
                                       keras.layers.Rescaling(1 / 255.0), keras.layers.Conv2D(2, 3)])
    assert serving_spec(flipped_pixels).input_dtype == "uint8"


def test_verify_holds_the_artifact_to_the_models_own_output(tmp_path, monkeypatch):
    """An artifact whose logits are the model's probabilities (a final softmax not recognised at export)
    exports softmax(probabilities): the Keras reference reads the model the same way, so only the model's own
    output can tell; and an artifact of another model fails outright."""
    from kernelzoo.export import _common

    keras.utils.set_random_seed(0)
    model = _dense_head(keras.layers.Dense(3, activation="softmax"))
    images = np.random.default_rng(0).random((16, 6, 6, 1)).astype("float32")
    good = to_onnx(model, str(tmp_path / "good.onnx"))
    report = verify_artifact(model, good, images=images)
    assert report["ok"] and report["model_output"] == "probabilities" and report["model_output_max_abs"] < 1e-6
    with monkeypatch.context() as patch:
        patch.setattr(_common, "_has_softmax_activation", lambda layer: False)
        misread = to_onnx(model, str(tmp_path / "misread.onnx"))
    report = verify_artifact(model, misread, images=images)
    assert report["max_abs"] < 1e-6  # the artifact agrees with the Keras reference read its way ...
    assert report["model_output_max_abs"] > 0.05 and not report["ok"] and not report["ok_float32"]  # ... not the model
    other = _dense_head(keras.layers.Dense(3, activation="softmax"))
    report = verify_artifact(other, good, images=images)
    assert report["max_abs"] > 1e-3 and not report["ok"] and not report["ok_float32"]


def test_verify_refuses_probabilities_read_as_logits(tmp_path):
    """A softmax in a Lambda layer is no softmax export can recognise: the classifier signature applies another, on
    the artifact's side and the reference's alike; verify sees probabilities where logits should be and says
    head='raw', whose artifact then passes."""
    keras.utils.set_random_seed(0)
    model = _dense_head(keras.layers.Dense(3), keras.layers.Lambda(keras.ops.softmax))
    images = np.random.default_rng(0).random((4, 6, 6, 1)).astype("float32")
    with pytest.raises(ExportError, match="are probabilities .* head='raw'"):
        verify_artifact(model, to_onnx(model, str(tmp_path / "twice.onnx")), images=images)
    assert verify_artifact(model, to_onnx(model, str(tmp_path / "raw.onnx"), head="raw"), images=images)["ok"]


def test_verify_reads_the_signature_stored_in_the_artifact(tmp_path):
    keras.utils.set_random_seed(0)
    model = _dense_head(keras.layers.Dense(3, activation="softmax"))
    images = np.random.default_rng(0).random((4, 6, 6, 1)).astype("float32")
    for path in (to_onnx(model, str(tmp_path / "raw.onnx"), head="raw"),
                 to_saved_model(model, str(tmp_path / "raw_savedmodel"), head="raw")):
        report = verify_artifact(model, path, images=images)
        assert report["output"] == "outputs" and report["ok"], report
        with pytest.raises(ExportError, match="`head`: .* was exported with head='raw', not 'classifier'"):
            verify_artifact(model, path, images=images, head="classifier")
    with pytest.raises(ExportError, match="not an export of this model"):
        verify_artifact(_dense_head(keras.layers.Dense(3), input_shape=(5, 5, 1)), path, images=images)
    with pytest.raises(ExportError, match="images: no inputs"):
        verify_artifact(model, path, images=images[:0])
    nested = _dense_head(keras.Sequential([keras.layers.Dense(3), keras.layers.Softmax()]))  # auto refuses it
    raw = to_onnx(nested, str(tmp_path / "nested.onnx"), head="raw")
    assert verify_artifact(nested, raw, num=4)["ok"]  # the stored signature, generated inputs
    with pytest.raises(ExportError, match="num"):
        make_inputs(model, num=0)


def test_a_failed_export_leaves_no_directories(tmp_path):
    model = _with_layer(_PythonLayer(name="py_layer"))
    target = tmp_path / "new" / "deep"
    with pytest.raises(UnsupportedLayerError):
        to_saved_model(model, str(target / "sm"))
    with pytest.raises(UnsupportedLayerError):
        to_onnx(model, str(target / "m.onnx"))
    assert os.listdir(tmp_path) == []
    assert to_onnx(_with_layer(keras.layers.ReLU()), str(target / "m.onnx")) == str(target / "m.onnx")


def test_nan_inputs_are_marginalised_in_both_artifacts(exported, reference_once):
    model, onnx_path, saved_path = exported["simnet_float"]
    images = np.random.default_rng(2).random((16, 10, 10, 3)).astype("float32")
    images[images < 0.15] = np.nan
    for path in (onnx_path, saved_path):
        report = verify_artifact(model, path, images=images)
        _check_parity(report, 16)


@pytest.mark.parametrize("xi", [np.inf, -np.inf, [np.inf, 0.5]])
def test_mex_at_an_infinite_learned_xi_exports_without_nan(tmp_path, xi):
    """tf2onnx's own Select is c * a + (1 - c) * b: NaN where the branch not taken is infinite (ours: Where)."""
    model = keras.Sequential([keras.Input((4, 4, 2)), Mex(2, (2, 2), xi=xi, learn_xi=True)])
    images = np.random.default_rng(0).random((3, 4, 4, 2)).astype("float32")
    path = to_onnx(model, str(tmp_path / "mex.onnx"), head="raw", input_dtype="float32")
    np.testing.assert_allclose(artifact_outputs(path, images)["outputs"], model.predict(images, verbose=0),
                               atol=1e-6)


def test_onnx_files_hold_only_standard_domain_nodes(exported):
    import onnx

    for name, (_, onnx_path, _) in exported.items():
        proto = onnx.load(onnx_path)
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        nodes = list(_every_node(proto.graph))
        assert {node.domain for node in nodes} <= {""}, name
        for node in nodes:  # defined at opset 17 itself, not only under the opset the file declares
            assert onnx.defs.get_schema(node.op_type, 17, "").since_version <= 17, (name, node.op_type)
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        assert " (N, " in proto.doc_string  # shapes are written as everywhere else (predictor, CLI)
        signature = json.loads({p.key: p.value for p in proto.metadata_props}["kernelzoo_signature"])
        assert signature["input_name"] in ("images", "inputs")


def _every_node(graph):
    """The nodes of an ONNX graph and of its subgraphs (Loop bodies)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else []):
                yield from _every_node(sub)


def test_simnet_graph_is_lean(exported):
    """Similarity as convolutions, no patch-extraction ops, no TF leftovers; l1/lp and MEX in Loops.

    With a dynamic batch the composite l1/lp similarity and MEX run over blocks of rows in a
    Loop (bounded memory, kernelzoo.ops.blockwise); nothing else loops or branches.
    """
    import onnx

    for name in ("simnet_l2", "simnet_l1", "simnet_lp"):
        ops = {node.op_type for node in onnx.load(exported[name][1]).graph.node}
        assert {"Conv", "Loop"} <= ops, (name, ops)
        assert not ops & {"If", "Scan", "NonZero", "SpaceToDepth", "Expm1", "Log1p"}, (name, ops)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_dynamic_batch_sizes(exported, batch):
    model, onnx_path, saved_path = exported["simnet_l2"]
    images, _ = make_inputs(model, num=batch, seed=batch)
    reference = keras.ops.convert_to_numpy(model(images.astype("float32")))
    predictor = OnnxPredictor(onnx_path, batch_size=64)
    logits = predictor.run(images)["logits"]
    assert logits.shape == (batch, 10)
    np.testing.assert_allclose(logits, reference, atol=MAX_ABS_GOAL)
    np.testing.assert_allclose(artifact_outputs(saved_path, images)["logits"], reference, atol=MAX_ABS_GOAL)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_an_empty_batch_gives_empty_outputs_in_both_artifacts(exported, name):
    """TF's oneDNN Conv2D passes an empty batch through unchanged (keras_cnn then fails); the signature runs
    the model on one zero image instead, sliced to none, and plain onnxruntime gets the same graph."""
    import onnxruntime
    import tensorflow as tf

    from kernelzoo.export.saved_model import load_signature

    model, onnx_path, saved_path = exported[name]
    signature = load_signature(saved_path)
    (input_name, spec), = signature.structured_input_signature[1].items()
    empty = np.zeros((0, *spec.shape[1:]), spec.dtype.as_numpy_dtype)
    expected = (0, *model.output_shape[1:])
    for outputs in (signature(**{input_name: tf.constant(empty)}),
                    dict(zip(["first"], onnxruntime.InferenceSession(onnx_path).run(None, {input_name: empty})))):
        for value in outputs.values():
            assert tuple(value.shape) == expected, name


@pytest.mark.parametrize("shape", [(12, 12, 3), (2, 14, 12, 3), (2, 12, 12, 1)])
def test_the_saved_model_refuses_inputs_off_its_signature(exported, shape):
    """A missing batch axis aborted the serving process inside oneDNN; a wrong size ran and answered."""
    import tensorflow as tf

    from kernelzoo.export.saved_model import load_signature

    signature = load_signature(exported["simnet_l2"][2])
    with pytest.raises(tf.errors.InvalidArgumentError):
        signature(images=tf.zeros(shape, tf.uint8))


@pytest.mark.parametrize("opset", [13, 18])
def test_opset_range_ends_run_in_onnxruntime(exported, tmp_path, opset):
    model = exported["simnet_l1"][0]
    path = to_onnx(model, str(tmp_path / "m.onnx"), opset=opset)
    _check_parity(verify_artifact(model, path, num=8), 8)


_SERVING = {}


def _start_serving_without_kernelzoo(model, saved_path, folder):
    """A fresh process that cannot import kernelzoo serves the SavedModel: started as soon as `exported`
    has written it, beside the module's other tests (conftest.started_job)."""
    images, _ = make_inputs(model, num=5, seed=4)
    np.save(folder / "x.npy", images)
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "kernelzoo" or name.startswith("kernelzoo."):
                    raise ImportError("kernelzoo must not be imported here")
        sys.meta_path.insert(0, Block())
        import numpy as np, tensorflow as tf
        serve = tf.saved_model.load({saved_path!r}).signatures["serving_default"]
        out = serve(images=tf.constant(np.load({str(folder / 'x.npy')!r})))
        np.save({str(folder / 'y.npy')!r}, out["logits"].numpy())
        assert not any(m == "kernelzoo" or m.startswith("kernelzoo.") for m in sys.modules)
        print(sorted(out))
    """)
    env = dict(os.environ, KERNELZOO_OPS="composite", TF_CPP_MIN_LOG_LEVEL="3", KERNELZOO_CACHE=str(folder))
    _SERVING.update(images=images, folder=folder, job=started_job(
        "export serving without kernelzoo", dict(args=[sys.executable, "-c", script], env=env, cwd=str(folder),
                                                 timeout=240)))


def test_saved_model_serves_without_kernelzoo(exported):
    model = exported["simnet_l2"][0]
    (result,) = _SERVING["job"].results()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "['logits', 'probabilities']" in result.stdout
    reference = keras.ops.convert_to_numpy(model(_SERVING["images"].astype("float32")))
    np.testing.assert_allclose(np.load(_SERVING["folder"] / "y.npy"), reference, atol=MAX_ABS_GOAL)


@pytest.mark.parametrize("impl", ["custom"], indirect=True)
def test_keras_with_custom_ops_matches_exports(exported, reference_once, impl):
    """Keras on the C++ ops (conftest's `impl`: skipped only without a compiler, a library that fails to build
    fails) matches both exports of the composite graph."""
    model, onnx_path, saved_path = exported["simnet_l2"]
    images, _ = make_inputs(model, num=16)
    for path in (onnx_path, saved_path):
        _check_parity(verify_artifact(model, path, images=images), 16)


def test_centred_simnet_meets_the_absolute_goal(tmp_path):
    """A SimNet with centred logits (ClassCentering, issue 12) exports within 1e-4 absolute, top-1 exact."""
    from kernelzoo.zoo.simnet import init, models
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 16, 16, 3)).astype("float32")
    model = models.simnet_patch_labeling(n=16, p=1, input_shape=(16, 16, 3), patch_size=4)
    init.unsupervised_init(model, images, num_patches=2000, iterations=3)
    offsets = model.get_layer("mex_templates").offsets_variable
    offsets.assign(rng.normal(size=offsets.shape).astype("float32"))
    report = verify_artifact(model, to_onnx(model, str(tmp_path / "centred.onnx")), images=images[:32])
    assert report["ok"] and report["top1_agreement"] == 1.0, report


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "float64"])
def test_models_under_other_dtype_policies_export_and_verify_as_float32_copies(tmp_path, policy):
    """A bfloat16 graph fails onnx.checker and float64 convolutions do not run in onnxruntime: both formats
    export a float32 copy (saying so), and verify compares it with the same float32 computation."""
    keras.utils.set_random_seed(0)
    with dtype_policy(policy):
        model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Rescaling(1 / 255.0), keras.layers.Conv2D(3, 3),
                                  keras.layers.Flatten(), keras.layers.Dense(4, activation="softmax")], name="low")
    for export, target in ((to_onnx, "m.onnx"), (to_saved_model, "sm")):
        with pytest.warns(RuntimeWarning, match=f"dtype policy {policy}: exporting and verifying a float32 copy"):
            path = export(model, str(tmp_path / target))
        with pytest.warns(RuntimeWarning, match="float32 copy"):
            report = verify_artifact(model, path, num=8)
        assert report["ok"] and report["model_output_max_abs"] < 1e-6, report
    assert model.layers[1].dtype_policy.name == policy  # the user's model is left as it was


def test_a_model_that_cannot_be_copied_to_float32_is_refused_before_converting(tmp_path, monkeypatch):
    def no_clone(*args, **kwargs):
        raise ValueError("cannot clone a subclassed model")

    with dtype_policy("mixed_bfloat16"):
        model = _with_layer(keras.layers.ReLU())
    monkeypatch.setattr(keras.models, "clone_model", no_clone)
    with pytest.raises(ExportError, match="dtype policy mixed_bfloat16 and cannot be copied to float32"):
        to_onnx(model, str(tmp_path / "m.onnx"))
    assert os.listdir(tmp_path) == []


def test_verify_feeds_keras_and_the_artifact_the_same_checked_inputs(tmp_path):
    """A uint8 signature takes whole numbers 0-255: scaled or out-of-range floats are an error in both formats
    (a SavedModel used to truncate them while Keras got the floats), whole-number floats are pixels."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Rescaling(1 / 255.0), keras.layers.Flatten(),
                              keras.layers.Dense(3)], name="pixels")
    scaled = np.random.default_rng(1).random((4, 6, 6, 1))
    for path in (to_onnx(model, str(tmp_path / "m.onnx")), to_saved_model(model, str(tmp_path / "sm"))):
        for images in (scaled.astype("float32"), np.full((2, 6, 6, 1), 300.0, "float32")):
            with pytest.raises(ExportError, match="raw pixel values 0-255"):
                verify_artifact(model, path, images=images)
        report = verify_artifact(model, path, images=np.round(scaled * 255))
        assert report["ok"] and report["max_abs"] == 0.0, report
        with pytest.raises(ValueError, match="raw pixel values 0-255"):
            artifact_outputs(path, scaled)


def test_generated_inputs_follow_a_uint8_signature_of_any_rank(tmp_path):
    keras.utils.set_random_seed(0)
    mlp = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(5)])
    images, _ = make_inputs(mlp, num=4, input_dtype="uint8")
    assert images.dtype == np.uint8 and images.shape == (4, 5)
    for path in (to_onnx(mlp, str(tmp_path / "m.onnx"), input_dtype="uint8"),
                 to_saved_model(mlp, str(tmp_path / "sm"), input_dtype="uint8")):
        report = verify_artifact(mlp, path, num=4)
        assert report["ok"] and report["max_abs"] == 0.0, report


def test_a_directory_that_holds_no_saved_model_is_an_export_error(tmp_path):
    with pytest.raises(ExportError, match="cannot load .* as a SavedModel"):
        artifact_outputs(str(tmp_path), np.zeros((1, 5), np.float32))


def test_verify_checks_batch_size_first(exported):
    model, onnx_path, _ = exported["autoencoder"]
    with pytest.raises(ExportError, match="`batch_size` must be a positive int, got 0"):
        verify_artifact(model, onnx_path, num=2, batch_size=0)


def test_an_explicit_classifier_head_needs_softmax_logits():
    """softmax of one unit is always 1, of sigmoid outputs meaningless: head='classifier' refuses both."""
    with pytest.raises(ExportError, match=r"classes >= 2.*\(None, 1\)"):
        serving_spec(_dense_head(keras.layers.Dense(1)), head="classifier")
    with pytest.raises(ExportError, match="ends in a sigmoid"):
        serving_spec(_dense_head(keras.layers.Dense(3, activation="sigmoid")), head="classifier")
    assert serving_spec(_dense_head(keras.layers.Dense(3)), head="classifier").head == "classifier"


# --- the zoo registry ---------------------------------------------------------------------------

def _round_trip_names():
    """Every shipped model, plus the first preset of each builder that ships none: a fresh model still
    checks that builder's export path (a 512/8192 CKN would only repeat the 256/1024 one's, at minutes)."""
    names = registry.list_models()
    shipped = [name for name in names if registry.info(name).pretrained]
    covered = {registry.info(name).builder for name in shipped}
    fresh = {}
    for name in names:
        builder = registry.info(name).builder
        if builder not in covered:
            fresh.setdefault(builder, name)
    return shipped + list(fresh.values())


_ROUND_TRIP_NAMES = _round_trip_names()
# A SavedModel runs the model's own TensorFlow graph, so its parity does not depend on the weights: one model per
# builder checks it. ONNX runs other kernels, where the weights' scale matters (issue 12's logits): every model.
_SAVED_MODEL_NAMES = set({registry.info(name).builder: name for name in reversed(_ROUND_TRIP_NAMES)}.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", _ROUND_TRIP_NAMES)
def test_zoo_model_round_trip(tmp_path, reference_once, name):
    """Keras runs the C++ ops where the library is built (as users run it), the ONNX model the traced composite:
    for simnet_cifar10_wl1_n400's soft MEX (xi1 = 0.1) that is the float32 goal of docs/export.md."""
    zoo = kernelzoo.zoo
    model = zoo.load(name) if registry.info(name).pretrained else zoo.create(name)
    paths = [to_onnx(model, str(tmp_path / "m.onnx"))]
    if name in _SAVED_MODEL_NAMES:
        paths.append(to_saved_model(model, str(tmp_path / "saved")))
    sources = [make_inputs(model, num=16)[0]]
    if os.path.isdir(SHARED_DATA):
        try:
            sources.append(make_inputs(model, data_dir=SHARED_DATA, num=16, preset=name)[0])
        except ExportError as error:
            info = registry.info(name)
            absent = f"no copy of {info.dataset.name!r} found" in str(error)  # STL-10 is not in shared/data
            if info.task == "classification" and not absent:
                raise  # an image classifier whose data is there verifies on its test images too
            # else no test images: the MovieLens and MNIST autoencoders
    images = np.concatenate(sources)  # one verification per artifact: generated and real inputs together
    for path in paths:
        _check_parity(verify_artifact(model, path, images=images), len(images))


@pytest.mark.data
@pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="../shared/data not present")
def test_verify_on_real_test_splits(tmp_path):
    keras.utils.set_random_seed(1)
    mnist = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Rescaling(1 / 255.0),
                              Similarity(6, 5, strides=2), Mex(num_instances=10, offsets="shared",
                                                               offsets_initializer=RANDOM_OFFSETS),
                              Mex(pool_size=12, channel_block=1, xi=0.0, learn_xi=False), keras.layers.Flatten()])
    report = verify_artifact(mnist, to_onnx(mnist, str(tmp_path / "mnist.onnx")), data_dir=SHARED_DATA,
                             preset="kernelnet_mnist_prior", num=40)
    assert report["inputs"].startswith("mnist test split")
    _check_parity(report, 40)
    images, source = make_inputs(_simnet_l2_32(), data_dir=SHARED_DATA, num=20, preset="simnet_cifar10_l1")
    assert source.startswith("cifar10 test split") and images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    assert len({images[i].tobytes() for i in range(20)}) == 20
    with pytest.raises(ExportError, match="no test split"):  # nothing says which dataset: no guessing
        make_inputs(_simnet_l2_32(), data_dir=SHARED_DATA, num=20)


def _simnet_l2_32():
    return keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255.0),
                             Similarity(2, 3), keras.layers.GlobalAveragePooling2D()])


# --- errors ---------------------------------------------------------------------------------------

class _Bessel(keras.layers.Layer):
    def call(self, x):
        import tensorflow as tf
        return tf.math.bessel_i0e(x)


class _PythonLayer(keras.layers.Layer):
    def call(self, x):
        import tensorflow as tf
        return tf.ensure_shape(tf.numpy_function(lambda a: a * 2, [x], tf.float32, stateful=False), x.shape)

    def compute_output_shape(self, shape):
        return shape


def _with_layer(layer):
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), layer, keras.layers.Dense(3)])


def test_unsupported_layers_are_named(tmp_path):
    with pytest.raises(UnsupportedLayerError, match="layer 'odd_bessel'.*BesselI0e") as info:
        to_onnx(_with_layer(_Bessel(name="odd_bessel")), str(tmp_path / "b.onnx"))
    assert info.value.layer == "odd_bessel"
    python_model = _with_layer(_PythonLayer(name="py_layer"))
    with pytest.raises(UnsupportedLayerError, match="layer 'py_layer'.*runs Python code"):
        to_saved_model(python_model, str(tmp_path / "p"))
    with pytest.raises(UnsupportedLayerError, match="layer 'py_layer'"):
        to_onnx(python_model, str(tmp_path / "p.onnx"))
    assert os.listdir(tmp_path) == []  # nothing half-written


@pytest.mark.parametrize("opset", [12, 19, "17", True, 17.0])
def test_opset_out_of_range(tmp_path, opset):
    with pytest.raises(ExportError, match="opset"):
        to_onnx(_with_layer(keras.layers.ReLU()), str(tmp_path / "m.onnx"), opset=opset)


def test_unwritable_paths(tmp_path):
    model = _with_layer(keras.layers.ReLU())
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="is a file, not a directory"):
        to_onnx(model, str(blocker / "m.onnx"))
    with pytest.raises(ExportError, match="is a directory"):
        to_onnx(model, str(tmp_path))
    with pytest.raises(ExportError, match="a file of that name exists"):
        to_saved_model(model, str(blocker))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("precious")
    with pytest.raises(ExportError, match="not empty and holds no SavedModel"):
        to_saved_model(model, str(tmp_path / "data"))
    assert (tmp_path / "data" / "keep.txt").read_text() == "precious"
    with pytest.raises(ExportError, match="ends in a path separator"):
        to_onnx(model, str(tmp_path / "newdir") + os.sep)
    assert not os.path.exists(tmp_path / "newdir")
    victim = tmp_path / "victim.keras"
    victim.write_bytes(b"the model")
    with pytest.raises(ExportError, match="exists and is not an .onnx file"):
        to_onnx(model, str(victim))
    assert victim.read_bytes() == b"the model"
    unsuffixed = to_onnx(model, str(tmp_path / "exported"))  # no .onnx, but an export of ours: replaced
    assert to_onnx(model, unsuffixed) == unsuffixed
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ExportError, match="no write permission"):
            to_onnx(model, str(locked / "m.onnx"))


def test_artifacts_are_written_with_the_modes_the_umask_gives(tmp_path, monkeypatch):
    """Under umask 027 an ONNX file is rw-r----- and a SavedModel folder rwxr-x---, as any file the user writes;
    export never sets the umask (reading it so would, for a moment, for every thread of the process)."""
    import stat

    model = _linear_model(np.eye(3), name="mlp")
    mask = os.umask(0o027)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(os, "umask", lambda *args: pytest.fail("export set the umask"))
            onnx_path = to_onnx(model, str(tmp_path / "m.onnx"))
            saved_path = to_saved_model(model, str(tmp_path / "saved"))
    finally:
        os.umask(mask)
    assert stat.S_IMODE(os.stat(onnx_path).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(saved_path).st_mode) == 0o750


def test_failed_saved_model_write_keeps_the_old_one(tmp_path, monkeypatch):
    import tensorflow as tf

    model = _with_layer(keras.layers.ReLU())
    target = to_saved_model(model, str(tmp_path / "sm"))
    before = sorted(os.listdir(target))

    def broken_save(obj, path, **kwargs):
        with open(os.path.join(path, "partial.pb"), "w") as handle:
            handle.write("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(ExportError, match="No space left"):
        to_saved_model(model, target)
    assert sorted(os.listdir(target)) == before
    assert os.listdir(tmp_path) == ["sm"]  # the temp dir is gone
    monkeypatch.undo()
    assert to_saved_model(model, target) == target  # an existing SavedModel is replaced


def test_a_failing_tf2onnx_optimizer_is_reported(tmp_path, monkeypatch):
    """tf2onnx keeps the graph from before an optimizer that raises and only logs it: the export warns."""
    from tf2onnx import optimizer

    class Broken:
        graph_been_opt = False

        def optimize(self, graph, iteration):
            raise ValueError("max() arg is an empty sequence")  # as TransposeOptimizer raised on a layerwise model

    real = optimizer._get_optimizers
    monkeypatch.setattr(optimizer, "_get_optimizers", lambda: {"BrokenOptimizer": Broken, **real()})
    model = _keras_cnn()
    with pytest.warns(RuntimeWarning, match=r"BrokenOptimizer \(ValueError: max\(\) arg is an empty sequence\)"):
        path = to_onnx(model, str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).integers(0, 256, size=(3, 12, 12, 1)).astype("uint8")
    np.testing.assert_allclose(OnnxPredictor(path).predict(x), model.predict(x.astype("float32"), verbose=0),
                               atol=1e-5)  # the graph from before the broken optimizer is correct


def test_compare_counts_ties_as_agreement():
    reference = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    exported = np.array([[1.0, 1.0 + 1e-7, 0.0], [1.5, 2.0, 1.0]])
    report = compare(reference, exported, top1=True)
    assert report["top1_agreement"] == 1.0 and report["top1_exact"] == 0.5
    assert report["max_abs"] == pytest.approx(1.5)
    assert compare(reference, reference + [[0, 0, 0], [3.0, 0, 0]], top1=True)["top1_agreement"] == 0.5
    assert "top1_agreement" not in compare(reference, exported)  # raw outputs: no argmax to agree on


def test_compare_counts_the_same_non_finite_values_as_equal():
    reference = np.array([[np.nan, np.inf, -np.inf, 1.0]])
    assert compare(reference, reference.copy())["max_abs"] == 0.0
    report = compare(reference, np.array([[np.nan, np.inf, np.inf, 1.0]]))
    assert report["max_abs"] == np.inf
    assert np.isnan(compare(reference, np.array([[0.0, np.inf, -np.inf, 1.0]]))["max_abs"])


def test_rounding_floor_measures_how_far_float32_steps_move_a_model():
    """A rounding step of four inputs of 100 (~1e-5 each) moves their sum by at most a few 1e-5; times a gain of
    1e6, by tens; the float32 goal then allows ROUNDING_MARGIN times that."""
    from kernelzoo.export.verify import ROUNDING_MARGIN, rounding_floor
    images = np.full((8, 4), 100.0, "float32")
    for gain, low, high in ((1.0, 1e-6, 1e-4), (1e6, 1.0, 200.0)):
        model = keras.Sequential([keras.Input((4,)),
                                  keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant(gain))])
        floor = rounding_floor(model, images, output=serving_spec(model).output_names[0])
        assert low < floor < high, (gain, floor)
    assert float32_tolerance(3.0, 0.1) == pytest.approx(ROUNDING_MARGIN * 0.1)


def test_float32_tolerance_is_absolute_for_small_outputs_relative_for_large():
    assert float32_tolerance(3.0) == MAX_ABS_GOAL
    assert float32_tolerance(7.3e4) == pytest.approx(0.073)
    reference = np.array([[-73000.0, -73004.0, -73010.0]])
    report = compare(reference, reference + [[0.03, 0.0, 0.0]])
    assert report["max_reference"] == 73010.0
    assert report["max_abs"] <= float32_tolerance(report["max_reference"])
    assert compare(reference, reference + [[0.5, 0.0, 0.0]])["max_abs"] > float32_tolerance(73010.0)
    lines = format_report(dict(report, inputs="given", output="logits", ok=False, ok_float32=True))
    assert "parity goal" in lines and "NOT met" in lines and "float32 goal" in lines and "spacing is 0.0078" in lines


def test_an_infinite_keras_output_does_not_make_the_float32_goal_infinite():
    """max_reference is the largest finite |output|: an inf Keras output against a finite exported one fails."""
    report = compare(np.array([[np.inf, 2.0], [1.0, -3.0]]), np.array([[5.0, 2.0], [1.0, -3.0]]))
    assert report["max_reference"] == 3.0 and report["max_abs"] == np.inf
    assert not report["max_abs"] <= float32_tolerance(report["max_reference"])


def test_ties_of_large_logits_are_relative_to_their_size():
    """At |logit| ~ 7e4 float32 spacing is 0.0078: logits one step apart are a tie, not a disagreement."""
    big = float(np.float32(73000.0) + np.spacing(np.float32(73000.0)))  # 73000.0078125
    report = compare(np.array([[big, 73000.0, 1.0]]), np.array([[73000.0, big, 1.0]]), top1=True)
    assert report["top1_agreement"] == 1.0 and report["top1_exact"] == 0.0
    assert compare(np.array([[1.1, 1.0]]), np.array([[1.0, 1.1]]), top1=True)["top1_agreement"] == 0.0


def _linear_model(kernel, bias=0.0, input_shape=None, name="linear"):
    """Dense(len(kernel[0])) on the flattened input with a fixed kernel and bias (exact arithmetic for small
    integer weights)."""
    kernel = np.asarray(kernel, "float32")
    dense = keras.layers.Dense(kernel.shape[1], kernel_initializer=keras.initializers.Constant(kernel),
                               bias_initializer=keras.initializers.Constant(bias))
    if input_shape is None:
        return keras.Sequential([keras.Input((kernel.shape[0],)), dense], name=name)
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), dense], name=name)


def test_one_disagreeing_image_in_a_hundred_fails_both_goals(tmp_path, monkeypatch):
    """An artifact of the same image classifier with two classes swapped: 99 images tie those classes exactly,
    the hundredth's top two are 5e-5 apart (more than a tie, within the absolute goal). A NaN model-output
    difference fails both goals too."""
    from kernelzoo.export import verify

    keras.utils.set_random_seed(0)
    model = _linear_model(np.eye(3), input_shape=(1, 1, 3), name="identity")
    swapped = _linear_model(np.eye(3)[:, [1, 0, 2]], input_shape=(1, 1, 3), name="swapped")
    assert serving_spec(model).head == "classifier"
    images = np.tile(np.float32([1.0, 1.0, 0.0]), (100, 1)).reshape(100, 1, 1, 3)
    images[7, 0, 0, 1] = np.float32(1.0 - 5e-5)
    path = to_onnx(swapped, str(tmp_path / "swapped.onnx"))
    report = verify_artifact(model, path, images=images)
    assert report["top1_agreement"] == 0.99 and 4e-5 < report["max_abs"] < MAX_ABS_GOAL, report
    assert not report["ok"] and not report["ok_float32"], report
    same = to_onnx(model, str(tmp_path / "same.onnx"))
    assert verify_artifact(model, same, images=images)["ok"]
    monkeypatch.setattr(verify, "_model_output_check", lambda *args: {"model_output": "logits",
                                                                      "model_output_max_abs": float("nan")})
    report = verify_artifact(model, same, images=images)
    assert report["max_abs"] == 0.0 and report["top1_agreement"] == 1.0
    assert not report["ok"] and not report["ok_float32"], report


def test_rounding_floor_is_the_exact_largest_move_under_random_sign_steps():
    """outputs x0 - x1 at x = (1, 1): a step of 2^-23 with opposite signs moves them by exactly 2^-22, with
    the same sign not at all; the floor is the largest move over the images (some have the same signs)."""
    from kernelzoo.export.verify import rounding_floor

    model = _linear_model([[1.0], [-1.0]], name="difference")
    assert serving_spec(model).output_names == ("outputs",)
    images = np.ones((16, 2), "float32")
    assert rounding_floor(model, images, output="outputs") == 2.0 ** -22
    gained = _linear_model([[2.0 ** 20], [-2.0 ** 20]], name="gained")
    assert rounding_floor(gained, images, output="outputs") == 0.25


def test_the_float32_goal_allows_the_rounding_margin_times_the_floor(tmp_path):
    """A model that moves by 0.25 under a float32 rounding step of its inputs (outputs 0): an artifact off by
    0.5 meets the float32 goal (ROUNDING_MARGIN x 0.25 = 1), one off by 2 does not."""
    from kernelzoo.export.verify import ROUNDING_MARGIN

    assert ROUNDING_MARGIN == 4
    kernel = [[2.0 ** 20], [-2.0 ** 20]]
    model = _linear_model(kernel, name="gained")
    images = np.ones((16, 2), "float32")
    for offset, met in ((0.5, True), (2.0, False)):
        path = to_onnx(_linear_model(kernel, bias=offset, name="offset"), str(tmp_path / f"offset{offset}.onnx"))
        report = verify_artifact(model, path, images=images)
        assert report["max_abs"] == offset and report["max_reference"] == 0.0, report
        assert report["rounding_floor"] == 0.25 and not report["ok"], report
        assert report["ok_float32"] is met, report


def test_an_explicit_input_dtype_must_match_the_stored_signature(tmp_path):
    from kernelzoo.export.verify import artifact_spec

    keras.utils.set_random_seed(0)
    model = _linear_model(np.eye(3), name="mlp")
    path = to_onnx(model, str(tmp_path / "m.onnx"), input_dtype="uint8")
    assert artifact_spec(model, path).input_dtype == "uint8"
    assert artifact_spec(model, path, input_dtype="uint8").input_dtype == "uint8"
    with pytest.raises(ExportError, match="`input_dtype`: .* was exported with input_dtype='uint8', not 'float32'"):
        artifact_spec(model, path, input_dtype="float32")
    with pytest.raises(ExportError, match="`input_dtype`: .* was exported with input_dtype='uint8'"):
        verify_artifact(model, path, num=2, input_dtype="float32")
    assert artifact_spec(model, path, input_dtype="UINT8", head="Raw").input_dtype == "uint8"  # as serving_spec
    with pytest.raises(ExportError, match="head.*'auto', 'classifier', 'raw'"):
        artifact_spec(model, path, head="logits")


def test_verify_refuses_what_is_no_artifact_before_the_model_runs(tmp_path, monkeypatch):
    """A file that is not ONNX and a folder without a SavedModel: an ExportError naming the path, and no Keras pass."""
    from kernelzoo.export import verify

    monkeypatch.setattr(verify, "reference_outputs", lambda *args, **kwargs: pytest.fail("the model ran"))
    model = _linear_model(np.eye(3), name="mlp")
    (tmp_path / "notes.onnx").write_bytes(b"not a protobuf \xff\xff\xff")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="notes.onnx' is not an ONNX model"):
        verify_artifact(model, str(tmp_path / "notes.onnx"), num=2)
    with pytest.raises(ExportError, match="empty' is not a SavedModel directory"):
        verify_artifact(model, str(tmp_path / "empty"), num=2)


def test_auto_rules_for_tabular_two_class_and_hard_sigmoid_models():
    keras.utils.set_random_seed(0)
    tabular = keras.Sequential([keras.Input((5,)), keras.layers.Normalization(mean=0.0, variance=1.0),
                                keras.layers.Dense(3)])
    assert serving_spec(tabular).input_dtype == "float32"  # Normalization first, but not pixels
    assert serving_spec(_dense_head(keras.layers.Dense(2, activation="softmax"))).head == "classifier"
    assert serving_spec(_dense_head(keras.layers.Dense(2))).head == "classifier"
    softmax_mlp = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="softmax")])
    assert serving_spec(softmax_mlp).head == "classifier"
    assert serving_spec(keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])).head == "raw"
    assert serving_spec(_dense_head(keras.layers.Dense(3, activation="hard_sigmoid"))).head == "raw"


def test_a_raw_head_exports_a_final_softmax_as_it_is(tmp_path):
    """head='raw' on a model ending in Dense(softmax): `outputs` are the model's probabilities, not logits."""
    keras.utils.set_random_seed(0)
    model = _dense_head(keras.layers.Dense(3, activation="softmax"))
    images = np.random.default_rng(0).random((4, 6, 6, 1)).astype("float32")
    probabilities = keras.ops.convert_to_numpy(model(images))
    for path in (to_onnx(model, str(tmp_path / "raw.onnx"), head="raw"),
                 to_saved_model(model, str(tmp_path / "raw_savedmodel"), head="raw")):
        outputs = artifact_outputs(path, images)["outputs"]
        np.testing.assert_allclose(outputs, probabilities, atol=1e-6)
        np.testing.assert_allclose(outputs.sum(1), 1.0, atol=1e-6)
    assert serving_spec(model, head="raw").logits_source == "output"


# --- command line ---------------------------------------------------------------------------------

def _cli(argv):
    from kernelzoo import cli
    return cli.main(["export", *argv])


def test_cli_export_and_verify(exported, tmp_path, capsys):
    model = exported["simnet_l2"][0]
    keras_file = str(tmp_path / "simnet.keras")
    model.save(keras_file)
    assert _cli([keras_file, "--format", "onnx", "-o", str(tmp_path / "out.onnx"), "--opset", "15",
                 "--verify", "--num", "24"]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "input images uint8 (N, 12, 12, 3) -> logits, probabilities" in text
    assert "max abs diff" in text and "top-1 agreement 100.00 %" in text and ": met" in text
    assert _cli([keras_file, "-o", str(tmp_path / "sm"), "--verify", "--num", "8"]) == 0
    assert os.path.isfile(tmp_path / "sm" / "saved_model.pb")
    assert _cli([keras_file, "-o", str(tmp_path / "x.onnx"), "--opset", "20"]) == 2
    assert _cli([str(tmp_path / "missing.keras"), "-o", str(tmp_path / "y.onnx")]) == 2
    assert _cli([str(tmp_path / "sm"), "-o", str(tmp_path / "z.onnx")]) == 2
    assert _cli([keras_file, "-o", str(tmp_path / "w.onnx"), "--verify", "--preset", "simnet_cifar10_l2",
                 "--data-dir", ""]) == 2
    errors = capsys.readouterr().err
    assert "opset" in errors and "no model file" in errors and "'" + str(tmp_path / "sm") + "' is a directory" in errors
    assert "--preset: names the test split" in errors


@pytest.fixture
def no_model_loading(monkeypatch):
    """The CLI's model loader, made to fail the test: bad arguments must be reported before it runs."""
    from kernelzoo.export import cli

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(cli, "load_model", load_model)


@pytest.mark.parametrize("extra, message", [
    (["--verify", "--preset", "nosuch_preset", "--data-dir", "{tmp}"], "`--preset` must be one of"),
    (["--verify", "--data-dir", "{tmp}/missing"], "--data-dir: '{tmp}/missing' is not a directory"),
    (["--verify", "--data-dir", "{tmp}"], "--data-dir: no test split is known"),
    (["--format", "saved_model", "--opset", "99"], "--opset: only --format onnx"),
    (["-o", "{tmp}/victim.keras", "--format", "onnx"], "exists and is not an .onnx file"),
    (["-o", "{tmp}/victim.keras/m.onnx"], "is a file, not a directory"),
])
def test_cli_checks_arguments_and_the_target_before_loading(tmp_path, capsys, no_model_loading, extra, message):
    (tmp_path / "victim.keras").write_bytes(b"the model")
    argv = [str(tmp_path / "victim.keras"), "-o", str(tmp_path / "out.onnx"), *extra]
    assert _cli([arg.format(tmp=tmp_path) for arg in argv]) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["victim.keras"]


def test_cli_verifies_on_generated_inputs_when_only_the_environment_names_a_data_dir(tmp_path, capsys,
                                                                                    monkeypatch):
    """A .keras file with no preset does not read $KERNELZOO_DATA_DIR, so a stale one (no such folder) is no error."""
    keras.utils.set_random_seed(0)
    keras_file = str(tmp_path / "tiny.keras")
    _with_layer(keras.layers.ReLU()).save(keras_file)
    monkeypatch.setenv("KERNELZOO_DATA_DIR", str(tmp_path / "gone"))
    assert _cli([keras_file, "-o", str(tmp_path / "m.onnx"), "--verify", "--num", "4"]) == 0
    captured = capsys.readouterr()
    assert "no test split is known" in captured.err and "generated inputs, not $KERNELZOO_DATA_DIR" in captured.err
    assert "on 4 generated inputs" in captured.out


def test_a_directory_named_like_a_zoo_model_does_not_hide_it(tmp_path, monkeypatch):
    """Training writes runs/NAME: a folder NAME in the working directory is not the model NAME."""
    from kernelzoo.export.cli import load_model

    name = registry.list_models(pretrained=True)[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).mkdir()
    monkeypatch.setattr(kernelzoo.zoo, "load", lambda model, compile=True: ("zoo model", model))
    assert load_model(name) == ("zoo model", name)
    with pytest.raises(ExportError, match="is a directory"):
        load_model(os.path.join(".", name))


def test_zoo_names_are_case_insensitive_as_in_the_library(monkeypatch):
    """`kernelzoo.zoo.load` and `kernelzoo info` take SC_MNIST; export and bench deploy take it too."""
    from kernelzoo.export.cli import load_model

    name = registry.list_models(pretrained=True)[0]
    monkeypatch.setattr(kernelzoo.zoo, "load", lambda model, compile=True: ("zoo model", model))
    assert load_model(name.upper()) == ("zoo model", name)


def test_bench_deploy_prints_all_runtimes(exported, capsys):
    from kernelzoo.export.bench import RUNTIMES, bench_deploy

    rows = bench_deploy(exported["simnet_l2"][0], batch_sizes=(1, 8), min_time=0.02, max_calls=5,
                        title="the_zoo_name")
    assert list(rows) == list(RUNTIMES)
    assert rows[RUNTIMES[0]]["latency_ratio"] == pytest.approx(1.0)
    assert all(row["latency_ms"] > 0 and row["throughput"] > 0 for row in rows.values())
    text = capsys.readouterr().out
    assert "batch-1 latency" in text and "batch-8 throughput" in text and "onnxruntime CPU" in text
    assert text.startswith("bench deploy the_zoo_name: input uint8 (N, 12, 12, 3)")


def test_bench_deploy_checks_its_arguments_before_exporting(monkeypatch):
    """No batch size, a zero one, a zero time or an opset tf2onnx lacks: ExportError naming it, before any export."""
    from kernelzoo.export import saved_model
    from kernelzoo.export.bench import bench_deploy

    monkeypatch.setattr(saved_model, "to_saved_model", lambda *args, **kwargs: pytest.fail("exported"))
    model = _linear_model(np.eye(3), name="mlp")
    for arguments, name in (({"batch_sizes": ()}, "batch_sizes"), ({"batch_sizes": (1, 0)}, "batch_sizes"),
                            ({"min_time": 0}, "min_time"), ({"max_calls": 0}, "max_calls"), ({"opset": 99}, "opset")):
        with pytest.raises(ExportError, match=f"`{name}`"):
            bench_deploy(model, **arguments)


def test_runtimes_are_timed_in_turn():
    """Timed one after another, a busy stretch of the machine fell on one runtime and moved the ratios."""
    from kernelzoo.export.bench import median_seconds

    order = []
    medians = median_seconds({name: (lambda x, name=name: order.append(name)) for name in "abc"}, None, 0.0, 10)
    assert set(medians) == set("abc") and all(value >= 0 for value in medians.values())
    assert order == list("abc") * 5  # 2 warm-up rounds, then 3


def test_bench_cli_parses_deploy():
    from kernelzoo.export import bench
    parser = argparse.ArgumentParser(prog="kernelzoo bench")
    bench.add_arguments(parser, "bench")
    args = parser.parse_args(["deploy", "model.keras", "--batch", "16"])
    assert (args.what, args.model, args.batch) == ("deploy", "model.keras", 16)


def test_bench_deploy_reports_a_bad_model_in_one_line(tmp_path, capsys):
    from kernelzoo import cli
    assert cli.main(["bench", "deploy", str(tmp_path / "missing.keras")]) == 2
    assert f"kernelzoo bench deploy: error: no model file at '{tmp_path / 'missing.keras'}'" in capsys.readouterr().err
