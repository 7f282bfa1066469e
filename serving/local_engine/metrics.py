"""Prometheus metrics with TF Serving's names, served at /monitoring/prometheus/metrics.

Each engine has its own ``prometheus_client.CollectorRegistry`` (several engines run in one process).
The metrics TF Serving defines keep TF Serving's names, label names, types and bucket bounds: dashboards
and alerts built for TF Serving query them unchanged. tensorflow_serving/util/prometheus_exporter.cc
writes a metric "/tensorflow/serving/request_count" as ":tensorflow:serving:request_count", a counter
without a ``_total`` suffix, labels in the order the metric declares them, and a histogram's buckets as
the TensorFlow sampler holds them. prometheus_client's own Counter and Histogram cannot do that (a
``_total`` suffix, ``le`` bounds compared with <=), so those metrics are held here and handed to the
registry by a collector. tfship's own metrics (prefix ``tfship_``) are plain prometheus_client Gauges.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Requests for a model the engine does not serve are counted under this one name: anyone can send any
# name, and a label per name would let them grow the page without limit.
UNKNOWN_MODEL = "<unknown>"

# The APIs TF Serving counts. tensorflow_serving/model_servers/prediction_service_impl.cc calls
# RecordModelRequestCount and RecordRequestLatency in Predict, Classify and Regress only (not in
# GetModelMetadata nor MultiInference); the REST handler's method is "predict", "classify" or "regress".
COUNTED_APIS = frozenset({"predict", "classify", "regress"})


def exponential_bounds(scale: float, growth: float, count: int) -> tuple[float, ...]:
    """tensorflow/core/lib/monitoring/sampler.cc ExponentialBuckets::ComputeBucketLimits: ``count`` limits
    from ``scale``, each the previous one times ``growth`` (multiplied in turn, as there); ExplicitBuckets
    then appends DBL_MAX, which the exporter writes as le="+Inf"."""
    bounds, bound = [], scale
    for _ in range(count):
        bounds.append(bound)
        bound *= growth
    return tuple(bounds)


# tensorflow_serving/servables/tensorflow/util.cc (request_latency, runtime_latency),
# saved_model_warmup_util.cc (model_warmup_latency): Buckets::Exponential(10, 1.8, 33), microseconds.
LATENCY_BOUNDS = exponential_bounds(10, 1.8, 33)
# tensorflow_serving/batching/batching_session.cc (queuing_latency): Buckets::Exponential(100, 1.2, 52).
QUEUING_BOUNDS = exponential_bounds(100, 1.2, 52)
# tensorflow_serving/batching/batching_util.h (padding_size, input_batch_size, processed_batch_size):
# Buckets::Exponential(1, 2, 14).
BATCH_SIZE_BOUNDS = exponential_bounds(1, 2, 14)
# tensorflow_serving/servables/tensorflow/util.cc (request_example_counts): Buckets::Exponential(1, 2, 15).
EXAMPLE_COUNT_BOUNDS = exponential_bounds(1, 2, 15)


def bound_text(bound: float) -> str:
    """prometheus_exporter.cc writes a bucket limit with absl::StrCat(double): six significant digits."""
    return f"{bound:.6g}"


class _Label(str):
    """A label name that sorts by its place in the metric's declaration.

    generate_latest writes a sample's labels sorted; TF Serving writes them in declaration order
    (``{model_name="m",API="predict",entrypoint="GRPC",le="10"}``) and scrapers or tests matching
    TF Serving's text expect that order. Equal to and hashed as the plain name.
    """

    rank: int

    def __new__(cls, name: str, rank: int) -> _Label:
        label = super().__new__(cls, name)
        label.rank = rank
        return label

    def __lt__(self, other: object) -> bool:
        if isinstance(other, _Label):
            return self.rank < other.rank
        return str.__lt__(self, other)  # type: ignore[operator]


@dataclass
class _Family:
    """One TF Serving metric: its Prometheus name, help, kind, label names and, for a histogram, bounds."""
    name: str
    help: str
    kind: str  # "counter" or "histogram"
    labels: tuple[str, ...]
    bounds: tuple[float, ...] = ()
    values: dict[tuple[str, ...], float] = field(default_factory=dict)
    buckets: dict[tuple[str, ...], list[int]] = field(default_factory=dict)
    sums: dict[tuple[str, ...], float] = field(default_factory=dict)

    def add(self, key: tuple[str, ...], amount: float) -> None:
        self.values[key] = self.values.get(key, 0) + amount

    def observe(self, key: tuple[str, ...], value: float) -> None:
        counts = self.buckets.setdefault(key, [0] * (len(self.bounds) + 1))
        # TensorFlow's histogram counts a value in the first bucket whose limit is above it (upper_bound;
        # sampler.cc: bucket 0 holds [-DBL_MAX, bucket_limits[0])): 10 goes to le="18", not le="10".
        counts[bisect.bisect_right(self.bounds, value)] += 1
        self.sums[key] = self.sums.get(key, 0.0) + value

    def metric(self) -> Metric:
        metric = Metric(self.name, self.help, self.kind)
        names = [_Label(n, i) for i, n in enumerate(self.labels)]
        le = _Label("le", len(self.labels))
        if self.kind == "counter":
            for key, value in sorted(self.values.items()):
                metric.add_sample(self.name, dict(zip(names, key)), value)
            return metric
        texts = [bound_text(b) for b in self.bounds] + ["+Inf"]
        for key, counts in sorted(self.buckets.items()):
            labels: dict[str, str] = dict(zip(names, key))
            cumulative = 0
            for text, count in zip(texts, counts):
                cumulative += count
                metric.add_sample(f"{self.name}_bucket", {**labels, le: text}, cumulative)
            metric.add_sample(f"{self.name}_sum", labels, self.sums[key])
            metric.add_sample(f"{self.name}_count", labels, cumulative)
        return metric


def _prometheus_name(tf_name: str) -> str:
    """prometheus_exporter.cc GetPrometheusMetricName: every character outside [a-zA-Z0-9_] becomes ':'."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "_") else ":" for c in tf_name)


