"""The engine's /monitoring/prometheus/metrics page against TF Serving's metric definitions.

The oracle is TF Serving's source, quoted next to each expectation: the metric's name, label names and
type where it is defined, its buckets from TensorFlow's sampler, and how prometheus_exporter.cc writes it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import copy_repo
from engine_helpers import official_stubs, start_engine

from tfship.serving.local_engine.metrics import UNKNOWN_MODEL, Metrics


def tf_bucket_bounds(scale: float, growth: float, count: int) -> list[str]:
    """tensorflow/core/lib/monitoring/sampler.cc, ExponentialBuckets::ComputeBucketLimits:
    ``double bound = scale; for (i < bucket_count) { push_back(bound); bound *= growth_factor; }``, then
    ExplicitBuckets appends DBL_MAX. tensorflow_serving/util/prometheus_exporter.cc writes each limit with
    absl::StrCat(double) (six significant digits) and the last one as "+Inf"."""
    bounds, bound = [], scale
    for _ in range(count):
        bounds.append(f"{bound:.6g}")
        bound *= growth
    return bounds + ["+Inf"]


# tensorflow_serving/servables/tensorflow/util.cc: request_latency and runtime_latency use
# monitoring::Buckets::Exponential(10, 1.8, 33); the first limits as TF Serving's page shows them.
LATENCY_LE = tf_bucket_bounds(10, 1.8, 33)
assert LATENCY_LE[:10] == ["10", "18", "32.4", "58.32", "104.976", "188.957", "340.122", "612.22", "1102", "1983.59"]
# tensorflow_serving/batching/batching_util.h: processed_batch_size, padding_size, input_batch_size use
# monitoring::Buckets::Exponential(1, 2, 14).
BATCH_LE = tf_bucket_bounds(1, 2, 14)


def scrape(rest: str) -> tuple[str, str]:
    with urllib.request.urlopen(f"{rest}/monitoring/prometheus/metrics", timeout=30) as response:
        return response.headers["Content-Type"], response.read().decode()


def families(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str, suffix: str, family: str, **labels: str) -> list:
    """The samples named ``family + suffix`` whose labels include ``labels``."""
    return [s for s in families(text)[family].samples
            if s.name.removesuffix("_total") == family + suffix and labels.items() <= s.labels.items()]


def value(text: str, family: str, suffix: str = "", **labels: str) -> float:
    found = samples(text, suffix, family, **labels)
    return sum(s.value for s in found)


def rest_predict(rest: str, model: str, rows: list) -> int:
    request = urllib.request.Request(f"{rest}/v1/models/{model}:predict", data=json.dumps({"instances": rows}).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def predict_request(model: str, images: np.ndarray):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
    return request


@pytest.fixture(scope="module")
def served(signed_repo, tmp_path_factory):
    repo = copy_repo(signed_repo["repo"], tmp_path_factory.mktemp("metrics") / "models")
    engine = start_engine(repo, models=["digits"])
    prediction, _, channel = official_stubs(engine.grpc_port)
    images = np.load(repo / "digits" / "1" / "golden.npz")["inputs/image"]
    yield {"engine": engine, "prediction": prediction, "images": images, "rest": f"http://127.0.0.1:{engine.rest_port}"}
    channel.close()
    engine.stop(grace=1)


REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"


def test_requests_move_tf_serving_counters_and_latency(served):
    import grpc
    from tensorflow_serving.apis import get_model_metadata_pb2

    prediction, images, rest = served["prediction"], served["images"], served["rest"]
    _, before = scrape(rest)
    for _ in range(3):
        prediction.Predict(predict_request("digits", images[:2]))
    for _ in range(2):
        assert rest_predict(rest, "digits", images[:1].tolist()) == 200
    with pytest.raises(grpc.RpcError) as info:
        prediction.Predict(predict_request("nope", images[:1]))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert rest_predict(rest, "attacker-chosen-name", [[1]]) == 404
    with pytest.raises(grpc.RpcError):
        prediction.Predict(predict_request("digits", images[:1, :4]))  # wrong shape: INVALID_ARGUMENT
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "digits"
    prediction.GetModelMetadata(metadata)
    content_type, after = scrape(rest)

    assert content_type.startswith("text/plain; version=0.0.4")
    # prometheus_exporter.cc SerializeScalar: "# TYPE %s %s" with metric_type_str "counter", and samples
    # named as the metric: no "_total" anywhere.
    assert f"# TYPE {REQUEST_COUNT} counter\n" in after
    assert f"{REQUEST_COUNT}_total" not in after
    # util.cc: Counter<2>::New("/tensorflow/serving/request_count", ..., "model_name", "status"), the status
    # being error::Code_Name(status.code()). prediction_service_impl.cc counts Predict, Classify and Regress,
    # not GetModelMetadata: 3 gRPC + 2 REST predictions, nothing for the metadata call.
    assert value(after, REQUEST_COUNT, model_name="digits", status="OK") - \
        value(before, REQUEST_COUNT, model_name="digits", status="OK") == 5
    assert value(after, REQUEST_COUNT, model_name="digits", status="INVALID_ARGUMENT") - \
        value(before, REQUEST_COUNT, model_name="digits", status="INVALID_ARGUMENT") == 1
    # The cardinality guard: names the engine does not serve share one label.
    assert value(after, REQUEST_COUNT, model_name=UNKNOWN_MODEL, status="NOT_FOUND") - \
        value(before, REQUEST_COUNT, model_name=UNKNOWN_MODEL, status="NOT_FOUND") == 2
    assert "nope" not in after and "attacker-chosen-name" not in after
    assert {tuple(s.labels) for s in families(after)[REQUEST_COUNT].samples} == {("model_name", "status")}

    # util.cc: Sampler<3>::New({"/tensorflow/serving/request_latency", ..., "model_name", "API", "entrypoint"}).
    # prediction_service_impl.cc records it only when the request succeeded (if (status.ok())).
    latency = families(after)[REQUEST_LATENCY]
    assert latency.type == "histogram"
    assert {tuple(s.labels) for s in latency.samples if s.name.endswith("_bucket")} == {("model_name", "API", "entrypoint", "le")}
    assert {tuple(s.labels) for s in latency.samples if not s.name.endswith("_bucket")} == {("model_name", "API", "entrypoint")}

    def latency_count(text: str, entrypoint: str) -> float:
        # The gRPC API label is "Predict" in TF Serving (prediction_service_impl.cc), "predict" over REST
        # (the REST handler's method); either spelling is accepted here, the entrypoint tells them apart.
        return sum(s.value for s in families(text)[REQUEST_LATENCY].samples if s.name.endswith("_count")
                   and s.labels["model_name"] == "digits" and s.labels["entrypoint"] == entrypoint
                   and s.labels["API"].lower() == "predict")

    assert latency_count(after, "GRPC") - latency_count(before, "GRPC") == 3  # the failed ones add nothing
    assert latency_count(after, "REST") - latency_count(before, "REST") == 2
    rest_buckets = [s for s in latency.samples if s.name.endswith("_bucket") and s.labels["entrypoint"] == "REST"]
    assert [s.labels["le"] for s in rest_buckets] == LATENCY_LE
    assert rest_buckets[-1].value == latency_count(after, "REST")
    assert '{model_name="digits",API="predict",entrypoint="REST",le="10"}' in after  # TF Serving's label order


def test_load_inflight_and_queue_gauges(served):
    _, text = scrape(served["rest"])
    found = families(text)
    # tensorflow/cc/saved_model/loader.cc: Counter<2>::New("/tensorflow/cc/saved_model/load_attempt_count",
    #   ..., "model_path", "status") with kLoadAttemptSuccess = "success"; Counter<1>::New(
    #   "/tensorflow/cc/saved_model/load_latency", ..., "model_path").
    attempts = found[":tensorflow:cc:saved_model:load_attempt_count"]
    assert attempts.type == "counter"
    assert sum(s.value for s in attempts.samples if s.labels["status"] == "success") == 2  # versions 1 and 2
    assert {tuple(s.labels) for s in attempts.samples} == {("model_path", "status")}
    assert "# TYPE :tensorflow:cc:saved_model:load_latency counter\n" in text
    assert all(s.value > 0 for s in found[":tensorflow:cc:saved_model:load_latency"].samples)
    # tfship's own gauges: present at 0 for the served model when nothing is in flight or queued.
    assert value(text, "tfship_inflight_requests", model_name="digits") == 0
    assert value(text, "tfship_batch_queue_depth", model_name="digits") == 0
    assert found["tfship_inflight_requests"].type == "gauge" and found["tfship_batch_queue_depth"].type == "gauge"


def test_batching_records_processed_batch_size(signed_repo, tmp_path):
    from tfship.client.grpc_client import ServingClient
    from tfship.serving.config import BatchingOptions

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    engine = start_engine(repo, batching=BatchingOptions(max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=2,
                                                          allowed_batch_sizes=(4, 8)), models=["digits"])
    images = np.load(repo / "digits" / "1" / "golden.npz")["inputs/image"]
    try:
        with ServingClient(f"127.0.0.1:{engine.grpc_port}") as client:
            threads = [threading.Thread(target=client.predict, args=({"image": images[i:i + 1 + i % 2]}, "digits"),
                                        kwargs={"version": 1}) for i in range(12)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        _, text = scrape(f"http://127.0.0.1:{engine.rest_port}")
    finally:
        engine.stop(grace=1)
    # batching_util.h: Sampler<0>::New({"/tensorflow/serving/" + BatchingTask::Name() + "/processed_batch_size",
    #   "Tracks the batch size distribution on processing."}, Buckets::Exponential(1, 2, 14)), recorded by
    #   batching_session.cc MergeInputTensors with the padded size (RoundToLowestAllowedBatchSize).
    name = ":tensorflow:serving:batching_session:processed_batch_size"
    family = families(text)[name]
    assert family.type == "histogram"
    buckets = [s for s in family.samples if s.name.endswith("_bucket")]
    assert [s.labels for s in buckets] == [{"le": le} for le in BATCH_LE]  # no other label
    batches = value(text, name, "_count")
    assert 1 <= batches < 12  # requests were merged
    padded = value(text, name, "_sum")
    assert padded % 4 == 0 and 18 <= padded <= 8 * batches  # 18 rows, each batch padded to 4 or 8
    # TensorFlow's histogram puts a value in the first bucket whose limit is above it: 4 under le="8".
    assert value(text, name, "_bucket", le="4") == 0 and value(text, name, "_bucket", le="16") == batches


# -- the Metrics object itself (methods whose call sites the engine has yet to wire) ----------------


def test_runtime_warmup_and_examples_use_tf_serving_definitions():
    metrics = Metrics()
    metrics.load("m", 1, "ok", 2.0, 0.5, path="/models/m/1")
    metrics.runtime("m", "Predict", "TF1", 10)  # exactly a bucket limit
    metrics.runtime("m", "Predict", "TF1", 1e12)  # beyond the last limit
    metrics.warmup("/models/m/1", "OK", 1500)
    metrics.examples("m", 3)
    text = metrics.render()
    found = families(text)
    # util.cc: Sampler<3>::New({"/tensorflow/serving/runtime_latency", ..., "model_name", "API", "runtime"},
    #   Buckets::Exponential(10, 1.8, 33)); predict_util.cc: RecordRuntimeLatency(..., /*api=*/"Predict",
    #   /*runtime=*/"TF1", ...).
    runtime = [s for s in found[":tensorflow:serving:runtime_latency"].samples if s.name.endswith("_bucket")]
    assert [s.labels["le"] for s in runtime] == LATENCY_LE
    # sampler.cc: bucket i holds values below limit i, so 10 is counted from le="18" on, 1e12 only in +Inf.
    assert [s.value for s in runtime[:2]] == [0, 1] and runtime[-2].value == 1 and runtime[-1].value == 2
    assert ':tensorflow:serving:runtime_latency_bucket{model_name="m",API="Predict",runtime="TF1",le="10"} 0.0' in text
    # saved_model_warmup_util.cc: Sampler<2>::New({"/tensorflow/serving/model_warmup_latency", ..., "model_path",
    #   "status"}, Buckets::Exponential(10, 1.8, 33)); the cell is (export_dir, status.ToString()).
    assert value(text, ":tensorflow:serving:model_warmup_latency", "_count", model_path="/models/m/1", status="OK") == 1
    assert value(text, ":tensorflow:serving:model_warmup_latency", "_sum") == 1500
    # util.cc: Sampler<1>::New({"/tensorflow/serving/request_example_counts", ..., "model"},
    #   Buckets::Exponential(1, 2, 15)) and Counter<1>::New("/tensorflow/serving/request_example_count_total", ..., "model").
    examples = [s for s in found[":tensorflow:serving:request_example_counts"].samples if s.name.endswith("_bucket")]
    assert [s.labels["le"] for s in examples] == tf_bucket_bounds(1, 2, 15)
    assert "# TYPE :tensorflow:serving:request_example_count_total counter\n" in text
    assert ':tensorflow:serving:request_example_count_total{model="m"} 3.0' in text
    # loader.cc: load_latency counts microseconds of TensorFlow's load, which ends before the warmup.
    assert value(text, ":tensorflow:cc:saved_model:load_latency", model_path="/models/m/1") == 1_500_000
    assert ':tensorflow:cc:saved_model:load_attempt_count{model_path="/models/m/1",status="success"} 1.0' in text


def test_failed_load_counts_as_fail_and_names_the_model():
    metrics = Metrics()
    metrics.request("m", "predict", "REST", "NOT_FOUND", 5)
    assert metrics.model_label("m") == UNKNOWN_MODEL
    metrics.load("m", 3, "error", 0.1, 0.0, path="/models/m/3")
    metrics.request("m", "predict", "REST", "NOT_FOUND", 5)
    text = metrics.render()
    assert ':tensorflow:cc:saved_model:load_attempt_count{model_path="/models/m/3",status="fail"} 1.0' in text
    assert ':tensorflow:cc:saved_model:load_latency{' not in text  # only successful loads add latency
    assert value(text, REQUEST_COUNT, model_name=UNKNOWN_MODEL) == 1 and value(text, REQUEST_COUNT, model_name="m") == 1


def test_inflight_gauge_follows_concurrent_requests():
    metrics = Metrics()
    metrics.load("m", 1, "ok", 1.0, 0.0)
    inside, release = threading.Barrier(5), threading.Event()

    def handle(fail: bool) -> None:
        try:
            with metrics.inflight("m"):
                inside.wait()
                release.wait(10)
                if fail:
                    raise ValueError("the request failed")
        except ValueError:
            pass

    threads = [threading.Thread(target=handle, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    inside.wait()
    assert value(metrics.render(), "tfship_inflight_requests", model_name="m") == 4
    release.set()
    for t in threads:
        t.join()
    assert value(metrics.render(), "tfship_inflight_requests", model_name="m") == 0
    with metrics.inflight("somebody-else"):
        assert value(metrics.render(), "tfship_inflight_requests", model_name=UNKNOWN_MODEL) == 1


def test_each_engine_has_its_own_registry():
    from prometheus_client import REGISTRY, generate_latest

    first, second = Metrics(), Metrics()
    first.load("m", 1, "ok", 1.0, 0.0)
    first.request("m", "Predict", "GRPC", "OK", 100)
    assert value(first.render(), REQUEST_COUNT) == 1 and value(second.render(), REQUEST_COUNT) == 0
    assert b"tensorflow" not in generate_latest(REGISTRY) and b"tfship_" not in generate_latest(REGISTRY)


def test_batcher_records_batching_session_metrics_and_queue_depth():
    from tfship.serving.config import BatchingOptions
    from tfship.serving.local_engine.batching import Batcher

    metrics = Metrics()
    metrics.load("m", 1, "ok", 1.0, 0.0)
    batcher = Batcher(BatchingOptions(max_batch_size=8, batch_timeout_micros=200_000, num_batch_threads=1,
                                      allowed_batch_sizes=(4, 8)), metrics=metrics)

    def double(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": arrays["x"] * 2}

    async def scenario() -> tuple[str, list]:
        calls = [asyncio.ensure_future(batcher.submit(("m", 1, "serving_default"), "m", {"x": np.full((n, 3), n)}, n, double))
                 for n in (1, 2)]
        await asyncio.sleep(0.05)  # both queued, the batch not yet due
        waiting = metrics.render()
        return waiting, await asyncio.gather(*calls)

    try:
        waiting, answers = asyncio.run(scenario())
    finally:
        batcher.stop()
    assert value(waiting, "tfship_batch_queue_depth", model_name="m") == 2
    assert [a["y"].tolist() for a in answers] == [[[2, 2, 2]], [[4, 4, 4], [4, 4, 4]]]
    text = metrics.render()
    assert value(text, "tfship_batch_queue_depth", model_name="m") == 0
    prefix = ":tensorflow:serving:batching_session:"
    # batching_session.cc: one batch of 3 rows padded to 4: processed_batch_size 4, padding_size 1 under
    # execution_batch_size="4" (batching_util.h: Sampler<1>, label "execution_batch_size").
    assert value(text, prefix + "processed_batch_size", "_count") == 1 and value(text, prefix + "processed_batch_size", "_sum") == 4
    assert value(text, prefix + "padding_size", "_sum", execution_batch_size="4") == 1
    # ComputeInputSize: each task's input tensor, 1 and 2 rows.
    assert value(text, prefix + "input_batch_size", "_count") == 2 and value(text, prefix + "input_batch_size", "_sum") == 3
    # batching_session.cc: Sampler<1>::New({".../queuing_latency", ..., "thread_pool_name"},
    #   Buckets::Exponential(100, 1.2, 52)); each task waited for the 200 ms timeout (at least 150 ms here).
    queuing = [s for s in families(text)[prefix + "queuing_latency"].samples if s.name.endswith("_bucket")]
    assert [s.labels["le"] for s in queuing] == tf_bucket_bounds(100, 1.2, 52)
    assert {s.labels["thread_pool_name"] for s in queuing} == {""}
    assert value(text, prefix + "queuing_latency", "_count") == 2
    assert value(text, prefix + "queuing_latency", "_sum") >= 2 * 150_000
