"""Hostile model files, built here as an attacker would, against `tfship export`.

Each refused file must: exit 1 with one clear line naming what was refused, write no version, and run
none of its code. Whether code ran is proven by marker files the attack writes when it does run; every
marker test also loads the same file in-process with ``trust_code=True`` (no export worker around it),
where the attack does run, so the test fails the day the check stops catching it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from tfship.core.errors import ExportError, UnsafeModelError

SM_ONLY = ("--formats", "savedmodel")


def _errors(result) -> list[str]:
    return [line for line in result.stderr.strip().splitlines() if "error:" in line]


def _refused(result, *names: str) -> str:
    """The one error line of a refused export, checked to name everything in ``names``."""
    assert result.exit_code == 1, result.stderr
    lines = _errors(result)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def _no_version(repo: Path, name: str) -> bool:
    folder = repo / name
    return not folder.exists() or not any(p.name.isdigit() for p in folder.iterdir())


def _load(path: Path, **kwargs):
    from tfship.exporter.sources import load_source

    return load_source(path, **kwargs)


# --- tf_keras op layers in a Keras-2 .h5 ----------------------------------------------------------

def _h5_with_layer(path: Path, layer: dict) -> Path:
    """A real tf_keras model saved as .h5, with ``layer`` added to its stored configuration."""
    import h5py
    import tf_keras

    x = tf_keras.Input((2,), name="x")
    tf_keras.Model(x, tf_keras.layers.Dense(1, name="dense")(x)).save(path, save_format="h5")
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"].append(layer)
        f.attrs["model_config"] = json.dumps(config)
    return path


def _op_layer(class_name: str, name: str, config: dict, constant: object, kwargs: dict) -> dict:
    # tf_keras stores constant call arguments as ["_CONSTANT_VALUE", -1, value, kwargs] and passes them
    # to the layer while it rebuilds the model (tf_keras/src/engine/functional.py, process_node).
    return {"class_name": class_name, "name": name,
            "config": {"name": name, "trainable": True, "dtype": "float32", **config},
            "inbound_nodes": [["_CONSTANT_VALUE", -1, constant, kwargs]]}


def _write_file_layer(marker: Path) -> dict:
    return _op_layer("TFOpLambda", "tf.compat.v1.write_file", {"function": "compat.v1.write_file"}, str(marker), {"contents": "pwned"})


def _class_method_layer(marker: Path) -> dict:
    return _op_layer("ClassMethod", "evil_cm", {"cls_symbol": "io.write_file", "method_name": "__call__"},
                     [str(marker), "pwned"], {"kwargs": {}})


@pytest.mark.parametrize("build, names", [
    (_write_file_layer, ("tf.compat.v1.write_file", "TFOpLambda")),
    (_class_method_layer, ("tf.io.write_file.__call__", "ClassMethod", "evil_cm")),
], ids=["tfoplambda_write_file", "classmethod_io_write_file"])
def test_op_layer_that_writes_a_file_never_runs(build, names, tmp_path):
    marker = tmp_path / "written-by-the-model"
    source = _h5_with_layer(tmp_path / "evil.h5", build(marker))
    repo = tmp_path / "models"
    line = _refused(run_cli("export", source, "--name", "evil", "--repo", repo, *SM_ONLY), *names)
    assert "--trust-code" in line
    assert not marker.exists() and _no_version(repo, "evil")
    with pytest.raises(UnsafeModelError, match="not a pure tensor function"):
        _load(source)  # in-process, no worker: the check alone keeps the code from running
    assert not marker.exists()
    # The same file with the check switched off by --trust-code: the attack is real.
    with pytest.raises(ExportError):
        _load(source, trust_code=True)  # the model is broken after the write, but the write happened
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("layer, names", [
    (_op_layer("TFOpLambda", "plugin", {"function": "experimental.register_filesystem_plugin"}, "/tmp/plugin.so", {}),
     ("tf.experimental.register_filesystem_plugin", "plugin")),
    (_op_layer("SlicingOpLambda", "slice_io", {"function": "io.read_file"}, "/etc/hostname", {}), ("tf.io.read_file", "SlicingOpLambda")),
    (_op_layer("InstanceMethod", "evil_im", {"attr_name": "__reduce_ex__"}, "x", {}), ("__reduce_ex__", "InstanceMethod")),
    (_op_layer("InstanceProperty", "evil_ip", {"attr_name": "__globals__"}, "x", {}), ("__globals__", "InstanceProperty")),
    (_op_layer("TFOpLambda", "py", {"function": "py_function"}, "x", {}), ("tf.py_function",)),
], ids=["register_filesystem_plugin", "slicing_read_file", "instance_method", "instance_property", "py_function"])
def test_op_layers_outside_the_allow_list_are_refused(layer, names, tmp_path):
    source = _h5_with_layer(tmp_path / "evil.h5", layer)
    repo = tmp_path / "models"
    _refused(run_cli("export", source, "--name", "evil", "--repo", repo, *SM_ONLY), *names)
    assert _no_version(repo, "evil")


def test_model_built_from_tensorflow_functions_still_exports(tmp_path):
    """What tf_keras records for ordinary TensorFlow calls on Keras tensors passes the allow-list."""
    import tensorflow as tf
    import tf_keras

    x = tf_keras.Input((4,), name="x")
    y = tf.nn.relu(x * 2.0 + 1.0)
    y = tf.concat([y[:, :2], tf.reduce_mean(y, axis=-1, keepdims=True), tf.math.sqrt(tf.abs(x))], axis=-1)
    y = tf.reshape(tf.transpose(tf.expand_dims(y, 1), [0, 2, 1]), (-1, 7))
    model = tf_keras.Model(x, tf_keras.layers.Dense(2, name="out")(tf.nn.softmax(y)))
    classes = {layer["class_name"] for layer in json.loads(model.to_json())["config"]["layers"]}
    assert {"TFOpLambda", "SlicingOpLambda"} <= classes
    model.save(tmp_path / "ops.h5", save_format="h5")
    result = run_cli("export", tmp_path / "ops.h5", "--name", "ops", "--repo", tmp_path / "models", *SM_ONLY)
    assert result.exit_code == 0, result.stderr


def test_tensorflow_calls_that_tf_keras_records_pass_the_allow_list():
    """Arithmetic, math, nn activations, shape and array ops as tf_keras records them (canonical names)."""
    import tensorflow as tf
    import tf_keras

    from tfship.exporter.config_safety import find_code

    x = tf_keras.Input((4,), name="x")
    calls = [
        lambda t: t + 1, lambda t: t * 2, lambda t: t - 1, lambda t: t / 2, lambda t: -t, lambda t: t ** 2, lambda t: t % 2.0,
        lambda t: tf.reduce_mean(t, axis=-1), tf.nn.relu, tf.nn.softmax, tf.math.log, tf.exp, tf.sqrt, tf.tanh, tf.nn.gelu,
        tf.nn.leaky_relu, tf.nn.swish, tf.math.rsqrt, tf.math.sin, tf.math.square, tf.sort, tf.zeros_like, tf.ones_like,
        lambda t: tf.reshape(t, (-1, 2, 2)), lambda t: tf.expand_dims(t, 1), lambda t: tf.concat([t, t], -1),
        lambda t: t[:, :2], lambda t: tf.cast(t, tf.float16), lambda t: tf.transpose(t), lambda t: tf.shape(t),
        lambda t: tf.matmul(t, t, transpose_b=True), lambda t: tf.stack([t, t]), lambda t: tf.clip_by_value(t, 0, 1),
        lambda t: tf.maximum(t, 0.0), lambda t: tf.squeeze(tf.expand_dims(t, 1), 1), lambda t: tf.split(t, 2, -1)[0],
        lambda t: tf.tile(t, [1, 2]), lambda t: tf.gather(t, [0, 1], axis=1), lambda t: tf.where(t > 0, t, 0.0),
        lambda t: tf.one_hot(tf.cast(t, tf.int32), 3), lambda t: tf.einsum("bi,bi->b", t, t), lambda t: tf.argmax(t, -1),
        lambda t: tf.linalg.l2_normalize(t, -1), lambda t: tf.pad(t, [[0, 0], [1, 1]]), lambda t: tf.math.cumsum(t, 1),
        lambda t: tf.image.resize(tf.reshape(t, (-1, 2, 2, 1)), (4, 4)), lambda t: tf.nn.bias_add(t, [1.0, 2.0, 3.0, 4.0]),
        lambda t: tf.boolean_mask(t, t[0] > 0, axis=1), lambda t: tf.range(tf.shape(t)[0]), lambda t: tf.unstack(t, axis=1)[0],
        lambda t: tf.math.top_k(t, 2).values, lambda t: tf.logical_and(t > 0, t < 1), lambda t: tf.norm(t),
        lambda t: tf.reverse(t, [1]), lambda t: tf.math.floordiv(t, 2.0), lambda t: tf.math.not_equal(t, 0.0),
    ]
    config = json.loads(tf_keras.Model(x, [call(x) for call in calls]).to_json())
    functions = {layer["config"]["function"] for layer in config["config"]["layers"] if "function" in layer["config"]}
    assert {"math.multiply", "nn.relu", "reshape", "compat.v1.transpose", "__operators__.getitem", "image.resize"} <= functions
    assert find_code(config) == []


def test_ragged_accessors_pass_the_allow_list():
    import tensorflow as tf
    import tf_keras

    from tfship.exporter.config_safety import find_code

    r = tf_keras.Input((None,), ragged=True, name="r")
    x = tf_keras.Input((3,), name="x")
    outputs = [r.to_tensor(), r.values, r.row_lengths(), tf.RaggedTensor.from_tensor(x).to_tensor()]
    config = json.loads(tf_keras.Model([r, x], outputs).to_json())
    classes = {layer["class_name"] for layer in config["config"]["layers"]}
    assert {"ClassMethod", "InstanceMethod", "InstanceProperty"} <= classes
    assert find_code(config) == []


# --- Keras 3 function references ------------------------------------------------------------------

def _keras3_with_activation(path: Path, activation: dict) -> Path:
    import keras

    x = keras.Input((3,), name="x")
    keras.Model(x, keras.layers.Dense(2, name="dense")(x)).save(path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    dense = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense")
    dense["config"]["activation"] = activation
    members["config.json"] = json.dumps(config).encode()
    path.unlink()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize("module, name, spelling", [
    ("os", "system", "function"), ("builtins", "print", "function"), ("keras.utils", "get_file", "function"),
    ("keras.src.utils.file_utils", "get_file", "__function__"), ("builtins", "eval", "__function__"),
])
def test_function_references_outside_keras_are_refused(module, name, spelling, tmp_path):
    source = _keras3_with_activation(tmp_path / "fn.keras", {"module": module, "class_name": spelling, "config": name,
                                                               "registered_name": name})
    repo = tmp_path / "models"
    line = _refused(run_cli("export", source, "--name", "fn", "--repo", repo, *SM_ONLY), f"'{module}.{name}'", "dense")
    assert "not one of Keras' own" in line
    assert _no_version(repo, "fn")


def test_keras_own_function_references_export(tmp_path):
    source = _keras3_with_activation(tmp_path / "fn.keras", {"module": "keras.activations", "class_name": "function",
                                                               "config": "gelu", "registered_name": "gelu"})
    result = run_cli("export", source, "--name", "fn", "--repo", tmp_path / "models", *SM_ONLY)
    assert result.exit_code == 0, result.stderr


def test_keras_class_outside_modelling_modules_is_refused(tmp_path):
    source = _keras3_with_activation(tmp_path / "cls.keras", {"module": "keras.src.saving.saving_lib", "class_name": "DiskIOStore",
                                                                "config": {"root_path": "/etc"}, "registered_name": None})
    repo = tmp_path / "models"
    _refused(run_cli("export", source, "--name", "cls", "--repo", repo, *SM_ONLY), "keras.src.saving.saving_lib.DiskIOStore")
    assert _no_version(repo, "cls")


def test_lookup_layer_with_a_host_file_as_vocabulary_is_refused(tmp_path):
    """A lookup layer reads a vocabulary path at load time: a host file would end up inside the version."""
    import keras

    text = keras.Input((1,), dtype="string", name="text")
    keras.Model(text, keras.layers.StringLookup(vocabulary=["a", "b"], name="lookup")(text)).save(tmp_path / "lookup.keras")
    with zipfile.ZipFile(tmp_path / "lookup.keras") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    lookup = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "StringLookup")
    lookup["config"]["vocabulary"] = "/etc/passwd"
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp_path / "lookup.keras", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    repo = tmp_path / "models"
    _refused(run_cli("export", tmp_path / "lookup.keras", "--name", "lookup", "--repo", repo, *SM_ONLY),
             "'lookup' (StringLookup)", "'/etc/passwd'")
    assert _no_version(repo, "lookup")


# --- .keras files written by tf_keras (Keras 2.13+) ------------------------------------------------

@pytest.mark.parametrize("package", ["tf_keras", "keras"])
def test_tf_keras_written_keras_zip_exports(package, tmp_path):
    """tf_keras writes `tf_keras.src.engine.functional`; standalone Keras 2.13-2.15 wrote `keras.src.engine...`."""
    import numpy as np
    import tf_keras

    x = tf_keras.Input((3,), name="x")
    model = tf_keras.Model(x, tf_keras.layers.Dense(2, activation="relu", name="out")(x))
    model.save(tmp_path / "k2.keras")
    if package == "keras":  # the spelling of a Keras 2.13 file
        with zipfile.ZipFile(tmp_path / "k2.keras") as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
        members["config.json"] = members["config.json"].replace(b'"tf_keras.src.', b'"keras.src.')
        with zipfile.ZipFile(tmp_path / "k2.keras", "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
    config = json.loads(zipfile.ZipFile(tmp_path / "k2.keras").read("config.json"))
    assert config["module"] == f"{package}.src.engine.functional" and config["class_name"] == "Functional"
    repo = tmp_path / "models"
    result = run_cli("export", tmp_path / "k2.keras", "--name", "k2", "--repo", repo, *SM_ONLY)
    assert result.exit_code == 0, result.stderr
    golden = np.load(repo / "k2" / "1" / "golden.npz")
    np.testing.assert_allclose(golden["outputs/out"], model.predict(golden["inputs/x"], verbose=0), atol=1e-5)


# --- bounded parsing ------------------------------------------------------------------------------

def _zip_bomb(path: Path, inflated: int) -> None:
    """A .keras zip whose config.json inflates to ``inflated`` bytes, written streaming."""
    chunk = b" " * (1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("config.json", "w", force_zip64=True) as member:
            member.write(b'{"class_name": "Functional", "config": {"name": "')
            for _ in range(inflated // len(chunk)):
                member.write(chunk)
            member.write(b'"}}')
        archive.writestr("metadata.json", b"{}")


def _peak_rss_of_export(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, int]:
    """Run `python -m tfship export ...` under a small parent that reports its descendants' peak RSS (KiB)."""
    probe = ("import resource, subprocess, sys\n"
             "done = subprocess.run([sys.executable, '-m', 'tfship', *sys.argv[1:]], capture_output=True, text=True)\n"
             "sys.stderr.write(done.stderr)\n"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
             "sys.exit(done.returncode)\n")
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=600, cwd=cwd)
    return done, int(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_zip_bomb_config_is_refused_with_small_memory(tmp_path):
    source = tmp_path / "bomb.keras"
    _zip_bomb(source, 2 * 1024**3)
    assert source.stat().st_size < 4 * 1024**2
    repo = tmp_path / "models"
    done, peak_kib = _peak_rss_of_export(["export", str(source), "--name", "bomb", "--repo", str(repo), *SM_ONLY], tmp_path)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "config.json (inflated)" in lines[0] and "limit" in lines[0], done.stderr
    assert peak_kib < 512 * 1024, f"peak RSS {peak_kib} KiB while refusing a 2 GiB config"  # 56 MiB measured
    assert _no_version(repo, "bomb")


def test_inflated_config_over_the_cap_is_refused(tmp_path, monkeypatch):
    from tfship.exporter import config_safety

    monkeypatch.setattr(config_safety, "MAX_CONFIG_BYTES", 1 << 20)
    source = tmp_path / "bomb.keras"
    _zip_bomb(source, 4 << 20)
    with pytest.raises(ExportError, match=r"config.json \(inflated\) is 4194356 bytes, over tfship's limit of 1048576"):
        config_safety.read_stored_config(source)


def test_deeply_nested_config_is_one_clear_line(tmp_path):
    depth = 200_000
    with zipfile.ZipFile(tmp_path / "deep.keras", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", b'{"class_name": "Functional", "config": ' + b"[" * depth + b"]" * depth + b"}")
    repo = tmp_path / "models"
    line = _refused(run_cli("export", tmp_path / "deep.keras", "--name", "deep", "--repo", repo, *SM_ONLY), "nested more than 100 levels")
    assert "RecursionError" not in line
    assert _no_version(repo, "deep")


def test_nesting_under_the_recursion_limit_but_over_the_cap_is_refused(tmp_path):
    (tmp_path / "arch.json").write_text('{"class_name": "Sequential", "config": ' + "[" * 500 + "]" * 500 + "}")
    from tfship.exporter.config_safety import read_stored_config

    with pytest.raises(ExportError, match="nested more than 100 levels deep"):
        read_stored_config(tmp_path / "arch.json")


def test_config_with_too_many_elements_is_refused(tmp_path, monkeypatch):
    from tfship.exporter import config_safety

    monkeypatch.setattr(config_safety, "MAX_CONFIG_ELEMENTS", 1000)
    (tmp_path / "arch.json").write_text(json.dumps({"class_name": "Sequential", "config": list(range(2000))}))
    with pytest.raises(ExportError, match="holds more than 1000 elements"):
        config_safety.read_stored_config(tmp_path / "arch.json")


def test_oversized_hdf5_model_config_is_refused(tmp_path, monkeypatch):
    import h5py
    import numpy as np

    from tfship.exporter import config_safety

    monkeypatch.setattr(config_safety, "MAX_CONFIG_BYTES", 1 << 12)
    with h5py.File(tmp_path / "big.h5", "w") as f:  # fixed-length: refused before it is read
        f.attrs["model_config"] = np.bytes_(b'{"class_name": "Sequential", "config": "' + b"x" * (1 << 13) + b'"}')
    with pytest.raises(ExportError, match="the model_config attribute is 8234 bytes"):
        config_safety.read_stored_config(tmp_path / "big.h5")
    with h5py.File(tmp_path / "big_vlen.h5", "w") as f:
        f.attrs["model_config"] = '{"class_name": "Sequential", "config": "' + "x" * (1 << 13) + '"}'
    with pytest.raises(ExportError, match="the model_config attribute is"):
        config_safety.read_stored_config(tmp_path / "big_vlen.h5")


# --- SavedModel sources ---------------------------------------------------------------------------

def _tf1_savedmodel(path: Path, main_op_writes: Path | None) -> Path:
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default():
        x = v1.placeholder(tf.float32, [None, 2], name="x")
        w = v1.get_variable("w", initializer=tf.ones([2, 1]))
        y = tf.matmul(x, w, name="y")
        main_op = tf.io.write_file(str(main_op_writes), "pwned") if main_op_writes else v1.tables_initializer()
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(path))
            signature = v1.saved_model.predict_signature_def({"x": x}, {"y": y})
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"serving_default": signature}, main_op=main_op)
            builder.save()
    return path