class _TfServingCollector(Collector):
    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def collect(self) -> Iterable[Metric]:
        with self._owner._lock:
            return [family.metric() for family in self._owner._families.values()]


class _GaugeCollector(Collector):
    """A gauge labelled by model_name, held as a plain dict (a prometheus_client Gauge costs a lock and a
    label lookup per change, and these change on every request)."""

    def __init__(self, owner: Metrics, name: str, help_text: str, values: dict[str, int]) -> None:
        self._owner, self._name, self._help, self._values = owner, name, help_text, values

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self._name, self._help, labels=["model_name"])
        with self._owner._lock:
            for model, amount in self._values.items():
                family.add_metric([model], float(amount))
        return [family]


class _Inflight:
    """``with metrics.inflight(model):`` counts the request in tfship_inflight_requests while the block runs."""

    __slots__ = ("_label", "_owner")

    def __init__(self, owner: Metrics, label: str) -> None:
        self._owner, self._label = owner, label

    def __enter__(self) -> None:
        owner = self._owner
        with owner._lock:
            owner._inflight[self._label] = owner._inflight.get(self._label, 0) + 1

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        owner = self._owner
        with owner._lock:
            owner._inflight[self._label] -= 1


class Metrics:
    """The engine's metrics: TF Serving's (as TF Serving exports them) and tfship's own (``tfship_``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Names get labels of their own once the engine loads (or fails to load) a version of them,
        # which it does only for the models it is configured with.
        self._models: set[str] = set()
        families = [
            # tensorflow_serving/servables/tensorflow/util.cc
            _Family("/tensorflow/serving/request_count", "The total number of requests.", "counter",
                    ("model_name", "status")),
            _Family("/tensorflow/serving/request_latency",
                    "Distribution of wall time (in microseconds) for Tensorflow Serving request.", "histogram",
                    ("model_name", "API", "entrypoint"), LATENCY_BOUNDS),
            _Family("/tensorflow/serving/runtime_latency",
                    "Distribution of wall time (in microseconds) for Tensorflow runtime.", "histogram",
                    ("model_name", "API", "runtime"), LATENCY_BOUNDS),
            _Family("/tensorflow/serving/request_example_counts", "The number of tensorflow.Examples per request.",
                    "histogram", ("model",), EXAMPLE_COUNT_BOUNDS),
            _Family("/tensorflow/serving/request_example_count_total", "The total number of tensorflow.Examples.",
                    "counter", ("model",)),
            # tensorflow_serving/servables/tensorflow/saved_model_warmup_util.cc
            _Family("/tensorflow/serving/model_warmup_latency",
                    "Distribution of wall time (in microseconds) for warming up the model.", "histogram",
                    ("model_path", "status"), LATENCY_BOUNDS),
            # tensorflow/cc/saved_model/loader.cc (TensorFlow's own; TF Serving loads through it)
            _Family("/tensorflow/cc/saved_model/load_attempt_count",
                    "The number of times a SavedModel was successfully loaded.", "counter", ("model_path", "status")),
            _Family("/tensorflow/cc/saved_model/load_latency",
                    "Latency in microseconds for SavedModels that were successfully loaded.", "counter",
                    ("model_path",)),
            # tensorflow_serving/batching/batching_session.cc
            _Family("/tensorflow/serving/batching_session/queuing_latency",
                    "Distribution of wall time spent (in microseconds) in queuing", "histogram",
                    ("thread_pool_name",), QUEUING_BOUNDS),
            # tensorflow_serving/batching/batching_util.h (BatchingSessionTask::Name() is "batching_session")
            _Family("/tensorflow/serving/batching_session/padding_size",
                    "Tracks the padding size distribution on batches.", "histogram", ("execution_batch_size",),
                    BATCH_SIZE_BOUNDS),
            _Family("/tensorflow/serving/batching_session/input_batch_size",
                    "Tracks the batch size distribution on the inputs.", "histogram", (), BATCH_SIZE_BOUNDS),
            _Family("/tensorflow/serving/batching_session/processed_batch_size",
                    "Tracks the batch size distribution on processing.", "histogram", (), BATCH_SIZE_BOUNDS),
        ]
        # Looked up by TensorFlow's name on every request: keep both names in the table, no conversion per call.
        self._by_tf_name = {f.name: f for f in families}
        for family in families:
            family.name = _prometheus_name(family.name)
        self._families = {f.name: f for f in families}
        self._inflight: dict[str, int] = {}
        self._queue_depth: dict[str, int] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_TfServingCollector(self))
        self.registry.register(_GaugeCollector(self, "tfship_inflight_requests", "Requests being handled now.", self._inflight))
        self.registry.register(_GaugeCollector(self, "tfship_batch_queue_depth", "Tasks waiting in the batch queues of the model.",
                                               self._queue_depth))

    def _family(self, tf_name: str) -> _Family:
        return self._by_tf_name[tf_name]

    def serves(self, model: str) -> None:
        """``model`` is configured: it gets a model_name label of its own from now on (warmup included)."""
        with self._lock:
            self._models.add(model)

    def model_label(self, model: str) -> str:
        """The model_name label for ``model``: its name once the engine loaded (or failed to load) a version
        of it, else ``<unknown>``."""
        return model if model in self._models else UNKNOWN_MODEL

    def request(self, model: str, api: str, entrypoint: str, status: str, micros: float) -> None:
        """One request handled: ``api`` as TF Serving labels it ("Predict" over gRPC, "predict" over REST),
        ``entrypoint`` "GRPC" or "REST", ``status`` a gRPC code name ("OK", "INVALID_ARGUMENT", ...).

        prediction_service_impl.cc: request_count{model_name,status} for every Predict/Classify/Regress,
        request_latency{model_name,API,entrypoint} only when the request succeeded. Other APIs
        (GetModelMetadata, MultiInference) are not counted, as in TF Serving."""
        if api.lower() not in COUNTED_APIS:
            return
        with self._lock:
            label = self.model_label(model)
            self._family("/tensorflow/serving/request_count").add((label, status), 1)
            if status == "OK":
                self._family("/tensorflow/serving/request_latency").observe((label, api, entrypoint), micros)

    def runtime(self, model: str, api: str, runtime: str, micros: float) -> None:
        """Time in the model call itself (runtime_latency{model_name,API,runtime}), recorded after a
        successful call. TF Serving's labels: API "Predict", "Classify" or "Regress" (whatever the entry
        point), runtime "TF1" for a SavedModel run in a Session (predict_util.cc, classifier.cc,
        regressor.cc) and "TFRT" for TFRT (tfrt_predict_util.cc)."""
        with self._lock:
            self._family("/tensorflow/serving/runtime_latency").observe((self.model_label(model), api, runtime), micros)

    def examples(self, model: str, count: int) -> None:
        """tf.Examples in one Classify/Regress request (util.cc RecordRequestExampleCount): the
        request_example_counts histogram and the request_example_count_total counter, label ``model``."""
        with self._lock:
            label = self.model_label(model)
            self._family("/tensorflow/serving/request_example_counts").observe((label,), count)
            self._family("/tensorflow/serving/request_example_count_total").add((label,), count)

    def load(self, model: str, version: int, status: str, seconds: float, warmup_seconds: float,
             path: str | None = None) -> None:
        """A version loaded (``status`` "ok") or failed to load (anything else) in ``seconds``, warmup
        included. Gives ``model`` its own model_name label from now on.

        tensorflow/cc/saved_model/loader.cc: load_attempt_count{model_path,status="success"|"fail"} and, for
        a success, load_latency{model_path} += microseconds spent loading (the warmup comes after TF's load,
        so ``warmup_seconds`` is left out; the warmup itself is recorded by :meth:`warmup`). ``model_path``
        is the version's directory; without ``path`` it is "<model>/<version>"."""
        model_path = path if path is not None else f"{model}/{version}"
        ok = status.lower() in ("ok", "success")
        with self._lock:
            self._models.add(model)
            self._family("/tensorflow/cc/saved_model/load_attempt_count").add((model_path, "success" if ok else "fail"), 1)
            if ok:
                micros = max(0.0, seconds - warmup_seconds) * 1e6
                self._family("/tensorflow/cc/saved_model/load_latency").add((model_path,), round(micros))
            # The series exist (at 0) for every model the engine serves.
            self._queue_depth.setdefault(model, 0)
            self._inflight.setdefault(model, 0)

    def warmup(self, model_path: str, status: str, micros: float) -> None:
        """saved_model_warmup_util.cc: model_warmup_latency{model_path,status} once per warmup that found an
        assets.extra/tf_serving_warmup_requests file (none: nothing recorded). ``status`` is the absl
        Status text: "OK", or "<CODE>: <message>" for a failure."""
        with self._lock:
            self._family("/tensorflow/serving/model_warmup_latency").observe((model_path, status), micros)

    def batch(self, model: str, size: int, requests: int, rows: int | None = None) -> None:
        """One batch run: ``size`` rows after padding, from ``requests`` tasks holding ``rows`` rows.

        batching_session.cc MergeInputTensors: processed_batch_size records the padded size and
        padding_size{execution_batch_size} the padding (recorded when ``rows`` is given)."""
        with self._lock:
            self._family("/tensorflow/serving/batching_session/processed_batch_size").observe((), size)
            if rows is not None:
                self._family("/tensorflow/serving/batching_session/padding_size").observe((str(size),), size - rows)

    def input_batch(self, size: int) -> None:
        """batching_session.cc ComputeInputSize: input_batch_size records the 0th dimension of each input
        tensor of a task entering the batcher."""
        with self._lock:
            self._family("/tensorflow/serving/batching_session/input_batch_size").observe((), size)

    def queuing(self, micros: float, thread_pool_name: str = "") -> None:
        """batching_session.cc ProcessBatch: queuing_latency{thread_pool_name} per task, from enqueue to the
        batch starting. The model server's sessions get thread_pool_name "" (bundle_factory_util.cc calls
        CreateBatchingSession without one)."""
        self.queuing_many((micros,), thread_pool_name)

    def queuing_many(self, micros: Iterable[float], thread_pool_name: str = "") -> None:
        """:meth:`queuing` for each task of a batch, under one lock."""
        family = self._family("/tensorflow/serving/batching_session/queuing_latency")
        with self._lock:
            for value in micros:
                family.observe((thread_pool_name,), value)

    def input_batches(self, sizes: Iterable[int]) -> None:
        """:meth:`input_batch` for each input tensor of a task, under one lock."""
        family = self._family("/tensorflow/serving/batching_session/input_batch_size")
        with self._lock:
            for size in sizes:
                family.observe((), size)

    def queue_depth(self, model: str, depth: int) -> None:
        """tfship_batch_queue_depth{model_name}: tasks of ``model`` waiting in the batch queues now."""
        with self._lock:
            self._queue_depth[self.model_label(model)] = depth

    def inflight(self, model: str) -> _Inflight:
        """``with metrics.inflight(model):`` tfship_inflight_requests{model_name} counts the request while the block runs."""
        return _Inflight(self, self.model_label(model))

    def render(self) -> str:
        """The page for /monitoring/prometheus/metrics (text format 0.0.4)."""
        text = generate_latest(self.registry).decode("utf-8")
        # generate_latest names a counter family "<name>_total" in its HELP and TYPE lines; TF Serving's
        # counters have no such suffix, and their samples do not either.
        renamed = {f"{f.name}_total": f.name for f in self._families.values() if f.kind == "counter"}
        lines = []
        for line in text.splitlines():
            if line.startswith(("# HELP ", "# TYPE ")):
                name, _, rest = line[7:].partition(" ")
                line = f"{line[:7]}{renamed.get(name, name)} {rest}"
            lines.append(line)
        return "\n".join(lines) + "\n"
