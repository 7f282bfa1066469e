"""The local engine against TF Serving's own stubs and REST calls, on loopback ports."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from conftest import copy_repo
from engine_helpers import official_stubs, self_signed, start_engine


@pytest.fixture(scope="module")
def served(signed_repo, keys, tmp_path_factory):
    import tensorflow as tf

    from tfship.exporter import ExportOptions, export

    repo = copy_repo(signed_repo["repo"], tmp_path_factory.mktemp("served") / "models")

    class Echo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            return {"upper": tf.strings.upper(text), "length": tf.strings.length(text)}

    module = Echo()
    source = tmp_path_factory.mktemp("echo") / "sm"
    tf.saved_model.save(module, str(source), signatures={"serving_default": module.serve})
    export(ExportOptions(source=source, name="echo", repo=repo, formats=("savedmodel",), sign_key=keys["private"]))
    engine = start_engine(repo, public_key=keys["public"], labels={"stable": 1, "canary": 2}, models=["digits", "echo"])
    prediction, model, channel = official_stubs(engine.grpc_port)
    golden = np.load(repo / "digits" / "1" / "golden.npz")
    yield {"engine": engine, "prediction": prediction, "model": model, "repo": repo, "golden": golden,
           "rest": f"http://127.0.0.1:{engine.rest_port}"}
    channel.close()
    engine.stop(grace=1)


def _request(model="digits", inputs=None, **spec):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    if model is not None:
        request.model_spec.name = model
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    for name, value in (inputs or {}).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def test_official_stubs_predict_metadata_status(served):
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

    golden = served["golden"]
    response = served["prediction"].Predict(_request(inputs={"image": golden["inputs/image"]}, version=1))
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]), golden["outputs/probabilities"], atol=1e-5)
    assert response.model_spec.version.value == 1 and response.model_spec.signature_name == "serving_default"
    latest = served["prediction"].Predict(_request(inputs={"image": golden["inputs/image"][:2]}))
    assert latest.model_spec.version.value == 2  # unversioned requests go to the highest available version

    metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata_request.model_spec.name = "digits"
    metadata = served["prediction"].GetModelMetadata(metadata_request)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert list(signature.inputs) == ["image"] and list(signature.outputs) == ["probabilities"]
    assert [d.size for d in signature.inputs["image"].tensor_shape.dim] == [-1, 8, 8, 1]

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "digits"
    status = served["model"].GetModelStatus(status_request)
    assert [(s.version, s.state) for s in status.model_version_status] == [(1, 30), (2, 30)]


def test_label_routing(served):
    images = served["golden"]["inputs/image"][:1]
    assert served["prediction"].Predict(_request(inputs={"image": images}, version_label="stable")).model_spec.version.value == 1
    assert served["prediction"].Predict(_request(inputs={"image": images}, version_label="canary")).model_spec.version.value == 2


ERRORS = {
    "no model spec": (lambda g: _request(model=None, inputs={"image": g}), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
    "unknown model": (lambda g: _request(model="nope", inputs={"image": g}), grpc.StatusCode.NOT_FOUND,
                      "Servable not found for request: Latest(nope)"),
    "unknown version": (lambda g: _request(inputs={"image": g}, version=7), grpc.StatusCode.NOT_FOUND,
                        "Servable not found for request: Specific(digits, 7)"),
    "unknown label": (lambda g: _request(inputs={"image": g}, version_label="gold"), grpc.StatusCode.INVALID_ARGUMENT,
                      "Unrecognized servable version label: gold"),
    "unknown signature": (lambda g: _request(inputs={"image": g}, signature_name="X"), grpc.StatusCode.FAILED_PRECONDITION,
                          'Serving signature key "X" not found.'),
    "extra input": (lambda g: _request(inputs={"image": g, "b": g}), grpc.StatusCode.INVALID_ARGUMENT,
                    "input size does not match signature: 2!=1 len({b,image}) != len({image}). Sent extra: {b}. Missing but required: {}."),
    "missing input": (lambda g: _request(inputs={}), grpc.StatusCode.INVALID_ARGUMENT,
                      "input size does not match signature: 0!=1 len({}) != len({image}). Sent extra: {}. Missing but required: {image}."),
    "wrong dtype": (lambda g: _request(inputs={"image": g.astype(np.int64)}), grpc.StatusCode.INVALID_ARGUMENT,
                    "Expects arg[0] to be float but int64 is provided"),
    "wrong shape": (lambda g: _request(inputs={"image": g[:, :4]}), grpc.StatusCode.INVALID_ARGUMENT,
                    "input 'image' has shape [2, 4, 8, 1] but the signature expects [-1, 8, 8, 1]"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_match_tf_serving(case, served):
    make, code, message = ERRORS[case]
    with pytest.raises(grpc.RpcError) as info:
        served["prediction"].Predict(make(served["golden"]["inputs/image"][:2]))
    assert info.value.code() == code
    assert message in info.value.details()


def test_bad_output_filter_and_metadata_without_field(served):
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = _request(inputs={"image": served["golden"]["inputs/image"][:1]})
    request.output_filter.append("nope")
    with pytest.raises(grpc.RpcError) as info:
        served["prediction"].Predict(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "output tensor alias not found" in info.value.details()
    metadata_request = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata_request.model_spec.name = "digits"
    with pytest.raises(grpc.RpcError) as info:
        served["prediction"].GetModelMetadata(metadata_request)
    assert info.value.details() == "GetModelMetadataRequest must specify at least one metadata_field"


def test_classify_on_a_predict_signature_is_unimplemented(served):
    from tensorflow_serving.apis import classification_pb2

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "digits"
    request.input.example_list.examples.add()
    with pytest.raises(grpc.RpcError) as info:
        served["prediction"].Classify(request)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED and "call Predict instead" in info.value.details()


def _http(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_rest_status_metadata_and_predict_formats(served):
    rest, golden = served["rest"], served["golden"]
    status, body = _http(f"{rest}/v1/models/digits/versions/1")
    assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    status, body = _http(f"{rest}/v1/models/digits/metadata")
    assert status == 200 and "image" in body["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    images = golden["inputs/image"][:3]
    expected = golden["outputs/probabilities"][:3]
    status, body = _http(f"{rest}/v1/models/digits/labels/stable:predict", {"instances": images.tolist()})
    assert status == 200
    np.testing.assert_allclose(np.array(body["predictions"]), expected, atol=1e-5)
    status, body = _http(f"{rest}/v1/models/digits/versions/1:predict", {"signature_name": "serving_default", "inputs": {"image": images.tolist()}})
    assert status == 200
    np.testing.assert_allclose(np.array(body["outputs"]), expected, atol=1e-5)


def test_rest_binary_values_and_errors(served):
    rest = served["rest"]
    payload = base64.b64encode(b"hello\xff").decode()
    status, body = _http(f"{rest}/v1/models/echo:predict", {"instances": [{"b64": payload}, "abc"]})
    assert status == 200
    assert body["predictions"][0]["length"] == 6 and body["predictions"][1]["upper"] == "ABC"
    assert _http(f"{rest}/v1/models/nope:predict", {"instances": [1]}) == (404, {"error": "Servable not found for request: Latest(nope)"})
    status, body = _http(f"{rest}/v1/models/digits:predict", {"instances": [[1, 2]]})
    assert status == 400 and "shape" in body["error"]
    status, body = _http(f"{rest}/v1/models/digits:predict", {"nothing": 1})
    assert status == 400 and "instances" in body["error"]


def test_metrics_use_tf_serving_names(served):
    served["prediction"].Predict(_request(inputs={"image": served["golden"]["inputs/image"][:1]}))
    with urllib.request.urlopen(f"{served['rest']}/monitoring/prometheus/metrics") as response:
        text = response.read().decode()
    assert ':tensorflow:serving:request_count{model_name="digits",status="OK"}' in text
    assert ':tensorflow:serving:request_latency_bucket{model_name="digits",API="predict",entrypoint="GRPC",le="+Inf"}' in text
    assert ':tensorflow:serving:model_warmup_seconds{model_name="digits",model_version="1"}' in text


def test_new_version_while_requests_flow_and_broken_version(signed_repo, keys, tmp_path):
    from tfship.client.grpc_client import ServingClient
    from tfship.serving.config import VersionPolicy

    repo = tmp_path / "models"
    (repo / "digits").mkdir(parents=True)
    shutil.copytree(signed_repo["repo"] / "digits" / "1", repo / "digits" / "1")
    engine = start_engine(repo, public_key=keys["public"], policy=VersionPolicy("latest", 1), models=["digits"])
    images = np.load(repo / "digits" / "1" / "golden.npz")["inputs/image"][:4]
    failures, versions = [], []
    stop = threading.Event()

    def load():
        with ServingClient(f"127.0.0.1:{engine.grpc_port}", timeout=10) as client:
            while not stop.is_set():
                try:
                    versions.append(client.predict_with_version({"image": images}, "digits")[1])
                except Exception as exc:  # any failed request is a failure of the transition
                    failures.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        staging = repo / "digits" / ".incoming"
        shutil.copytree(signed_repo["repo"] / "digits" / "2", staging)
        staging.rename(repo / "digits" / "2")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not versions or versions[-1] != 2):
            time.sleep(0.1)
        assert versions and versions[-1] == 2
        # A broken version: tampered after signing. It ends in END; version 2 keeps serving.
        staging = repo / "digits" / ".incoming3"
        shutil.copytree(signed_repo["repo"] / "digits" / "2", staging)
        (staging / "saved_model.pb").write_bytes(b"garbage")
        staging.rename(repo / "digits" / "3")
        deadline = time.monotonic() + 30
        states = []
        while time.monotonic() < deadline:
            states = engine.core.manager.status("digits")
            if any(s.version == 3 and s.state == "END" for s in states):
                break
            time.sleep(0.1)
        count = len(versions)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
        engine.stop(grace=1)
    assert failures == []
    assert {s.version: s.state for s in states}.get(3) == "END"
    assert "signature check failed" in next(s.error_message for s in states if s.version == 3)
    assert set(versions[count:]) == {2}  # the old version kept serving


def test_failed_warmup_ends_the_version(signed_repo, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(signed_repo["repo"] / "digits" / "1", repo / "digits" / "1")
    (repo / "digits" / "1" / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"not a tfrecord at all")
    engine = start_engine(repo, models=["digits"])
    try:
        (state,) = engine.core.manager.status("digits")
        assert state.state == "END" and "warmup" in state.error_message
    finally:
        engine.stop(grace=0)


def test_batching_gives_each_caller_its_own_rows(signed_repo, tmp_path):
    from tfship.client.grpc_client import ServingClient
    from tfship.serving.config import BatchingOptions

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    engine = start_engine(repo, batching=BatchingOptions(max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=2,
                                                          allowed_batch_sizes=(4, 8)), models=["digits"])
    golden = np.load(repo / "digits" / "1" / "golden.npz")
    images, expected = golden["inputs/image"], golden["outputs/probabilities"]
    results = {}
    try:
        with ServingClient(f"127.0.0.1:{engine.grpc_port}") as client:
            def call(i):
                rows = slice(i * 2, i * 2 + 1 + i % 2)  # batch sizes 1 and 2
                results[i] = (rows, client.predict({"image": images[rows]}, "digits", version=1)["probabilities"])

            threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            with pytest.raises(Exception) as info:
                client.predict({"image": images[:9]}, "digits", version=1)
            assert "Task size 9 is larger than maximum input batch size 8" in str(info.value)
        metrics = engine.core.metrics.render()
    finally:
        engine.stop(grace=1)
    assert len(results) == 16
    for rows, answer in results.values():
        np.testing.assert_allclose(answer, expected[rows], atol=1e-5)
    batches = int(next(line.split()[-1] for line in metrics.splitlines() if line.startswith(":tensorflow:serving:batching_session:batch_count{")))
    assert batches < 16  # requests were merged


def test_tls(signed_repo, tmp_path):
    from tfship.client.grpc_client import ServingClient
    from tfship.core.errors import ServerUnavailable
    from tfship.serving.local_engine import TlsOptions

    key, cert = self_signed(tmp_path / "tls")
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    engine = start_engine(repo, tls=TlsOptions(key.read_bytes(), cert.read_bytes()), models=["digits"])
    try:
        images = np.load(repo / "digits" / "1" / "golden.npz")["inputs/image"][:2]
        with ServingClient(f"localhost:{engine.grpc_port}", root_certificates=cert.read_bytes()) as client:
            assert client.predict({"image": images}, "digits")["probabilities"].shape == (2, 10)
        with ServingClient(f"localhost:{engine.grpc_port}", timeout=3, retries=2) as plain, pytest.raises(ServerUnavailable):
            plain.predict({"image": images}, "digits")
    finally:
        engine.stop(grace=0)


def test_graceful_stop_lets_in_flight_requests_finish(signed_repo, tmp_path):
    from tfship.client.grpc_client import ServingClient
    from tfship.serving.config import BatchingOptions

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    # A long batching window keeps the request in flight while the engine is asked to stop.
    engine = start_engine(repo, batching=BatchingOptions(max_batch_size=64, batch_timeout_micros=800_000), models=["digits"])
    images = np.load(repo / "digits" / "1" / "golden.npz")["inputs/image"][:2]
    outcome = {}

    def call():
        with ServingClient(f"127.0.0.1:{engine.grpc_port}", timeout=10) as client:
            try:
                outcome["result"] = client.predict({"image": images}, "digits")
            except Exception as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.3)
    engine.stop(grace=5)
    thread.join()
    assert "error" not in outcome and outcome["result"]["probabilities"].shape == (2, 10)


def test_garbage_bytes_get_invalid_argument(served):
    channel = grpc.insecure_channel(f"127.0.0.1:{served['engine'].grpc_port}")
    call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        call(b"\xff\xff\xff not a protobuf", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "wire format is corrupt" in info.value.details()
    channel.close()


def _tf1_classifier(path):
    """A SavedModel with TF1-style classify and regress signatures over serialized tf.Examples."""
    import tensorflow as tf

    with tf.Graph().as_default():
        examples = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
        x = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]
        scores = tf.concat([x, 1 - x], axis=1)
        classes = tf.tile(tf.constant([["yes", "no"]]), [tf.shape(x)[0], 1])
        classify = tf.compat.v1.saved_model.classification_signature_def(examples=examples, classes=classes, scores=scores)
        regress = tf.compat.v1.saved_model.regression_signature_def(examples=examples, predictions=x * 2)
        builder = tf.compat.v1.saved_model.Builder(str(path))
        with tf.compat.v1.Session() as session:
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"serving_default": classify, "regress": regress})
        builder.save()


def test_classify_and_regress_on_their_signatures(tmp_path):
    import tensorflow as tf
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    _tf1_classifier(tmp_path / "models" / "cls" / "1")
    engine = start_engine(tmp_path / "models", models=["cls"])
    prediction, _, channel = official_stubs(engine.grpc_port)
    try:
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "cls"
        for value in (0.25, 0.9):
            example = request.input.example_list.examples.add()
            example.features.feature["x"].float_list.value.append(value)
        result = prediction.Classify(request).result
        assert [[(c.label, round(c.score, 4)) for c in r.classes] for r in result.classifications] == \
            [[("yes", 0.25), ("no", 0.75)], [("yes", 0.9), ("no", 0.1)]]
        regression = regression_pb2.RegressionRequest()
        regression.model_spec.name = "cls"
        regression.model_spec.signature_name = "regress"
        regression.input.example_list.examples.add().features.feature["x"].float_list.value.append(1.5)
        assert [round(r.value, 4) for r in prediction.Regress(regression).result.regressions] == [3.0]
        rest = f"http://127.0.0.1:{engine.rest_port}/v1/models/cls"
        status, body = _http(f"{rest}:classify", {"examples": [{"x": 0.25}, {"x": 0.9}]})
        assert status == 200
        assert [[(label, round(score, 4)) for label, score in r] for r in body["results"]] == \
            [[("yes", 0.25), ("no", 0.75)], [("yes", 0.9), ("no", 0.1)]]
        status, body = _http(f"{rest}:regress", {"signature_name": "regress", "examples": [{"x": 1.5}]})
        assert status == 200 and [round(v, 4) for v in body["results"]] == [3.0]
        status, body = _http(f"{rest}:regress", {"examples": [{"x": 1.5}]})  # serving_default is a classify signature
        assert status == 501 and "needs a signature with method tensorflow/serving/regress" in body["error"]
        del tf
    finally:
        channel.close()
        engine.stop(grace=0)


def test_reload_config_adds_a_model(signed_repo, tmp_path):
    from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    shutil.copytree(repo / "digits", repo / "second")
    engine = start_engine(repo, models=["digits"])
    _, model_service, channel = official_stubs(engine.grpc_port)
    try:
        request = model_management_pb2.ReloadConfigRequest()
        for name in ("digits", "second"):
            config = request.config.model_config_list.config.add(name=name, base_path=str(repo / name), model_platform="tensorflow")
            config.model_version_policy.latest.num_versions = 1
        response = model_service.HandleReloadConfigRequest(request)
        assert response.status.error_code == 0
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "second"
        assert [(s.version, s.state) for s in model_service.GetModelStatus(status_request).model_version_status] == [(2, 30)]
    finally:
        channel.close()
        engine.stop(grace=0)


def test_removed_version_is_unloaded(signed_repo, tmp_path):
    from tfship.client.grpc_client import ServingClient

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    engine = start_engine(repo, models=["digits"])  # policy all: versions 1 and 2
    try:
        with ServingClient(f"127.0.0.1:{engine.grpc_port}") as client:
            images = np.load(repo / "digits" / "1" / "golden.npz")["inputs/image"][:1]
            assert client.predict_with_version({"image": images}, "digits")[1] == 2
            shutil.rmtree(repo / "digits" / "2")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(s.version == 2 for s in engine.core.manager.status("digits")):
                time.sleep(0.1)
            assert [s.version for s in engine.core.manager.status("digits")] == [1]
            assert client.predict_with_version({"image": images}, "digits")[1] == 1
    finally:
        engine.stop(grace=0)
