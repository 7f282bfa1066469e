"""model.tflite servables in the local engine, checked against TF Serving's tflite_session.cc rules.

The TF Serving sources quoted are in tensorflow/serving, tensorflow_serving/servables/tensorflow/.
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from tfship.serving.local_engine.errors import EngineError
from tfship.serving.local_engine.tflite_servable import (
    TFLITE_FILE,
    choose_format,
    has_saved_model,
    has_tflite,
    load_tflite,
)

FEATURES = 4


@pytest.fixture(scope="module")
def keras_model():
    import keras

    keras.utils.set_random_seed(7)
    inputs = keras.Input(shape=(FEATURES,), name="x")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(hidden))


@pytest.fixture(scope="module")
def tflite_bytes(keras_model) -> bytes:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(keras_model).convert()


def write_version(base: Path, model_bytes: bytes, version: int = 1) -> Path:
    path = base / str(version)
    path.mkdir(parents=True)
    (path / TFLITE_FILE).write_bytes(model_bytes)
    return path


def rows(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, FEATURES)).astype(np.float32)


def tensor_names(model_bytes: bytes) -> tuple[list[str], list[str]]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    return ([d["name"] for d in interpreter.get_input_details()], [d["name"] for d in interpreter.get_output_details()])


def with_signature_defs(model_bytes: bytes, signature_defs: dict, rename: dict[str, str] | None = None) -> bytes:
    """What tflite::SetSignatureDefMap (tensorflow/lite/tools/signature/signature_def_util.cc) writes: a
    metadata entry "signature_defs_metadata" whose buffer is a flexbuffer map key -> serialized SignatureDef.
    TF Serving's own test models are made this way (tflite_session_test.cc BuildTestModel)."""
    from flatbuffers import flexbuffers
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    for tensor in model.subgraphs[0].tensors:
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
        if rename and name in rename:
            tensor.name = rename[name]
    builder = flexbuffers.Builder()
    with builder.Map():
        for key, proto in sorted(signature_defs.items()):
            builder.Key(key)
            # The C++ writer stores the serialized proto as a flexbuffer STRING (fbb.String); the Python
            # Builder.String takes text only, so write the bytes with the STRING type directly.
            builder._WriteBlob(proto.SerializeToString(), append_zero=True, type_=flexbuffers.Type.STRING)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(bytes(builder.Finish()), dtype=np.uint8)
    model.buffers.append(buffer)
    metadata = schema.MetadataT()
    metadata.name = "signature_defs_metadata"
    metadata.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), metadata]
    return flatbuffer_utils.convert_object_to_bytearray(model)


def tensor_info(name: str, shape: list[int]):
    from tensorflow.core.protobuf import meta_graph_pb2

    info = meta_graph_pb2.TensorInfo(name=name, dtype=1)  # DT_FLOAT
    for size in shape:
        info.tensor_shape.dim.add(size=size)
    return info


def test_predictions_match_keras_for_batches_of_1_and_5(tmp_path, keras_model, tflite_bytes):
    _, signatures = load_tflite(write_version(tmp_path / "m", tflite_bytes))
    fn = signatures["serving_default"].fn
    import tensorflow as tf

    for count, seed in ((1, 1), (5, 2), (1, 3)):
        x = rows(count, seed)
        expected = keras_model.predict(x, verbose=0)
        (name,) = signatures["serving_default"].outputs
        # The engine passes tf.Tensors; numpy arrays are accepted too.
        for value in (tf.constant(x), x):
            got = fn(serving_default_x=value)[name]
            assert isinstance(got, np.ndarray) and got.shape == (count, 3)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_model_without_stored_signature_defs_gets_serving_default_from_its_tensors(tmp_path, tflite_bytes):
    # tflite_session.cc: without a "signature_defs_metadata" entry (the converter writes none: its native
    # signatures are not what tflite::GetSignatureDefMap reads), TF Serving "generates one": key
    # serving_default, aliases = TFLite tensor names cut at ':' (TfToTfLiteLegacyTensorName), TensorInfo
    # name = the tensor name, shape = the tensor's dims; tflite_session_test.cc BasicTest expects
    # dim { size: 1 } for the batch, and method_name "tensorflow/serving/predict".
    _, signatures = load_tflite(write_version(tmp_path / "m", tflite_bytes))
    assert list(signatures) == ["serving_default"]
    entry = signatures["serving_default"]
    (out_tensor,) = tensor_names(tflite_bytes)[1]
    out_alias = out_tensor.split(":")[0]
    assert set(entry.inputs) == {"serving_default_x"} and set(entry.outputs) == {out_alias}
    proto = entry.proto
    assert proto.method_name == entry.method_name == "tensorflow/serving/predict"
    x_info = proto.inputs["serving_default_x"]
    assert x_info.name == "serving_default_x:0"
    assert x_info.dtype == 1  # DT_FLOAT
    assert [d.size for d in x_info.tensor_shape.dim] == [1, FEATURES]
    assert proto.outputs[out_alias].name == out_tensor
    assert [d.size for d in proto.outputs[out_alias].tensor_shape.dim] == [1, 3]
    # What the engine checks requests against: any batch (the interpreter is resized to it).
    assert entry.inputs["serving_default_x"].shape == (None, FEATURES)
    assert entry.inputs["serving_default_x"].dtype.name == "float32"


