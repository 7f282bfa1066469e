"""model.tflite carries the SavedModel's serving SignatureDef where TF Serving reads it.

What TF Serving does (tensorflow/serving, tensorflow_serving/servables/tensorflow/tflite_session.cc,
``TfLiteSession::Create``): it serves the SignatureDefs of the file's ``signature_defs_metadata`` metadata
entry, each TensorInfo name checked against the interpreter's tensors (``FixTfLiteTensorName``: the exact
name, else without ``:0``). The entry's format is tensorflow/tensorflow's
tensorflow/lite/tools/signature/signature_def_util.cc (``SetSignatureDefMap`` / ``ReadSignatureDefMap``): a
flexbuffer map of key -> serialized SignatureDef stored as a flexbuffer string and read back with
``AsString().c_str()``. Without the entry (what TFLiteConverter writes) it logs "No signature def found in
TFLite model. Generating one." and keys ``serving_default`` by tensor names (``serving_default_x``).

The oracles here are not tfship's code: the SavedModel as TensorFlow loads and runs it, the file's own
native signature as LiteRT reports it, and the flatbuffer read with TensorFlow's schema and flexbuffers.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import grpc
import numpy as np
from test_model_server_apis import _engine, _stub

from tfship.exporter import tflite
from tfship.exporter.keras_model import from_keras_model
from tfship.serving.local_engine.tflite_servable import load_tflite

SIGNATURE_DEFS_METADATA = "signature_defs_metadata"  # signature_def_util.h kSignatureDefsMetadataName
PREDICT = "tensorflow/serving/predict"


def export_version(tmp_path: Path, model) -> tuple[Path, list[str]]:
    """The version's SavedModel written as the exporter writes it, then model.tflite through tflite.convert."""
    version = tmp_path / "repo" / "m" / "1"
    from_keras_model(model, "keras", tmp_path / "source.keras").write_savedmodel(version)
    notices = tflite.convert(version, version / "model.tflite", keras_model=model, kind="keras")
    return version, notices


def stored_signature_defs(model_bytes: bytes) -> dict:
    """The signature_defs_metadata entry read as signature_def_util.cc ReadSignatureDefMap reads it."""
    from flatbuffers import flexbuffers
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    entries = [m for m in (model.metadata or []) if m.name.decode() == SIGNATURE_DEFS_METADATA]
    if not entries:
        return {}
    assert len(entries) == 1
    table = flexbuffers.GetRoot(bytes(model.buffers[entries[0].buffer].data)).AsMap
    result = {}
    for key, value in zip(table.Keys, table.Values):
        # Anything but a flexbuffer string reads as "", and c_str() cuts the bytes at a NUL.
        assert value.IsString, f"{key.AsKey} is stored as {value.Type}, which TF Serving reads as an empty string"
        raw = value.AsStringBytes
        assert b"\0" not in raw, f"{key.AsKey}: TF Serving would read the SignatureDef only up to its first NUL byte"
        result[key.AsKey] = meta_graph_pb2.SignatureDef.FromString(raw)
    return result


def native_signature(model_bytes: bytes) -> tuple[dict, dict, list[str], list[str]]:
    """LiteRT's view: the converter's serving_default runner (key -> details) and the main subgraph's tensors."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    runner = interpreter.get_signature_runner("serving_default")
    return (runner.get_input_details(), runner.get_output_details(),
            [d["name"] for d in interpreter.get_input_details()], [d["name"] for d in interpreter.get_output_details()])


def check_signature(signature, saved_fn, model_bytes: bytes, batch: int) -> None:
    """The stored SignatureDef has the SavedModel's keys, dtypes and shapes, on the tensors the file maps them to."""
    assert signature.method_name == PREDICT
    saved_inputs = saved_fn.structured_input_signature[1]
    saved_outputs = saved_fn.structured_outputs
    assert set(signature.inputs) == set(saved_inputs) and set(signature.outputs) == set(saved_outputs)
    native_inputs, native_outputs, tensor_inputs, tensor_outputs = native_signature(model_bytes)
    for infos, saved, native, tensors in ((signature.inputs, saved_inputs, native_inputs, tensor_inputs),
                                          (signature.outputs, saved_outputs, native_outputs, tensor_outputs)):
        for key, info in infos.items():
            assert info.name == native[key]["name"] and info.name in tensors
            assert info.dtype == saved[key].dtype.as_datatype_enum
            want = [-1 if d is None else d for d in saved[key].shape.as_list()]
            want[0] = batch if want[0] == -1 else want[0]
            assert [d.size for d in info.tensor_shape.dim] == want