def test_tf1_main_op_that_writes_a_file_never_runs(tmp_path):
    marker = tmp_path / "written-by-main-op"
    source = _tf1_savedmodel(tmp_path / "sm", main_op_writes=marker)
    repo = tmp_path / "models"
    line = _refused(run_cli("export", source, "--name", "tf1", "--repo", repo, *SM_ONLY), "WriteFile", "saved_model_main_op")
    assert "--trust-code" in line
    assert not marker.exists() and _no_version(repo, "tf1")
    with pytest.raises(UnsafeModelError, match="WriteFile"):
        _load(source)
    assert not marker.exists()
    _load(source, trust_code=True)  # in-process, no worker around it: the loader runs the main_op
    assert marker.read_text() == "pwned"


def test_plain_tf1_savedmodel_still_exports(tmp_path):
    import numpy as np

    source = _tf1_savedmodel(tmp_path / "sm", main_op_writes=None)
    repo = tmp_path / "models"
    result = run_cli("export", source, "--name", "tf1", "--repo", repo, *SM_ONLY)
    assert result.exit_code == 0, result.stderr
    golden = np.load(repo / "tf1" / "1" / "golden.npz")
    np.testing.assert_allclose(golden["outputs/y"], golden["inputs/x"].sum(axis=1, keepdims=True), rtol=1e-5)