def test_stored_signature_defs_are_served_by_key_with_their_shapes(tmp_path, keras_model, tflite_bytes):
    from tensorflow.core.protobuf import meta_graph_pb2

    (in_tensor,), (out_tensor,) = tensor_names(tflite_bytes)
    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    # As in tflite_session_test.cc ModelFromLegacyConverterWithSigdef: the SignatureDef names "rows:0",
    # the model's tensor is "rows"; FixTfLiteTensorName falls back to the name without ":0".
    signature.inputs["features"].CopyFrom(tensor_info("rows:0", [-1, FEATURES]))
    signature.outputs["scores"].CopyFrom(tensor_info(out_tensor, [-1, 3]))
    second = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/regress")
    second.inputs["inputs"].CopyFrom(tensor_info("rows", [-1, FEATURES]))
    second.outputs["outputs"].CopyFrom(tensor_info(out_tensor, [-1, 3]))
    model_bytes = with_signature_defs(tflite_bytes, {"serving_default": signature, "second": second},
                                      rename={in_tensor: "rows"})

    _, signatures = load_tflite(write_version(tmp_path / "m", model_bytes))
    assert sorted(signatures) == ["second", "serving_default"]
    entry = signatures["serving_default"]
    assert set(entry.inputs) == {"features"} and set(entry.outputs) == {"scores"}
    info = entry.proto.inputs["features"]
    assert info.name == "rows"
    assert [d.size for d in info.tensor_shape.dim] == [-1, FEATURES]
    assert info.dtype == 1
    assert [d.size for d in entry.proto.outputs["scores"].tensor_shape.dim] == [-1, 3]
    assert entry.method_name == "tensorflow/serving/predict"
    assert signatures["second"].method_name == "tensorflow/serving/regress"
    x = rows(5, 11)
    expected = keras_model.predict(x, verbose=0)
    np.testing.assert_allclose(entry.fn(features=x)["scores"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(signatures["second"].fn(inputs=x[:1])["outputs"], expected[:1], rtol=1e-5, atol=1e-5)


def test_signature_def_naming_an_unknown_tensor_fails_the_load(tmp_path, tflite_bytes):
    from tensorflow.core.protobuf import meta_graph_pb2

    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    signature.inputs["features"].CopyFrom(tensor_info("no_such_tensor:0", [-1, FEATURES]))
    model_bytes = with_signature_defs(tflite_bytes, {"serving_default": signature})
    with pytest.raises(EngineError) as caught:
        load_tflite(write_version(tmp_path / "m", model_bytes))
    assert "Signature input features references an unknown tensor 'no_such_tensor:0'" in caught.value.message


def test_two_outputs_collapse_to_one_alias_as_in_tf_serving(tmp_path):
    # The converter names a Keras model's outputs "<call>:0", "<call>:1"; cut at ':' they share one
    # alias, and tflite_session.cc's generated signature keeps the later one (std::map order, operator[]).
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    inputs = keras.Input(shape=(FEATURES,), name="x")
    hidden = keras.layers.Dense(8)(inputs)
    model = keras.Model(inputs, {"main": keras.layers.Dense(3)(hidden), "aux": keras.layers.Dense(2)(hidden)})
    model_bytes = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    _, signatures = load_tflite(write_version(tmp_path / "m", model_bytes))
    entry = signatures["serving_default"]
    out_names = sorted(tensor_names(model_bytes)[1])
    assert len(out_names) == 2 and len({n.split(":")[0] for n in out_names}) == 1
    (alias,) = entry.outputs
    assert entry.proto.outputs[alias].name == out_names[-1]
    width = entry.proto.outputs[alias].tensor_shape.dim[1].size
    x = rows(2, 5)
    expected = {v.shape[1]: v for v in model.predict(x, verbose=0).values()}[width]
    np.testing.assert_allclose(entry.fn(serving_default_x=x)[alias], expected, rtol=1e-5, atol=1e-5)


def test_wrong_inner_shape_is_invalid_argument_naming_input_and_shapes(tmp_path, keras_model, tflite_bytes):
    _, signatures = load_tflite(write_version(tmp_path / "m", tflite_bytes))
    fn = signatures["serving_default"].fn
    with pytest.raises(EngineError) as caught:
        fn(serving_default_x=np.zeros((2, 3), np.float32))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    message = caught.value.message
    assert "input 'serving_default_x' has shape [2, 3] but the model declares [-1, 4]" in message
    with pytest.raises(EngineError) as caught:
        fn(serving_default_x=np.zeros((2, 4), np.float64))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "float64" in caught.value.message and "float32" in caught.value.message
    # The interpreter that failed is not reused half-prepared: the next call is right.
    x = rows(3, 9)
    (name,) = signatures["serving_default"].outputs
    np.testing.assert_allclose(fn(serving_default_x=x)[name], keras_model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_concurrent_callers_each_get_their_own_rows(tmp_path, keras_model, tflite_bytes):
    loaded, signatures = load_tflite(write_version(tmp_path / "m", tflite_bytes), max_interpreters=3)
    fn = signatures["serving_default"].fn
    (name,) = signatures["serving_default"].outputs
    threads = 8
    # Each caller has its own batch size, so interpreters are resized back and forth between calls.
    inputs = [rows(i + 1, 100 + i) for i in range(threads)]
    expected = [keras_model.predict(x, verbose=0) for x in inputs]
    start = threading.Barrier(threads)
    failures: list[str] = []

    def call(i: int) -> None:
        start.wait()
        try:
            for _ in range(25):
                got = fn(serving_default_x=inputs[i])[name]
                if got.shape != expected[i].shape or not np.allclose(got, expected[i], rtol=1e-5, atol=1e-5):
                    failures.append(f"caller {i} got rows of shape {got.shape}")
                    return
        except Exception as exc:  # a failure in a thread must fail the test, not just end the thread
            failures.append(f"caller {i}: {exc!r}")

    workers = [threading.Thread(target=call, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not failures
    assert 1 <= loaded.pool.size <= 3


def test_choose_format_follows_prefer_tflite_model(tmp_path):
    # saved_model_bundle_factory.cc: is_tflite = config_.prefer_tflite_model() && TfLiteModelFound(path);
    # otherwise LoadSessionBundleOrSavedModelBundle. main.cc: "If no TensorFlow Lite model found,
    # fallback to TensorFlow model."
    both = tmp_path / "both"
    only_tflite = tmp_path / "only_tflite"
    only_saved = tmp_path / "only_saved"
    for path in (both, only_tflite, only_saved):
        path.mkdir()
    (both / "saved_model.pb").write_bytes(b"")
    (both / TFLITE_FILE).write_bytes(b"")
    (only_tflite / TFLITE_FILE).write_bytes(b"")
    (only_saved / "saved_model.pbtxt").write_text("")

    assert has_tflite(both) and has_saved_model(both)
    assert has_tflite(only_tflite) and not has_saved_model(only_tflite)
    assert has_saved_model(only_saved) and not has_tflite(only_saved)
    assert choose_format(both, prefer_tflite=False) == "saved_model"
    assert choose_format(both, prefer_tflite=True) == "tflite"
    assert choose_format(only_tflite, prefer_tflite=True) == "tflite"
    # Without the flag TF Serving never looks at model.tflite: the SavedModel loader fails there.
    assert choose_format(only_tflite, prefer_tflite=False) == "saved_model"
    assert choose_format(only_saved, prefer_tflite=True) == "saved_model"
    assert choose_format(only_saved, prefer_tflite=False) == "saved_model"


def test_a_file_that_is_not_tflite_or_missing_fails_the_load_clearly(tmp_path):
    bad = write_version(tmp_path / "bad", b"\x00" * 64)
    with pytest.raises(EngineError) as caught:
        load_tflite(bad)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a TFLite model" in caught.value.message and str(bad / TFLITE_FILE) in caught.value.message
    empty = tmp_path / "empty" / "1"
    empty.mkdir(parents=True)
    with pytest.raises(EngineError) as caught:
        load_tflite(empty)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND and TFLITE_FILE in caught.value.message