def assert_serves_like_savedmodel(version: Path, saved_fn, inputs: dict[str, np.ndarray]) -> None:
    import tensorflow as tf

    _, signatures = load_tflite(version)
    assert list(signatures) == ["serving_default"]
    entry = signatures["serving_default"]
    assert set(entry.inputs) == set(inputs)
    got = entry.fn(**inputs)
    expected = saved_fn(**{k: tf.constant(v) for k, v in inputs.items()})
    assert set(got) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value.numpy(), atol=1e-5, rtol=0)


def load_saved(version: Path):
    import tensorflow as tf

    return tf.saved_model.load(str(version)).signatures["serving_default"]


def plain_conversion(version: Path) -> bytes:
    """What TFLiteConverter alone writes for the version's SavedModel (no signature_defs_metadata)."""
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_saved_model(str(version), signature_keys=["serving_default"]).convert()


def run_litert(model_bytes: bytes, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=model_bytes).get_signature_runner("serving_default")
    return {k: np.array(v) for k, v in runner(**inputs).items()}


def dense_model():
    import keras

    keras.utils.set_random_seed(7)
    inputs = keras.Input(shape=(4,), name="x")
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(8, activation="relu")(inputs)))


def test_dense_model_serves_the_savedmodel_input_name_x(tmp_path):
    version, notices = export_version(tmp_path, dense_model())
    assert notices == []
    model_bytes = (version / "model.tflite").read_bytes()
    saved_fn = load_saved(version)
    stored = stored_signature_defs(model_bytes)
    assert list(stored) == ["serving_default"]
    check_signature(stored["serving_default"], saved_fn, model_bytes, batch=-1)
    assert list(stored["serving_default"].inputs) == ["x"]
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    assert_serves_like_savedmodel(version, saved_fn, {"x": x})

    # The same SavedModel through the converter alone: no entry, and TF Serving's generated names.
    plain = plain_conversion(version)
    assert stored_signature_defs(plain) == {}
    (version / "model.tflite").write_bytes(plain)
    _, signatures = load_tflite(version)
    assert set(signatures["serving_default"].inputs) == {"serving_default_x"}
    # LiteRT runs the file with the entry exactly as the converter's own file.
    for rows in (x[:1], x):
        got, want = run_litert(model_bytes, {"x": rows}), run_litert(plain, {"x": rows})
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_two_inputs_and_two_named_outputs_keep_their_keys(tmp_path):
    import keras

    keras.utils.set_random_seed(11)
    a = keras.Input(shape=(3,), name="a")
    b = keras.Input(shape=(2,), name="b")
    hidden = keras.layers.Dense(6, activation="tanh")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], {"total": keras.layers.Dense(2, name="total")(hidden),
                                 "score": keras.layers.Dense(1, activation="sigmoid", name="score")(hidden)})
    version, _ = export_version(tmp_path, model)
    model_bytes = (version / "model.tflite").read_bytes()
    saved_fn = load_saved(version)
    signature = stored_signature_defs(model_bytes)["serving_default"]
    check_signature(signature, saved_fn, model_bytes, batch=-1)
    assert sorted(signature.inputs) == ["a", "b"] and sorted(signature.outputs) == ["score", "total"]
    # Two outputs of one call: the tensors differ by their ":N" suffix, and each key names its own.
    assert signature.outputs["score"].name != signature.outputs["total"].name
    rng = np.random.default_rng(2)
    inputs = {"a": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=(4, 2)).astype(np.float32)}
    assert_serves_like_savedmodel(version, saved_fn, inputs)
    got, want = run_litert(model_bytes, inputs), run_litert(plain_conversion(version), inputs)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_lstm_model_rebuilt_with_a_static_batch_gets_the_signature_too(tmp_path):
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input(shape=(6, 3), name="sequence")
    model = keras.Model(inputs, keras.layers.Dense(2, name="score")(keras.layers.LSTM(4)(inputs)))
    version, notices = export_version(tmp_path, model)
    # Today's converter does not lower an LSTM with a dynamic batch, so this is the rebuild route; if it
    # ever does, this test no longer covers that route and should get a model that still needs it.
    assert tflite.STATIC_BATCH_NOTICE in notices
    model_bytes = (version / "model.tflite").read_bytes()
    saved_fn = load_saved(version)
    signature = stored_signature_defs(model_bytes)["serving_default"]
    # Keys from the version's SavedModel; the shape is the file's own, with its batch of 1.
    check_signature(signature, saved_fn, model_bytes, batch=1)
    rng = np.random.default_rng(3)
    for _ in range(2):
        assert_serves_like_savedmodel(version, saved_fn, {"sequence": rng.normal(size=(1, 6, 3)).astype(np.float32)})


