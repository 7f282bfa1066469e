"""Classify, Regress, MultiInference, warmup and TFLite servables through real servers and the official stubs.

TF Serving's rules are quoted with their file (tensorflow_serving/servables/tensorflow/...); the request
logic itself is unit-tested in test_engine_inference.py and test_engine_tflite.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import free_port
from engine_helpers import wait_until
from test_engine_inference import build_half_plus_two, classification_request, example, regression_request

from tfship.serving.model_server import ServerFlags, build_engine


def _engine(base_paths: dict[str, Path], **flags):
    from tfship.serving.local_engine import LocalEngine  # noqa: F401  (the type build_engine returns)

    config = base_paths.pop("__config__")
    body = "".join(f'config {{ name: "{n}" base_path: "{p}" model_platform: "tensorflow" }} ' for n, p in base_paths.items())
    config.write_text(f"model_config_list {{ {body}}}\n")
    values = {"port": free_port(), "rest_api_port": free_port(), "model_config_file": config, "tfship_host": "127.0.0.1",
              "file_system_poll_wait_seconds": 0, "max_num_load_retries": 0, **flags}
    return build_engine(ServerFlags(**values).check()).start()


def _stub(engine):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{engine.grpc_port}")
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


class _TF2:
    """A TF2 model whose classify/regress signatures are saved with the predict method name (tf.saved_model.save)."""

    @staticmethod
    def save(path: Path) -> None:
        import tensorflow as tf

        class Module(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
            def regress(self, inputs):
                x = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]
                return {"outputs": 0.5 * x + 2.0}

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
            def classify(self, inputs):
                x = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]
                scores = tf.concat([x, 1.0 - x], axis=1)
                classes = tf.tile(tf.constant([["yes", "no"]]), [tf.shape(x)[0], 1])
                return {"classes": classes, "scores": scores}

        module = Module()
        tf.saved_model.save(module, str(path), signatures={"serving_default": module.regress, "classify": module.classify})


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("apis")
    build_half_plus_two(root / "tf1" / "1", root / "original_assets")
    _TF2.save(root / "tf2" / "3")
    return root


def test_classify_regress_and_multi_inference_on_a_tf1_example_model(repos, tmp_path):
    from tensorflow_serving.apis import inference_pb2

    engine = _engine({"__config__": tmp_path / "models.config", "half_plus_two": repos / "tf1"},
                     enable_signature_method_name_check=True)
    channel, stub = _stub(engine)
    try:
        # saved_model_half_plus_two.py: regress_x_to_y is y = 0.5 x + 2; regress_x_to_y2 is 0.5 x + 3.
        response = stub.Regress(regression_request("regress_x_to_y", 2.0, 4.0), timeout=30)
        assert [round(r.value, 4) for r in response.result.regressions] == [3.0, 4.0]
        assert (response.model_spec.name, response.model_spec.version.value) == ("half_plus_two", 1)
        response = stub.Regress(regression_request("regress_x_to_y2", 2.0), timeout=30)
        assert [round(r.value, 4) for r in response.result.regressions] == [4.0]
        classified = stub.Classify(classification_request("classify_x_to_y", 2.0), timeout=30)
        assert [round(c.score, 4) for c in classified.result.classifications[0].classes] == [3.0]
        # MultiInference (multi_inference.cc): one input, several classify/regress tasks of one model.
        request = inference_pb2.MultiInferenceRequest()
        for signature, method in (("regress_x_to_y", "tensorflow/serving/regress"), ("regress_x_to_y2", "tensorflow/serving/regress")):
            task = request.tasks.add()
            task.model_spec.name, task.model_spec.signature_name, task.method_name = "half_plus_two", signature, method
        request.input.example_list.examples.add().CopyFrom(example(x=2.0))
        results = stub.MultiInference(request, timeout=30).results
        assert [round(r.regression_result.regressions[0].value, 4) for r in results] == [3.0, 4.0]
        assert [r.model_spec.signature_name for r in results] == ["regress_x_to_y", "regress_x_to_y2"]
        # With --enable_signature_method_name_check a regress signature cannot classify (classifier.cc).
        with pytest.raises(grpc.RpcError) as caught:
            stub.Classify(classification_request("regress_x_to_y", 2.0), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith("Expected classification signature method_name to be tensorflow/serving/classify")
    finally:
        channel.close()
        engine.stop(grace=1)


def test_tf2_signatures_with_the_predict_method_classify_unless_the_check_is_on(repos, tmp_path):
    for check in (False, True):
        engine = _engine({"__config__": tmp_path / f"models{check}.config", "tf2": repos / "tf2"},
                         enable_signature_method_name_check=check)
        channel, stub = _stub(engine)
        try:
            request = regression_request("", 2.0)
            request.model_spec.name = "tf2"
            if not check:
                # main.cc: "Disable this if serving native TF2 regression/classification models."
                response = stub.Regress(request, timeout=30)
                assert [round(r.value, 4) for r in response.result.regressions] == [3.0]
                assert response.model_spec.signature_name == "serving_default"
                request = classification_request("classify", 0.25)
                request.model_spec.name = "tf2"
                classes = stub.Classify(request, timeout=30).result.classifications[0].classes
                assert [(c.label, round(c.score, 4)) for c in classes] == [("yes", 0.25), ("no", 0.75)]
            else:
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Regress(request, timeout=30)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert caught.value.details() == ("Expected regression signature method_name to be tensorflow/serving/regress. "
                                                  "Was: tensorflow/serving/predict")
        finally:
            channel.close()
            engine.stop(grace=1)


def _write_warmup(version_dir: Path, records: int) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog()
    log.regress_log.request.CopyFrom(regression_request("regress_x_to_y", 1.0))
    (version_dir / "assets.extra").mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(version_dir / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        for _ in range(records):
            writer.write(log.SerializeToString())


def test_warmup_replays_each_record_the_number_of_times_asked_and_caps_the_records(repos, tmp_path):
    import shutil

    good, too_many = tmp_path / "good", tmp_path / "too_many"
    shutil.copytree(repos / "tf1", good)
    shutil.copytree(repos / "tf1", too_many)
    _write_warmup(good / "1", 2)
    # saved_model_warmup_util.cc: kMaxNumRecords = 1000; one more fails the load.
    _write_warmup(too_many / "1", 1001)
    engine = _engine({"__config__": tmp_path / "models.config", "good": good, "too_many": too_many},
                     num_request_iterations_for_warmup=3)
    try:
        states = {s.version: s for s in engine.core.manager.status("too_many")}
        assert states[1].state == "END" and states[1].error_code == grpc.StatusCode.INVALID_ARGUMENT
        assert states[1].error_message == f"Number of warmup records exceeds the maximum (1000) at {too_many / '1' / 'assets.extra' / 'tf_serving_warmup_requests'}"
        assert engine.core.manager.status("good")[0].state == "AVAILABLE"
        text = engine.core.metrics.render()
        # Two records x 3 iterations ran the regress signature 6 times, all before the first request.
        runs = [line for line in text.splitlines()
                if line.startswith(':tensorflow:serving:runtime_latency_count{model_name="good",API="Regress"')]
        assert runs and float(runs[0].split()[-1]) == 6.0, runs
        assert f':tensorflow:serving:model_warmup_latency_count{{model_path="{good / "1"}",status="OK"}} 1.0' in text
    finally:
        engine.stop(grace=1)


def _keras_dense(path_saved: Path | None, tflite_dir: Path):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    inputs = keras.Input(shape=(4,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(6, activation="relu")(inputs)))
    tflite_dir.mkdir(parents=True, exist_ok=True)
    (tflite_dir / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    if path_saved is not None:
        model.export(str(path_saved), format="tf_saved_model", verbose=False)
    return model


def test_tflite_versions_are_served_through_predict_and_metadata(tmp_path):
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

    only = tmp_path / "only_tflite" / "1"
    model = _keras_dense(None, only)
    both = tmp_path / "both" / "1"
    _keras_dense(both, both)
    x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    expected = model.predict(x, verbose=0)
    for prefer in (False, True):
        engine = _engine({"__config__": tmp_path / f"models{prefer}.config", "only_tflite": tmp_path / "only_tflite",
                          "both": tmp_path / "both"}, prefer_tflite_model=prefer)
        channel, stub = _stub(engine)
        try:
            # tflite_session.cc, with no signature_defs metadata in the file: "serving_default", inputs named
            # after their tensors (the converter names the Keras input "serving_default_x").
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "only_tflite"
            request.inputs["serving_default_x"].CopyFrom(tf.make_tensor_proto(x))
            response = stub.Predict(request, timeout=30)
            (output,) = response.outputs.values()
            np.testing.assert_allclose(tf.make_ndarray(output), expected, atol=1e-5)
            metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
            metadata.model_spec.name = "both"
            reply = stub.GetModelMetadata(metadata, timeout=30)
            signatures = get_model_metadata_pb2.SignatureDefMap()
            reply.metadata["signature_def"].Unpack(signatures)
            inputs = set(signatures.signature_def["serving_default"].inputs)
            # saved_model_bundle_factory.cc: model.tflite only with --prefer_tflite_model; else the SavedModel.
            assert inputs == ({"serving_default_x"} if prefer else {"x"})
        finally:
            channel.close()
            engine.stop(grace=1)


@pytest.mark.slow
def test_with_onednn_kernels_a_shape_the_signature_does_not_declare_is_refused_not_run(tmp_path):
    """oneDNN's Conv2D aborts the process on a rank-2 input (a failed CHECK); where a user forces oneDNN on,
    the server refuses undeclared shapes instead, and keeps serving."""
    import keras
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    inputs = keras.Input((8, 8, 1), name="image")
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Conv2D(2, 3)(inputs)))
    keras.Model(inputs, outputs).export(str(tmp_path / "conv" / "1"), format="tf_saved_model", verbose=False)
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "tfship", "model-server", f"--port={port}", "--model_name=conv",
                                    f"--model_base_path={tmp_path / 'conv'}", "--enable_grpc_healthcheck_service"],
                                   stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1", "TFSHIP_PUBLIC_KEY": ""})
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            assert process.poll() is None, log.read_text(errors="replace")[-2000:]
            try:
                return health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                return False

        wait_until(serving, 120, "the server SERVING")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "conv"
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 2), np.float32)))
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == "input 'image' has shape [1, 2] but the signature expects [-1, 8, 8, 1] (-1: any size)"
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 8, 8, 1), np.float32)))
        assert stub.Predict(request, timeout=30).outputs
        assert process.poll() is None
    finally:
        channel.close()
        process.send_signal(signal.SIGTERM)
        process.wait(60)
