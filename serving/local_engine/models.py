"""Loading, versioning and routing of servables, with TF Serving's rules.

- Versions come from numeric directories under each model's base_path, filtered by the version
  policy (latest N, all, specific), and are re-scanned every ``poll_seconds``.
- Availability preserving: a version leaves only when the versions that replace it are ready; a
  version that fails to verify, load or warm up ends in END with its error, and the old one keeps serving.
- Unversioned requests go to the highest AVAILABLE version; labels map to versions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tfship.core.errors import describe_exception, first_line
from tfship.exporter.repository import versions as versions_on_disk
from tfship.serving.config import VersionPolicy
from tfship.serving.local_engine.errors import EngineError, invalid, not_found

log = logging.getLogger(__name__)

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"
MAX_WARMUP_RECORDS = 1000
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: Any  # tf.DType
    shape: tuple[int | None, ...] | None  # None: unknown rank


@dataclass
class SignatureEntry:
    key: str
    fn: Any
    inputs: dict[str, InputSpec]
    outputs: dict[str, InputSpec]
    method_name: str
    proto: Any  # tensorflow.SignatureDef, for GetModelMetadata

    @property
    def input_order(self) -> list[str]:
        return sorted(self.inputs)


@dataclass
class Servable:
    name: str
    version: int
    path: Path
    loaded: Any
    signatures: dict[str, SignatureEntry]


@dataclass
class VersionState:
    version: int
    state: str
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""
    servable: Servable | None = None


@dataclass
class ModelConfig:
    name: str
    base_path: Path
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    labels: dict[str, int] = field(default_factory=dict)


def configs_from_proto(config: Any) -> list[ModelConfig]:
    """Model configs from a ``ModelServerConfig`` proto (tensorflow_serving.config)."""
    result = []
    for model in config.model_config_list.config:
        choice = model.model_version_policy.WhichOneof("policy_choice")
        if choice == "all":
            policy = VersionPolicy("all")
        elif choice == "specific":
            policy = VersionPolicy("specific", versions=tuple(model.model_version_policy.specific.versions))
        elif choice == "latest":
            policy = VersionPolicy("latest", num_versions=max(1, model.model_version_policy.latest.num_versions))
        else:
            policy = VersionPolicy()
        result.append(ModelConfig(model.name, Path(model.base_path), policy, dict(model.version_labels)))
    return result


def _stored_signature_defs(path: Path) -> dict[str, Any]:
    """The SignatureDefs as written in saved_model.pb (method names, tensor names), for metadata."""
    from tensorflow.core.protobuf import saved_model_pb2

    try:
        saved_model = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    except Exception:  # the loader has already accepted the file; fall back to what it exposes
        return {}
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    return dict(saved_model.meta_graphs[0].signature_def) if saved_model.meta_graphs else {}


def _signature_entries(loaded: Any, path: Path) -> dict[str, SignatureEntry]:
    from tensorflow.core.protobuf import meta_graph_pb2

    stored = _stored_signature_defs(path)
    entries = {}
    for key, fn in loaded.signatures.items():
        _, kwargs = fn.structured_input_signature
        inputs = {n: InputSpec(n, s.dtype, None if s.shape.rank is None else tuple(s.shape.as_list())) for n, s in kwargs.items()}
        outputs = {n: InputSpec(n, s.dtype, None if s.shape.rank is None else tuple(s.shape.as_list())) for n, s in fn.structured_outputs.items()}
        if key in stored:
            proto = meta_graph_pb2.SignatureDef()
            proto.CopyFrom(stored[key])
        else:
            proto = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
            for target, specs in ((proto.inputs, inputs), (proto.outputs, outputs)):
                for name, spec in specs.items():
                    info = target[name]
                    info.name = f"{key}_{name}:0"
                    info.dtype = spec.dtype.as_datatype_enum
                    if spec.shape is None:
                        info.tensor_shape.unknown_rank = True
                    else:
                        for d in spec.shape:
                            info.tensor_shape.dim.add(size=-1 if d is None else d)
        entries[key] = SignatureEntry(key, fn, inputs, outputs, proto.method_name or "tensorflow/serving/predict", proto)
    return entries


def _was_unloaded(state: VersionState) -> bool:
    return state.state == END and state.error_code == grpc.StatusCode.OK


class ModelManager:
    def __init__(self, configs: list[ModelConfig], *, verifier: Callable[[Path], str | None] | None = None,
                 poll_seconds: float = 1.0, warmup_runner: Callable[[Servable, bytes], None] | None = None,
                 metrics: Any = None) -> None:
        self._lock = threading.RLock()
        self._configs = {c.name: c for c in configs}
        self._states: dict[str, dict[int, VersionState]] = {c.name: {} for c in configs}
        self._verifier = verifier
        self._poll_seconds = poll_seconds
        self._warmup_runner = warmup_runner
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reconcile_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self.reconcile()
        if self._poll_seconds > 0:
            self._thread = threading.Thread(target=self._poll, name="tfship-fs-poll", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self.reconcile()
            except Exception:  # keep polling whatever one scan hit
                log.exception("file system poll failed")

    def reload_config(self, configs: list[ModelConfig]) -> None:
        with self._lock:
            self._configs = {c.name: c for c in configs}
            for name in list(self._states):
                if name not in self._configs:
                    del self._states[name]
            for name in self._configs:
                self._states.setdefault(name, {})
        self.reconcile()

    # -- version management -----------------------------------------------------------------------

    def reconcile(self) -> None:
        with self._reconcile_lock:
            with self._lock:
                configs = list(self._configs.values())
            for config in configs:
                self._reconcile_model(config)

    def _reconcile_model(self, config: ModelConfig) -> None:
        on_disk = versions_on_disk(config.base_path)
        desired = set(config.policy.select(on_disk))
        with self._lock:
            states = self._states.setdefault(config.name, {})
            # A version unloaded earlier (END with OK) loads again when it is wanted again: rolling back by
            # removing the newer version brings the older one back, as TF Serving does. A version that
            # failed (END with an error) is not retried until its directory is replaced.
            to_load = [v for v in sorted(desired) if v not in states or _was_unloaded(states[v])]
        for version in to_load:
            self._load(config, version)
        with self._lock:
            states = self._states.get(config.name, {})
            desired_ready = [v for v in desired if v in states and states[v].state == AVAILABLE]
            desired_settled = all(v in states and states[v].state in (AVAILABLE, END) for v in desired)
            for version, state in list(states.items()):
                if version in desired:
                    continue
                if state.state == END:
                    if version not in on_disk:
                        del states[version]
                    continue
                # Availability preserving: unload only once the replacement is ready (or nothing replaces it).
                if not desired or (desired_settled and desired_ready):
                    state.state = UNLOADING
                    state.servable = None
                    state.state, state.error_code, state.error_message = END, grpc.StatusCode.OK, ""
                    log.info("unloaded %s version %d", config.name, version)
                    if version not in on_disk:
                        del states[version]

    def _load(self, config: ModelConfig, version: int) -> None:
        path = config.base_path / str(version)
        state = VersionState(version, LOADING)
        with self._lock:
            self._states[config.name][version] = state
        started = time.perf_counter()
        warmup_seconds = 0.0
        try:
            if self._verifier is not None:
                problem = self._verifier(path)
                if problem:
                    raise EngineError(grpc.StatusCode.FAILED_PRECONDITION, f"signature check failed for {path}: {problem}")
            import tensorflow as tf

            try:
                loaded = tf.saved_model.load(str(path))
            except Exception as exc:
                raise EngineError(grpc.StatusCode.UNKNOWN, f"loading {path} failed: {describe_exception(exc)}") from None
            servable = Servable(config.name, version, path, loaded, _signature_entries(loaded, path))
            warmup_started = time.perf_counter()
            self._warmup(servable)
            warmup_seconds = time.perf_counter() - warmup_started
        except EngineError as exc:
            with self._lock:
                state.state, state.error_code, state.error_message = END, exc.code, exc.message
            log.warning("%s version %d failed to load: %s", config.name, version, exc.message)
            if self._metrics:
                self._metrics.load(config.name, version, "error", time.perf_counter() - started, warmup_seconds)
            return
        with self._lock:
            state.servable = servable
            state.state = AVAILABLE
        log.info("%s version %d is AVAILABLE (%.2fs, warmup %.2fs)", config.name, version, time.perf_counter() - started, warmup_seconds)
        if self._metrics:
            self._metrics.load(config.name, version, "ok", time.perf_counter() - started, warmup_seconds)

    def _warmup(self, servable: Servable) -> None:
        path = servable.path / WARMUP_FILE
        if not path.exists() or self._warmup_runner is None:
            return
        import tensorflow as tf

        try:
            records = [r.numpy() for r in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS + 1)]
        except Exception as exc:
            raise EngineError(grpc.StatusCode.INVALID_ARGUMENT, f"warmup file {path} is not a valid TFRecord: {first_line(exc, 200)}") from None
        if len(records) > MAX_WARMUP_RECORDS:
            raise EngineError(grpc.StatusCode.INVALID_ARGUMENT, f"warmup file {path} has more than {MAX_WARMUP_RECORDS} records")
        for index, record in enumerate(records):
            try:
                self._warmup_runner(servable, record)
            except EngineError as exc:
                raise EngineError(exc.code, f"warmup record {index} of {path} failed: {exc.message}") from None

    # -- lookups ----------------------------------------------------------------------------------

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        with self._lock:
            config = self._configs.get(name)
            states = self._states.get(name, {})
            if label:
                if config is None or label not in config.labels:
                    raise invalid(f"Unrecognized servable version label: {label}")
                version = config.labels[label]
            if version is not None:
                state = states.get(version)
                if config is None or state is None or state.state != AVAILABLE or state.servable is None:
                    raise not_found(f"Servable not found for request: Specific({name}, {version})")
                return state.servable
            ready = [v for v, s in states.items() if s.state == AVAILABLE and s.servable is not None]
            servable = states[max(ready)].servable if config is not None and ready else None
            if servable is None:
                raise not_found(f"Servable not found for request: Latest({name})")
            return servable

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionState]:
        with self._lock:
            config = self._configs.get(name)
            if config is None:
                raise not_found(f"Could not find any versions of model {name}")
            states = self._states.get(name, {})
            if label:
                if label not in config.labels:
                    raise invalid(f"Unrecognized servable version label: {label}")
                version = config.labels[label]
            if version is not None:
                if version not in states:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [states[version]]
            if not states:
                raise not_found(f"Could not find any versions of model {name}")
            return [states[v] for v in sorted(states)]