def test_a_signature_that_cannot_be_stored_leaves_the_converted_file_and_warns(tmp_path, caplog):
    # A dimension of 0 serializes as an empty message (a 0 length byte): ReadSignatureDefMap's c_str()
    # would cut the SignatureDef there, so nothing is stored and the file stays as converted.
    import tensorflow as tf

    version = tmp_path / "m" / "1"
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": tf.reduce_sum(x, axis=1) + 1.0},
                           input_signature=[tf.TensorSpec([None, 0], tf.float32, name="x")])
    tf.saved_model.save(module, str(version), signatures={"serving_default": module.f})
    with caplog.at_level(logging.WARNING, logger="tfship.exporter.tflite"):
        notices = tflite.convert(version, version / "model.tflite")
    model_bytes = (version / "model.tflite").read_bytes()
    assert stored_signature_defs(model_bytes) == {}
    assert model_bytes == plain_conversion(version)
    (notice,) = notices
    assert notice.startswith("model.tflite: no TF Serving SignatureDef stored (") and "NUL byte" in notice
    assert any("keeps no TF Serving SignatureDef" in r.getMessage() for r in caplog.records)
    _, signatures = load_tflite(version)
    assert set(signatures["serving_default"].inputs) == {"serving_default_x"}


def test_prefer_tflite_model_serves_predict_and_warmup_with_the_savedmodel_names(tmp_path):
    """tfship export, then the model server with --prefer_tflite_model: the exporter's warmup records (input
    "x") are replayed on load, and Predict takes "x". The same version with the converter's plain file fails
    the load on its first warmup record: that is the bug this entry fixes."""
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

    from tfship.exporter import ExportOptions, export

    model = dense_model()
    source = tmp_path / "dense.keras"
    model.save(source)
    repo = tmp_path / "repo"
    result = export(ExportOptions(source=source, name="stored", repo=repo, formats=("savedmodel", "tflite")))
    version = result.directory
    warmup = version / "assets.extra" / "tf_serving_warmup_requests"
    assert warmup.exists() and (version / "model.tflite").exists()
    shutil.copytree(repo / "stored", tmp_path / "plain")
    (tmp_path / "plain" / "1" / "model.tflite").write_bytes(plain_conversion(version))

    engine = _engine({"__config__": tmp_path / "models.config", "stored": repo / "stored", "plain": tmp_path / "plain"},
                     prefer_tflite_model=True)
    channel, stub = _stub(engine)
    try:
        (stored,) = engine.core.manager.status("stored")
        assert stored.state == "AVAILABLE", stored.error_message
        text = engine.core.metrics.render()
        assert f':tensorflow:serving:model_warmup_latency_count{{model_path="{version}",status="OK"}} 1.0' in text
        (plain,) = engine.core.manager.status("plain")
        assert plain.state == "END" and "warmup record" in plain.error_message, plain.error_message

        x = np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "stored"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
        response = stub.Predict(request, timeout=30)
        expected = load_saved(version)(x=tf.constant(x))
        assert set(response.outputs) == set(expected)
        for key, value in expected.items():
            np.testing.assert_allclose(tf.make_ndarray(response.outputs[key]), value.numpy(), atol=1e-5, rtol=0)

        metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        metadata.model_spec.name = "stored"
        signatures = get_model_metadata_pb2.SignatureDefMap()
        stub.GetModelMetadata(metadata, timeout=30).metadata["signature_def"].Unpack(signatures)
        assert set(signatures.signature_def["serving_default"].inputs) == {"x"}
    except grpc.RpcError as exc:
        raise AssertionError(f"{exc.code()}: {exc.details()}") from None
    finally:
        channel.close()
        engine.stop(grace=1)
