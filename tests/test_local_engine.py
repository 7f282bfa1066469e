"""The local engine against TF Serving's own stubs and REST calls, on loopback ports."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from conftest import copy_repo
from engine_helpers import RequestLoad, official_stubs, self_signed, start_engine, version_states, wait_until

from tfship.core.errors import ServerUnavailable
from tfship.serving.readiness import wait_ready


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
    # get_model_metadata_impl.cc, SavedModelGetSignatureDef: every SignatureDef of the served MetaGraph is copied,
    # a TF2 export's __saved_model_init_op (tensorflow/cc/saved_model/constants.h) among them.
    from tensorflow.core.protobuf import saved_model_pb2

    stored = saved_model_pb2.SavedModel.FromString((served["repo"] / "digits" / "2" / "saved_model.pb").read_bytes())
    assert set(signatures.signature_def) == set(stored.meta_graphs[0].signature_def) == {"serving_default", "__saved_model_init_op"}
    assert [d.size for d in signature.inputs["image"].tensor_shape.dim] == [-1, 8, 8, 1]

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "digits"
    status = served["model"].GetModelStatus(status_request)
    assert [(s.version, s.state) for s in status.model_version_status] == [(1, 30), (2, 30)]


def test_label_routing(served):
    images = served["golden"]["inputs/image"][:1]
    assert served["prediction"].Predict(_request(inputs={"image": images}, version_label="stable")).model_spec.version.value == 1
    assert served["prediction"].Predict(_request(inputs={"image": images}, version_label="canary")).model_spec.version.value == 2


# TF Serving's answers, each quoted from the source that produces it (tensorflow/serving, and TensorFlow
# for the dtype check), so that the oracle is TF Serving and not tfship's own constants.
TF_SERVING_ERRORS = {
    # tensorflow_serving/servables/tensorflow/predict_impl.cc:
    #   if (!request.has_model_spec()) { ... INVALID_ARGUMENT, "Missing ModelSpec" }
    "no model spec": (lambda g: _request(model=None, inputs={"image": g}), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
    # tensorflow_serving/core/basic_manager.cc: errors::NotFound("Servable not found for request: ", request.DebugString())
    # tensorflow_serving/core/manager.h, ServableRequest::DebugString(): StrCat("Latest(", name, ")") and
    #   StrCat("Specific(", name, ", ", version.value(), ")")
    "unknown model": (lambda g: _request(model="nope", inputs={"image": g}), grpc.StatusCode.NOT_FOUND,
                      "Servable not found for request: Latest(nope)"),
    "unknown version": (lambda g: _request(inputs={"image": g}, version=7), grpc.StatusCode.NOT_FOUND,
                        "Servable not found for request: Specific(digits, 7)"),
    # tensorflow_serving/model_servers/server_core.cc:
    #   errors::InvalidArgument(strings::StrCat("Unrecognized servable version label: ", label))
    "unknown label": (lambda g: _request(inputs={"image": g}, version_label="gold"), grpc.StatusCode.INVALID_ARGUMENT,
                      "Unrecognized servable version label: gold"),
    # tensorflow_serving/servables/tensorflow/predict_util.cc:
    #   errors::FailedPrecondition(strings::StrCat("Serving signature key \"", signature_name, "\" not found."))
    "unknown signature": (lambda g: _request(inputs={"image": g}, signature_name="X"), grpc.StatusCode.FAILED_PRECONDITION,
                          'Serving signature key "X" not found.'),
    # tensorflow_serving/servables/tensorflow/predict_util.cc, VerifyRequestInputsSize: kInvalidArgument,
    #   "input size does not match signature: ", request.inputs().size(), "!=", signature.inputs().size(), " len({",
    #   StrJoin(request_inputs, ","), "}) != len({", StrJoin(signature_inputs, ","), "}). Sent extra: {",
    #   StrJoin(sent_extra, ","), "}. Missing but required: {", StrJoin(missing, ","), "}."
    "extra input": (lambda g: _request(inputs={"image": g, "b": g}), grpc.StatusCode.INVALID_ARGUMENT,
                    "input size does not match signature: 2!=1 len({b,image}) != len({image}). Sent extra: {b}. Missing but required: {}."),
    "missing input": (lambda g: _request(inputs={}), grpc.StatusCode.INVALID_ARGUMENT,
                      "input size does not match signature: 0!=1 len({}) != len({image}). Sent extra: {}. Missing but required: {image}."),
    # tensorflow/core/framework/function.cc, FunctionCallFrame::SetArgs: errors::InvalidArgument(
    #   "Expects arg[", i, "] to be ", DataTypeString(arg_types_[i]), " but ", DataTypeString(args[i].dtype()), " is provided")
    "wrong dtype": (lambda g: _request(inputs={"image": g.astype(np.int64)}), grpc.StatusCode.INVALID_ARGUMENT,
                    "Expects arg[0] to be float but int64 is provided"),
}


@pytest.mark.parametrize("case", sorted(TF_SERVING_ERRORS))
def test_errors_match_tf_serving(case, served):
    make, code, message = TF_SERVING_ERRORS[case]
    with pytest.raises(grpc.RpcError) as info:
        served["prediction"].Predict(make(served["golden"]["inputs/image"][:2]))
    assert info.value.code() == code
    assert message in info.value.details()


def test_wrong_shape_names_the_input_and_both_shapes(served):
    # TF Serving does not check shapes (tensorflow/serving #1436); tfship's own message when TensorFlow
    # fails on one (DESIGN.md section 5) names the input, the shape received and the declared one.
    with pytest.raises(grpc.RpcError) as info:
        served["prediction"].Predict(_request(inputs={"image": served["golden"]["inputs/image"][:2, :4]}))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image" in info.value.details() and "[2, 4, 8, 1]" in info.value.details() and "[-1, 8, 8, 1]" in info.value.details()


def test_bad_output_filter_and_metadata_without_field(served):
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = _request(inputs={"image": served["golden"]["inputs/image"][:1]})
    request.output_filter.append("nope")
    with pytest.raises(grpc.RpcError) as info:
        served["prediction"].Predict(request)
    # tensorflow_serving/servables/tensorflow/predict_util.cc: kInvalidArgument,
    #   "output tensor alias not found in signature: ", alias, " Outputs expected to be in the set {", ...
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: nope" in info.value.details()
    metadata_request = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata_request.model_spec.name = "digits"
    with pytest.raises(grpc.RpcError) as info:
        served["prediction"].GetModelMetadata(metadata_request)
    # tensorflow_serving/servables/tensorflow/get_model_metadata_impl.cc: INVALID_ARGUMENT,
    #   "GetModelMetadataRequest must specify at least one metadata_field"
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "GetModelMetadataRequest must specify at least one metadata_field"


def test_classify_on_a_predict_signature_with_no_example_input_gets_tf_serving_words(served):
    from tensorflow_serving.apis import classification_pb2

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "digits"
    request.input.example_list.examples.add()
    with pytest.raises(grpc.RpcError) as info:
        served["prediction"].Classify(request)
    # Without --enable_signature_method_name_check the method name is not checked (main.cc); the digits
    # signature has a float image input, no serialized tf.Example one (classifier.cc:
    # "No classification inputs found in SignatureDef: ...").
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("No classification inputs found in SignatureDef")


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
    # tensorflow_serving/servables/tensorflow/util.cc: Counter<2>::New("/tensorflow/serving/request_count", ...,
    #   "model_name", "status") and Sampler<3>::New({"/tensorflow/serving/request_latency", ..., "model_name", "API",
    #   "entrypoint"}); the Prometheus exporter writes '/' as ':'.
    assert ':tensorflow:serving:request_count{model_name="digits",status="OK"}' in text
    # prediction_service_impl.cc: RecordRequestLatency(name, /*api=*/"Predict", /*entrypoint=*/"GRPC", ...);
    # predict_util.cc: RecordRuntimeLatency(name, /*api=*/"Predict", /*runtime=*/"TF1", ...).
    assert ':tensorflow:serving:request_latency_bucket{model_name="digits",API="Predict",entrypoint="GRPC",le="+Inf"}' in text
    assert ':tensorflow:serving:runtime_latency_bucket{model_name="digits",API="Predict",runtime="TF1",le="+Inf"}' in text
    # tfship's own gauges for autoscaling: nothing in flight once the call returned.
    assert 'tfship_inflight_requests{model_name="digits"} 0.0' in text


def test_new_version_while_requests_flow_and_broken_version(signed_repo, keys, tmp_path):
    from tfship.serving.config import VersionPolicy

    repo = tmp_path / "models"
    (repo / "digits").mkdir(parents=True)
    shutil.copytree(signed_repo["repo"] / "digits" / "1", repo / "digits" / "1")
    engine = start_engine(repo, public_key=keys["public"], policy=VersionPolicy("latest", 1), models=["digits"])
    images = np.load(repo / "digits" / "1" / "golden.npz")["inputs/image"][:4]
    try:
        with RequestLoad(engine.grpc_port, {"image": images}, threads=4) as load:
            wait_until(lambda: len(load.versions) >= 8, 30, "requests to version 1 flowing")
            staging = repo / "digits" / ".incoming"
            shutil.copytree(signed_repo["repo"] / "digits" / "2", staging)
            staging.rename(repo / "digits" / "2")
            wait_until(lambda: load.versions[-1] == 2, 30, "version 2 answering")
            # A broken version: tampered after signing. It ends in END; version 2 keeps serving.
            staging = repo / "digits" / ".incoming3"
            shutil.copytree(signed_repo["repo"] / "digits" / "2", staging)
            (staging / "saved_model.pb").write_bytes(b"garbage")
            staging.rename(repo / "digits" / "3")
            wait_until(lambda: version_states(engine, "digits").get(3) == "END", 30, "version 3 to end")
            states = engine.core.manager.status("digits")
            count = len(load.versions)
            wait_until(lambda: len(load.versions) >= count + 8, 30, "requests after version 3 failed")
    finally:
        engine.stop(grace=1)
    assert load.failures == []
    assert {s.version: s.state for s in states}.get(3) == "END"
    assert "signature check failed" in next(s.error_message for s in states if s.version == 3)
    assert set(load.versions[count:]) == {2}  # the old version kept serving


def test_failed_warmup_ends_the_version(signed_repo, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(signed_repo["repo"] / "digits" / "1", repo / "digits" / "1")
    (repo / "digits" / "1" / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"not a tfrecord at all")
    engine = start_engine(repo, models=["digits"])
    try:
        (state,) = engine.core.manager.status("digits")
        assert state.state == "END" and "warmup" in state.error_message
        # serve up's readiness loop stops at the END state at once, with the server's reason.
        with pytest.raises(ServerUnavailable) as info:
            wait_ready(f"127.0.0.1:{engine.grpc_port}", {"digits": [1]}, timeout=30)
        assert info.value.message.startswith("digits version 1 failed to load: ") and "warmup" in info.value.message
    finally:
        engine.stop(grace=0)


def test_readiness_waits_for_every_expected_version(served):
    target = f"127.0.0.1:{served['engine'].grpc_port}"
    ready = wait_ready(target, {"digits": [1, 2], "echo": [1]}, timeout=30)
    assert {name: [(s["version"], s["state"]) for s in states] for name, states in ready.items()} == \
        {"digits": [(1, "AVAILABLE"), (2, "AVAILABLE")], "echo": [(1, "AVAILABLE")]}
    with pytest.raises(ServerUnavailable) as info:  # a version the server never loads: the deadline, with what was seen
        wait_ready(target, {"digits": [3]}, timeout=1)
    assert "not AVAILABLE after 1s" in info.value.message and "version 2 AVAILABLE" in info.value.message


def test_batching_gives_each_caller_its_own_rows(signed_repo, tmp_path):
    from tfship.client.grpc_client import ServingClient
    from tfship.core.errors import RpcError
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
            with pytest.raises(RpcError) as info:
                client.predict({"image": images[:9]}, "digits", version=1)
            # tensorflow/core/kernels/batching_util/shared_batch_scheduler.h, ValidateBatchTaskQueueCapacity:
            #   absl::InvalidArgumentError(absl::StrFormat("Task size %d is larger than maximum input batch size %d", ...))
            assert info.value.code == "INVALID_ARGUMENT"
            assert info.value.details == "Task size 9 is larger than maximum input batch size 8"
        metrics = engine.core.metrics.render()
    finally:
        engine.stop(grace=1)
    assert len(results) == 16
    for rows, answer in results.values():
        np.testing.assert_allclose(answer, expected[rows], atol=1e-5)
    batches = int(float(next(line.split()[-1] for line in metrics.splitlines()
                             if line.startswith(":tensorflow:serving:batching_session:processed_batch_size_count"))))
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
    wait_until(lambda: engine.core.batcher.queue_count == 1, 10, "the request to wait in the batch queue")
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
        # serving_default is a classify signature (outputs classes, scores): without the method-name check
        # regressor.cc looks for its one output tensor and refuses: "Expected one output Tensor."
        status, body = _http(f"{rest}:regress", {"examples": [{"x": 1.5}]})
        assert status == 400 and body["error"].startswith("Expected one output Tensor")
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
            assert client.predict({"image": images}, "digits").version == 2
            shutil.rmtree(repo / "digits" / "2")
            wait_until(lambda: 2 not in version_states(engine, "digits"), 15, "version 2 to be unloaded")
            assert [s.version for s in engine.core.manager.status("digits")] == [1]
            assert client.predict({"image": images}, "digits").version == 1
    finally:
        engine.stop(grace=0)


def test_removing_the_new_version_rolls_back_to_the_old_one(signed_repo, tmp_path):
    """With latest:1, deleting version 2 brings version 1 back, and version 2 serves until version 1 is ready.

    TF Serving's rule (tensorflow_serving/core/availability_preserving_policy.h): "if there are any unaspired
    loaded versions, we unload the smallest such version, *unless* that is the only loaded version (to avoid
    compromising availability). Second, if there are no non-aspired versions we are permitted to unload, we
    load the aspired new version with the highest version number."
    """
    from tfship.serving.config import VersionPolicy

    repo = tmp_path / "models"
    shutil.copytree(signed_repo["repo"] / "digits" / "1", repo / "digits" / "1")
    engine = start_engine(repo, policy=VersionPolicy("latest", 1), models=["digits"])
    images = np.load(repo / "digits" / "1" / "golden.npz")["inputs/image"][:2]
    try:
        with RequestLoad(engine.grpc_port, {"image": images}) as load:
            wait_until(lambda: load.versions, 30, "requests to version 1")
            staging = repo / "digits" / ".incoming"
            shutil.copytree(signed_repo["repo"] / "digits" / "2", staging)
            staging.rename(repo / "digits" / "2")
            wait_until(lambda: version_states(engine, "digits") == {1: "END", 2: "AVAILABLE"}, 30, "version 2 to take over")
            shutil.rmtree(repo / "digits" / "2")  # roll back
            wait_until(lambda: version_states(engine, "digits") == {1: "AVAILABLE"}, 30, "version 1 to serve again")
            count = len(load.versions)
            wait_until(lambda: len(load.versions) >= count + 4, 30, "requests after the rollback")
    finally:
        engine.stop(grace=1)
    assert load.failures == []
    # One request may have been under way on version 2 when version 1 came back (one load thread): every later one is 1's.
    assert 2 in load.versions and set(load.versions[count + 1:]) == {1}


@pytest.mark.slow
def test_hot_reloads_under_batching_leave_no_queue_or_model_behind(signed_repo, tmp_path):
    """50 reloads, each answered through the batcher: queues and memory stay flat, unloaded models are freed."""
    import gc
    import weakref

    import psutil

    from tfship.client.grpc_client import ServingClient
    from tfship.serving.config import BatchingOptions, VersionPolicy
    from tfship.serving.local_engine import ModelConfig

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    # poll_seconds=0: no file system poll; each reload_config reconciles at once, so the test sets the pace.
    engine = start_engine(repo, policy=VersionPolicy("specific", versions=(1,)), models=["digits"], poll_seconds=0,
                          batching=BatchingOptions(max_batch_size=8, batch_timeout_micros=1000))
    images = np.load(repo / "digits" / "1" / "golden.npz")["inputs/image"][:2]
    unloaded: list[weakref.ref] = []
    rss: dict[int, int] = {}
    try:
        with ServingClient(f"127.0.0.1:{engine.grpc_port}", timeout=30) as client:
            for reload in range(1, 51):
                version, previous = (2, 1) if reload % 2 else (1, 2)
                # What a batch queue holds: the version's signature entry, with its function.
                entry = engine.core.manager.resolve("digits", previous).signatures["serving_default"]
                unloaded.append(weakref.ref(entry))
                del entry
                engine.core.manager.reload_config([ModelConfig("digits", repo / "digits", VersionPolicy("specific", versions=(version,)))])
                assert version_states(engine, "digits") == {previous: "END", version: "AVAILABLE"}
                assert client.predict({"image": images}, "digits").version == version
                assert engine.core.batcher.queue_count == 0
                if reload in (10, 50):
                    gc.collect()
                    rss[reload] = psutil.Process().memory_info().rss
    finally:
        engine.stop(grace=1)
    gc.collect()
    assert [ref for ref in unloaded if ref() is not None] == []
    growth = rss[50] - rss[10]
    # Measured here: about 20 MiB over these 40 reloads (TensorFlow's own residue per load), about 66 MiB
    # when every batch queue kept its version's function.
    assert growth < 40 << 20, f"RSS grew {growth / 2**20:.0f} MiB over 40 reloads"
