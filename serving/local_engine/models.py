"""Loading, versioning and routing of servables, with TF Serving's rules.

- Versions come from all-digit directories under each model's base_path (``00000123`` is version 123,
  as in TF Serving), filtered by the version policy (latest N, all, specific), re-scanned every ``poll_seconds``.
- A version is a SavedModel (TF1 graph or TF2 export, loaded into a Session and run by tensor names, as
  TF Serving runs them: session.py) or a ``model.tflite`` (TF Serving's ``--prefer_tflite_model`` rule).
- Availability preserving: a version leaves only when the versions that replace it are ready; a
  version that fails to verify, load or warm up ends in END with its error, and the old one keeps serving.
- Unversioned requests go to the highest AVAILABLE version; labels map to versions.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tfship.core.errors import describe_exception, first_line
from tfship.serving.config import VersionPolicy
from tfship.serving.local_engine.errors import EngineError, invalid, not_found

log = logging.getLogger(__name__)

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"
# saved_model_warmup_util.h: WarmupConsts::kMaxNumRecords, kRequestsFileName (under assets.extra).
MAX_WARMUP_RECORDS = 1000
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
INT64_MAX = (1 << 63) - 1


def version_dirs(base_path: Path) -> dict[int, Path]:
    """The version directories under ``base_path``, as TF Serving finds them.

    file_system_storage_path_source.cc: every child whose name parses as an int64 is a version
    (``ParseVersionNumber``), so ``00000123`` is version 123 and ``0`` is version 0; when two names give one
    number, ``IndexChildrenByVersion`` keeps the later one in name order (and logs a warning).
    """
    try:
        children = sorted(p for p in base_path.iterdir() if p.is_dir())
    except OSError:
        return {}
    found: dict[int, Path] = {}
    for child in children:
        if not child.name.isascii() or not child.name.isdigit() or int(child.name) > INT64_MAX:
            continue
        version = int(child.name)
        if version in found:
            log.warning("Duplicate version directories detected. Version %d will be loaded from %s, %s will be ignored.",
                        version, child.name, found[version].name)
        found[version] = child
    return found


@dataclass(frozen=True)
class LoadOptions:
    """How versions load: TF Serving's flags that shape it (server.cc's defaults where they apply)."""

    tags: frozenset[str] = frozenset({"serve"})  # --saved_model_tags
    prefer_tflite: bool = False  # --prefer_tflite_model
    warmup: bool = True  # --enable_model_warmup
    warmup_iterations: int = 1  # --num_request_iterations_for_warmup (used when > 0)
    max_load_retries: int = 0  # --max_num_load_retries (TF Serving's binary: 5)
    retry_interval_seconds: float = 0.0  # --load_retry_interval_micros (TF Serving's binary: 60 s)
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    method_name_check: bool = False  # --enable_signature_method_name_check
    per_model_batching: bool = False  # --enable_per_model_batching_parameters
    require_golden: bool = False  # --require_golden (tfship's): AVAILABLE only once golden.npz replays within tolerance
    allow_labels_for_unavailable: bool = False  # --allow_version_labels_for_unavailable_models


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: Any  # tf.DType
    shape: tuple[int | None, ...] | None  # None: unknown rank


@dataclass
class SignatureEntry:
    key: str
    fn: Any  # numpy arrays by alias in, numpy arrays by alias out (a Session's signature, a TFLite interpreter's)
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
    # --enable_per_model_batching_parameters: this version's batching_params.pbtxt, or no batching at all
    # when it has none (bundle_factory_util.cc GetPerModelBatchingParams). Without the flag: the server's.
    batching: Any = None  # BatchingOptions | None
    batched: bool = True


@dataclass
class VersionState:
    version: int
    state: str
    path: Path | None = None
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


def _return_freed_memory() -> None:
    """Hand the heap memory an unloaded version freed back to the system (glibc's malloc_trim).

    glibc keeps freed memory in its arenas for reuse instead of returning it to the system. Measured with 3
    versions of a 5M-parameter model served, RSS grew from 841 to 1,057 MB over 50 reloads without the trim,
    and stayed at 819-857 MB with it (bench/serving.py --parts memory).
    Other C libraries lack the call: nothing to do there.
    """
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def _golden_tolerance(path: Path, tflite: bool) -> Any:
    """The tolerance the export proved this artifact against (manifest.json's parity entry), else 1e-5."""
    import json

    from tfship.core.tolerance import FLOAT32, Tolerance

    wanted = "tflite" if tflite else "savedmodel"
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        for entry in manifest.get("parity", ()):
            if entry.get("format") == wanted and entry.get("variant", "float32") == "float32" and entry.get("tolerance"):
                t = entry["tolerance"]
                return Tolerance(atol=float(t["atol"]), rtol=float(t["rtol"]), min_top1=t.get("min_top1"))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return FLOAT32


def check_golden(servable: Servable) -> None:
    """--require_golden: replay the version's golden.npz through the serving call and compare with the original
    model's outputs recorded at export, within the tolerance the manifest records. Any mismatch ends the
    version (END, FAILED_PRECONDITION), so a server that computes something else never reports it AVAILABLE."""
    from tfship.client.compare import compare_outputs
    from tfship.core.errors import TfshipError
    from tfship.core.samples import load_npz, split_golden
    from tfship.exporter.inspection import INIT_OP_SIGNATURE
    from tfship.serving.local_engine import predict

    path = servable.path / "golden.npz"
    if not path.is_file():
        raise EngineError(grpc.StatusCode.FAILED_PRECONDITION, f"--require_golden: {path} is missing: export the version "
                          "with tfship (it writes the golden set) or drop --require_golden")
    try:
        inputs, expected = split_golden(load_npz(path, "golden set"))
    except TfshipError as exc:
        raise EngineError(grpc.StatusCode.FAILED_PRECONDITION, f"--require_golden: {exc.message}") from None
    # Else the first signature that computes something (a TF2 export's init op is listed too, as TF Serving lists it).
    entry = servable.signatures.get(predict.DEFAULT_SIGNATURE) or next(
        (e for key, e in sorted(servable.signatures.items()) if key != INIT_OP_SIGNATURE), None)
    if entry is None:
        raise EngineError(grpc.StatusCode.FAILED_PRECONDITION, f"--require_golden: {servable.path} has no signature")
    # A TFLite servable names its tensors as TF Serving does (serving_default_x): match them to the golden names,
    # else by position.
    tflite = any(name.startswith("serving_default_") for name in entry.inputs)
    feed = {}
    for index, name in enumerate(entry.input_order):
        key = name if name in inputs else name.removeprefix("serving_default_")
        feed[name] = inputs[key] if key in inputs else list(inputs.values())[index] if len(inputs) == len(entry.inputs) else None
        if feed[name] is None:
            raise EngineError(grpc.StatusCode.FAILED_PRECONDITION,
                              f"--require_golden: the golden set has no input for '{name}' (it has {sorted(inputs)})")
    outputs = predict.run_signature(entry, predict.check_arrays(entry, feed))
    if set(outputs) != set(expected) and len(outputs) == len(expected):
        outputs = dict(zip(sorted(expected), (outputs[k] for k in entry.outputs if k in outputs)))
    comparison = compare_outputs(expected, outputs, _golden_tolerance(servable.path, tflite))
    if not comparison.passed:
        detail = "; ".join(f"output '{o.name}': {o.reason}" for o in comparison.failures())
        raise EngineError(grpc.StatusCode.FAILED_PRECONDITION,
                          f"--require_golden: the served model does not reproduce {path}: {detail}")
    log.info("%s version %d reproduces its golden set (%d samples)", servable.name, servable.version,
             len(next(iter(expected.values()))))


def _was_unloaded(state: VersionState) -> bool:
    return state.state == END and state.error_code == grpc.StatusCode.OK


class ModelManager:
    def __init__(self, configs: list[ModelConfig], *, verifier: Callable[[Path], str | None] | None = None,
                 poll_seconds: float = 1.0, warmup_runner: Callable[[Servable, bytes], None] | None = None,
                 metrics: Any = None, options: LoadOptions | None = None) -> None:
        self.options = options or LoadOptions()
        self._lock = threading.RLock()
        self._configs = {c.name: c for c in configs}
        # Version labels live apart from the configs: a reload whose labels are refused keeps the old ones.
        self._labels: dict[str, dict[str, int]] = {c.name: dict(c.labels) for c in configs}
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
        """Apply a new model list (HandleReloadConfigRequest, a changed --model_config_file): models added are
        loaded, models removed unloaded, then the version labels are checked as server_core.cc does."""
        with self._lock:
            self._configs = {c.name: c for c in configs}
            for name in list(self._states):
                if name not in self._configs:
                    del self._states[name]
            for name in self._configs:
                self._states.setdefault(name, {})
        self.reconcile()
        self._update_labels(configs)

    def _update_labels(self, configs: list[ModelConfig]) -> None:
        """server_core.cc UpdateModelVersionLabelMap: a label may point only at an AVAILABLE version, unless
        --allow_version_labels_for_unavailable_models and the label is new or keeps its version."""
        with self._lock:
            for config in configs:
                states = self._states.get(config.name, {})
                for label, version in config.labels.items():
                    existing = self._labels.get(config.name, {}).get(label)
                    allowed = self.options.allow_labels_for_unavailable and existing in (None, version)
                    state = states.get(version)
                    if not allowed and (state is None or state.state != AVAILABLE):
                        raise EngineError(grpc.StatusCode.FAILED_PRECONDITION,
                                          f"Request to assign label to version {version} of model {config.name}, "
                                          "which is not currently available for inference")
            self._labels = {c.name: dict(c.labels) for c in configs}

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._configs)

    def readiness(self) -> dict[str, str | None]:
        """Per configured model: None when a version is AVAILABLE, else why not (for /v1/ready and health)."""
        result: dict[str, str | None] = {}
        with self._lock:
            for name in sorted(self._configs):
                states = self._states.get(name, {})
                if any(s.state == AVAILABLE for s in states.values()):
                    result[name] = None
                elif not states:
                    result[name] = f"no version found under {self._configs[name].base_path}"
                else:
                    latest = states[max(states)]
                    reason = f"version {latest.version} is {latest.state}"
                    result[name] = f"{reason}: {latest.error_message}" if latest.error_message else reason
        return result

    # -- version management -----------------------------------------------------------------------

    def reconcile(self) -> None:
        with self._reconcile_lock:
            with self._lock:
                configs = list(self._configs.values())
            for config in configs:
                self._reconcile_model(config)

    def _reconcile_model(self, config: ModelConfig) -> None:
        paths = version_dirs(config.base_path)
        on_disk = sorted(paths)
        desired = set(config.policy.select(on_disk))
        with self._lock:
            states = self._states.setdefault(config.name, {})
            # A version unloaded earlier (END with OK) loads again when it is wanted again: rolling back by
            # removing the newer version brings the older one back, as TF Serving does. A version that
            # failed (END with an error) is not retried until its directory is replaced.
            to_load = [v for v in sorted(desired) if v not in states or _was_unloaded(states[v])]
        for version in to_load:
            if self._stop.is_set():
                return
            self._load(config, version, paths[version])
        unloaded = False
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
                    unloaded = True
        if unloaded:
            # A loaded version's Graph and its functions hold reference cycles: collect them now, not at some later
            # allocation, so the Session closes and the memory of an unloaded version is given back (bench/serving.py
            # --parts memory). A request still running on it holds it until it answers.
            gc.collect()
            _return_freed_memory()

    def _load(self, config: ModelConfig, version: int, path: Path) -> None:
        if self._metrics:
            self._metrics.serves(config.name)
        state = VersionState(version, LOADING, path)
        with self._lock:
            self._states[config.name][version] = state
        started = time.perf_counter()
        warmup_seconds = 0.0
        try:
            if self._verifier is not None:
                problem = self._verifier(path)
                if problem:
                    raise EngineError(grpc.StatusCode.FAILED_PRECONDITION, f"signature check failed for {path}: {problem}")
            loaded, signatures = self._load_with_retries(config.name, version, path)
            servable = Servable(config.name, version, path, loaded, signatures)
            if self.options.per_model_batching:
                servable.batching, servable.batched = self._per_model_batching(path)
            warmup_started = time.perf_counter()
            try:
                self._warmup(servable)
            finally:
                warmup_seconds = time.perf_counter() - warmup_started
            if self.options.require_golden:
                check_golden(servable)
        except EngineError as exc:
            with self._lock:
                state.state, state.error_code, state.error_message = END, exc.code, exc.message
            log.warning("%s version %d failed to load: %s", config.name, version, exc.message)
            if self._metrics:
                self._metrics.load(config.name, version, "error", time.perf_counter() - started, warmup_seconds,
                                   path=str(path))
            return
        with self._lock:
            state.servable = servable
            state.state = AVAILABLE
        log.info("%s version %d is AVAILABLE (%.2fs, warmup %.2fs)", config.name, version, time.perf_counter() - started, warmup_seconds)
        if self._metrics:
            self._metrics.load(config.name, version, "ok", time.perf_counter() - started, warmup_seconds,
                               path=str(path))

    @staticmethod
    def _per_model_batching(path: Path) -> tuple[Any, bool]:
        """bundle_factory_util.cc: kBatchingParamsFilename = "batching_params.pbtxt" in the version directory;
        absent, the version is not batched; unparsable, the load fails."""
        from tfship.core.errors import UsageError
        from tfship.serving.config import BatchingOptions

        file = path / "batching_params.pbtxt"
        if not file.is_file():
            return None, False
        try:
            return BatchingOptions.from_file(file), True
        except (UsageError, ValueError) as exc:
            raise invalid(f"Invalid protobuf file: '{file}': {getattr(exc, 'message', exc)}") from None

    def _load_with_retries(self, name: str, version: int, path: Path) -> tuple[Any, dict[str, SignatureEntry]]:
        """TF Serving's --max_num_load_retries / --load_retry_interval_micros: a failed load is tried again."""
        attempt = 0
        while True:
            try:
                return self._load_servable(path)
            except EngineError as exc:
                if attempt >= self.options.max_load_retries or self._stop.is_set():
                    raise
                attempt += 1
                log.warning("%s version %d failed to load (%s); retry %d of %d in %.1fs", name, version, exc.message,
                            attempt, self.options.max_load_retries, self.options.retry_interval_seconds)
                if self._stop.wait(max(0.0, self.options.retry_interval_seconds)):
                    raise

    def _load_servable(self, path: Path) -> tuple[Any, dict[str, SignatureEntry]]:
        """A SavedModel in a Session, as TF Serving runs it (TF1 graph or TF2 export), or a model.tflite."""
        from tfship.serving.local_engine import session, tflite_servable

        options = self.options
        try:
            # saved_model_bundle_factory.cc: model.tflite wins only with --prefer_tflite_model. A version with
            # model.tflite alone, which TF Serving fails to load ("SavedModel not found"), is served here.
            only_tflite = tflite_servable.has_tflite(path) and not tflite_servable.has_saved_model(path)
            if only_tflite or tflite_servable.choose_format(path, options.prefer_tflite) == "tflite":
                return tflite_servable.load_tflite(path)
            return session.load_session(path, set(options.tags), intra_op_threads=options.intra_op_threads,
                                        inter_op_threads=options.inter_op_threads)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(grpc.StatusCode.UNKNOWN, f"loading {path} failed: {describe_exception(exc)}") from None

    def _warmup(self, servable: Servable) -> None:
        """saved_model_warmup_util.cc: each record of assets.extra/tf_serving_warmup_requests runs
        ``num_request_iterations`` times; more than kMaxNumRecords records fail the load."""
        path = servable.path / WARMUP_FILE
        if not self.options.warmup or not path.exists() or self._warmup_runner is None:
            return
        import tensorflow as tf

        try:
            records = [r.numpy() for r in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS + 1)]
        except Exception as exc:
            raise EngineError(grpc.StatusCode.DATA_LOSS, f"{first_line(exc, 200)}. Please verify your warmup data is in "
                              f"TFRecord format.") from None
        if len(records) > MAX_WARMUP_RECORDS:
            raise invalid(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
        iterations = self.options.warmup_iterations if self.options.warmup_iterations > 0 else 1
        started = time.perf_counter()
        status = "OK"
        try:
            for index, record in enumerate(records):
                for _ in range(iterations):
                    try:
                        self._warmup_runner(servable, record)
                    except EngineError as exc:
                        status = f"{exc.code.name}: {exc.message}"
                        raise EngineError(exc.code, f"warmup record {index} of {path} failed: {exc.message}") from None
        finally:
            if self._metrics:
                self._metrics.warmup(str(servable.path), status, (time.perf_counter() - started) * 1e6)

    # -- lookups ----------------------------------------------------------------------------------

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        with self._lock:
            config = self._configs.get(name)
            states = self._states.get(name, {})
            labels = self._labels.get(name, {})
            if label:
                if config is None or label not in labels:
                    raise invalid(f"Unrecognized servable version label: {label}")
                version = labels[label]
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
            labels = self._labels.get(name, {})
            if label:
                if label not in labels:
                    raise invalid(f"Unrecognized servable version label: {label}")
                version = labels[label]
            if version is not None:
                if version not in states:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [states[version]]
            if not states:
                raise not_found(f"Could not find any versions of model {name}")
            return [states[v] for v in sorted(states)]