def test_restore_from_a_fixed_path_is_refused(tmp_path):
    """RestoreV2 is allowed only on the prefix the loader passes in, not on a path stored in the graph."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    source = _tf1_savedmodel(tmp_path / "sm", main_op_writes=None)
    saved = saved_model_pb2.SavedModel.FromString((source / "saved_model.pb").read_bytes())
    graph = saved.meta_graphs[0].graph_def
    restore = next(node for node in graph.node if node.op == "RestoreV2")
    fixed = graph.node.add()
    with tf.Graph().as_default():
        fixed.CopyFrom(tf.constant("/etc/other-checkpoint", name="fixed_prefix").op.node_def)
    restore.input[0] = fixed.name
    (source / "saved_model.pb").write_bytes(saved.SerializeToString())
    _refused(run_cli("export", source, "--name", "r", "--repo", tmp_path / "models", *SM_ONLY),
             "RestoreV2", "other than the version's own variables")


@pytest.mark.parametrize("refused", [True, False], ids=["print_to_a_file", "print_to_stderr"])
def test_savedmodel_function_outside_the_signature_is_walked_too(refused, tmp_path):
    """Every function the SavedModel restores is walked, not only the serving signature's."""
    import tensorflow as tf

    marker = tmp_path / "printed-by-the-model"

    class Printer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * 2}

        @tf.function(input_signature=[tf.TensorSpec([], tf.float32)])
        def side(self, v):
            tf.print(v, output_stream=f"file://{marker}" if refused else sys.stderr)
            return v

    module = Printer()
    module.side.get_concrete_function()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    repo = tmp_path / "models"
    result = run_cli("export", tmp_path / "sm", "--name", "p", "--repo", repo, *SM_ONLY)
    if refused:
        _refused(result, "PrintV2", "a restored function")
        assert _no_version(repo, "p") and not marker.exists()
    else:
        assert result.exit_code == 0, result.stderr


