"""`import kernelzoo` is light, yet `keras.models.load_model` opens every saved kernelzoo model after it."""
import ast
import glob
import json
import os
import sys

import pytest

from kernelzoo import _registration

from conftest import background_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# setup.cfg's package_dir: folder -> package
PACKAGES = {"kernelzoo": "kernelzoo", "ops": "kernelzoo.ops", "layers": "kernelzoo.layers", "zoo": "kernelzoo.zoo",
            "export": "kernelzoo.export"}
SHIPPED = sorted(glob.glob(os.path.join(ROOT, "zoo", "**", "*.keras"), recursive=True))


def _job(name, code, timeout=600):
    """`code` in a fresh Python process (KERNELZOO_OPS unset), beside the in-process tests (conftest.BackgroundJob)."""
    env = {k: v for k, v in os.environ.items() if k != "KERNELZOO_OPS"}
    return background_job(name, dict(args=[sys.executable, "-c", code], timeout=timeout, env=env))


def _run(job):
    (result,) = job.results()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def _registered_in_sources():
    """{name: module} of every object decorated with register_keras_serializable(package="kernelzoo")."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True):
            relative = os.path.relpath(path, os.path.join(ROOT, folder))[:-3].replace(os.sep, ".")
            module = package if relative == "__init__" else f"{package}.{relative.removesuffix('.__init__')}"
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
            for node in ast.walk(tree):
                if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                    for decorator in node.decorator_list:
                        if "register_keras_serializable" in ast.unparse(decorator):
                            name = next((k.value.value for k in getattr(decorator, "keywords", ())
                                         if k.arg == "name"), node.name)
                            found[name] = module
    return found


def test_the_stand_in_table_lists_every_registered_object():
    table = {**_registration.CLASSES, **_registration.FUNCTIONS}
    assert table == _registered_in_sources(), "list every registered Keras object in kernelzoo/_registration.py"


LIGHT_IMPORT = _job("registration light import", (
    "import sys, kernelzoo; before = sorted(m for m in sys.modules if m.split('.')[0] in "
    "('keras', 'tensorflow', 'kernelzoo')); import kernelzoo.ops; "
    "print([m for m in sys.modules if m.startswith(('kernelzoo.zoo', 'kernelzoo.export', "
    "'kernelzoo.layers'))]); print(before)"))


@LIGHT_IMPORT.mark
def test_importing_kernelzoo_imports_neither_tensorflow_nor_the_zoo():
    out = _run(LIGHT_IMPORT)
    after_ops, before = out.strip().splitlines()
    assert after_ops == "[]"
    assert before == "['kernelzoo', 'kernelzoo._registration', 'kernelzoo._version']"


STAND_INS = _job("registration stand-ins", (
    "import json, kernelzoo, keras\n"
    "from kernelzoo import _registration as r\n"
    "out = {}\n"
    "for name, module in {**r.CLASSES, **r.FUNCTIONS}.items():\n"
    "    obj = r.resolve(name, module)\n"
    "    out[name] = [obj.__name__, obj.__module__]\n"
    "print(json.dumps(out))"))


@STAND_INS.mark
def test_stand_ins_resolve_to_the_registered_objects():
    resolved = json.loads(_run(STAND_INS).strip().splitlines()[-1])
    for name, module in {**_registration.CLASSES, **_registration.FUNCTIONS}.items():
        assert resolved[name] == [name, module]


SHIPPED_LOAD = _job("registration shipped models", (
    "import json, sys, numpy as np, kernelzoo, keras\n"
    "out = {}\n"
    f"for path in {SHIPPED!r}:\n"
    "    model = keras.models.load_model(path)\n"
    "    x = np.zeros((2,) + tuple(model.inputs[0].shape[1:]), 'float32')\n"
    "    y = keras.ops.convert_to_numpy(model(x, training=False))\n"
    "    kernels = [(l.kernel_function, hasattr(l, 'kernel')) for l in model.layers\n"
    "               if type(l).__name__ == 'KernelDense']\n"
    "    out[path] = [bool(np.isfinite(y).all()), kernels]\n"
    "print(json.dumps(out))"))


@pytest.mark.skipif(not SHIPPED, reason="no shipped .keras files")
@SHIPPED_LOAD.mark
def test_every_shipped_model_loads_after_import_kernelzoo_alone():
    """A fresh process: `import kernelzoo` (nothing else of it), then keras.models.load_model and a forward pass;
    KernelDense layers carry their kernel as the string `kernel_function` (`.kernel` is gone)."""
    loaded = json.loads(_run(SHIPPED_LOAD).strip().splitlines()[-1])
    assert sorted(loaded) == SHIPPED
    for path, (finite, kernels) in loaded.items():
        assert finite, path
        assert all(isinstance(kind, str) and not has_kernel for kind, has_kernel in kernels), (path, kernels)