def _savedmodel_with_asset(path: Path, asset_name: str) -> Path:
    import tensorflow as tf

    asset_file = path.parent / asset_name
    asset_file.write_text("vocabulary\n")

    class WithAsset(tf.Module):
        def __init__(self) -> None:
            self.vocabulary = tf.saved_model.Asset(str(asset_file))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * 2}

    module = WithAsset()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    assert (path / "assets" / asset_name).is_file()
    return path


def test_savedmodel_whose_assets_is_a_symlink_to_a_host_folder_is_refused(tmp_path):
    host = tmp_path / "host-etc"
    host.mkdir()
    (host / "passwd").write_text("root:x:0:0:secret\n")
    source = _savedmodel_with_asset(tmp_path / "sm", "passwd")
    shutil.rmtree(source / "assets")
    (source / "assets").symlink_to(host)
    repo = tmp_path / "models"
    line = _refused(run_cli("export", source, "--name", "leak", "--repo", repo, *SM_ONLY), "'assets' is a symbolic link")
    assert str(host) in line
    assert _no_version(repo, "leak")
    assert not list(tmp_path.rglob("models/**/passwd"))
    trusted = run_cli("export", source, "--name", "leak", "--repo", repo, "--trust-code", *SM_ONLY)
    assert trusted.exit_code == 1 and _no_version(repo, "leak")  # --trust-code does not ship host files


def test_savedmodel_symlinked_file_and_fifo_are_refused(tmp_path):
    source = _savedmodel_with_asset(tmp_path / "sm", "vocab.txt")
    (source / "assets" / "vocab.txt").unlink()
    (source / "assets" / "vocab.txt").symlink_to("/etc/hostname")
    _refused(run_cli("export", source, "--name", "s", "--repo", tmp_path / "models", *SM_ONLY), "'assets/vocab.txt' is a symbolic link")
    (source / "assets" / "vocab.txt").unlink()
    (source / "assets" / "vocab.txt").write_text("vocabulary\n")
    os.mkfifo(source / "variables" / "pipe")
    _refused(run_cli("export", source, "--name", "s", "--repo", tmp_path / "models", *SM_ONLY), "'variables/pipe' is not a regular file")


def test_savedmodel_asset_path_leaving_the_folder_is_refused(tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    source = _savedmodel_with_asset(tmp_path / "sm", "vocab.txt")
    saved = saved_model_pb2.SavedModel.FromString((source / "saved_model.pb").read_bytes())
    saved.meta_graphs[0].asset_file_def[0].filename = "../../../../../../etc/hostname"
    (source / "saved_model.pb").write_bytes(saved.SerializeToString())
    _refused(run_cli("export", source, "--name", "a", "--repo", tmp_path / "models", *SM_ONLY),
             "'../../../../../../etc/hostname' points outside")


def test_savedmodel_with_an_asset_exports_its_own_regular_files(tmp_path):
    source = _savedmodel_with_asset(tmp_path / "sm", "vocab.txt")
    repo = tmp_path / "models"
    result = run_cli("export", source, "--name", "a", "--repo", repo, *SM_ONLY)
    assert result.exit_code == 0, result.stderr
    copied = repo / "a" / "1" / "assets" / "vocab.txt"
    assert copied.is_file() and not copied.is_symlink() and copied.read_text() == "vocabulary\n"


def test_allow_list_passes_the_savedmodels_keras_and_tensorflow_write(tmp_path):
    """Keras 3 export, tf_keras + tf.saved_model.save (GRU: While, TensorList), lookup tables, variables."""
    import keras
    import tensorflow as tf
    import tf_keras

    from tfship.exporter.savedmodel_safety import unsafe_ops

    x = keras.Input((4,), name="x")
    keras.Model(x, keras.layers.Dense(2)(keras.layers.LSTM(3)(keras.layers.Reshape((2, 2))(x)))).export(str(tmp_path / "k3"), verbose=False)
    seq = tf_keras.Input((5, 3), name="seq")
    tf.saved_model.save(tf_keras.Model(seq, tf_keras.layers.GRU(4)(seq)), str(tmp_path / "tfk"))

    class Table(tf.Module):
        def __init__(self) -> None:
            init = tf.lookup.KeyValueTensorInitializer(tf.constant(["a", "b"]), tf.constant([1, 2], tf.int64))
            self.table = tf.lookup.StaticHashTable(init, -1)
            self.scale = tf.Variable(3.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="s")])
        def serve(self, s):
            return {"id": self.table.lookup(s), "scale": self.scale * 2}

    table = Table()
    tf.saved_model.save(table, str(tmp_path / "table"), signatures={"serving_default": table.serve})
    for name in ("k3", "tfk", "table"):
        assert unsafe_ops(tmp_path / name) == {}, name


def test_repo_checkout_is_untouched_by_a_relative_write(tmp_path):
    """A relative path in a refused file would land in the working directory: nothing appears there."""
    source = _h5_with_layer(tmp_path / "evil.h5", _op_layer("TFOpLambda", "rel", {"function": "io.write_file"},
                                                             "tfship-planted.pth", {"contents": "import os"}))
    done = subprocess.run([sys.executable, "-m", "tfship", "export", str(source), "--name", "rel", "--repo",
                           str(tmp_path / "models"), *SM_ONLY], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 1 and "tf.io.write_file" in done.stderr
    assert not (tmp_path / "tfship-planted.pth").exists() and not (ROOT / "tfship-planted.pth").exists()
