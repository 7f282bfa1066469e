"""``tfship deploy``: Kubernetes and KServe manifests for a verified repository.

Nothing here talks to a cluster: the manifests are values built from the repository on disk (which models,
which versions, whether each has a golden set) and written as plain YAML. The repository is verified first
(the gate): no manifest is written while any version fails verification.

Two server images are known:

- tfship's (docker/model-server.Dockerfile): verifies signatures itself (``--tfship_public_key``), serves
  ``grpc.health.v1`` (``--enable_grpc_healthcheck_service``), answers ``/v1/live`` and ``/v1/ready``, and with
  ``--require_golden`` reports a version AVAILABLE only once its golden set replays within tolerance.
- the official ``tensorflow/serving``: no health service (TF Serving #671), so readiness is an exec probe
  on ``GetModelStatus`` run by a sidecar of tfship's image (the official image has no Python or client).

Kubernetes objects are those of the stated version ``KUBERNETES_VERSION`` (checked in the tests with
kubernetes-validate); KEDA's ScaledObject is ``keda.sh/v1alpha1``; KServe's objects are
``serving.kserve.io/v1beta1`` InferenceService and ``v1alpha1`` ServingRuntime.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import text_format

from tfship.core.errors import SignatureError, UsageError
from tfship.serving import config as cfg

log = logging.getLogger(__name__)

KUBERNETES_VERSION = "1.30.0"  # the oldest release whose schema the manifests are checked against
TARGETS = ("kubernetes", "kserve")
OFFICIAL_IMAGE = "tensorflow/serving"
GRPC_PORT = 8500
REST_PORT = 8501
SERVER_UID = 10001  # docker/model-server.Dockerfile's user
MODELS_DIR = "/models"
CONFIG_DIR = "/etc/tfship/config"
KEY_DIR = "/etc/tfship/key"
KEY_FILE = "public_key.pem"
CONFIG_POLL_SECONDS = 60
PRESTOP_SECONDS = 5  # endpoints controllers and kube-proxy drop the pod before SIGTERM arrives (KServe #394)
QUEUE_METRIC = "tfship_batch_queue_depth"
DEFAULT_PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"
# Object-store fetchers for --storage s3:// or gs://; override with --fetch-image.
FETCH_IMAGES = {"s3": "amazon/aws-cli:2.17.0", "gs": "google/cloud-sdk:slim"}
# KServe's own TF Serving runtime listens on these (kserve config/runtimes/kserve-tensorflow-serving.yaml).
KSERVE_GRPC_PORT = 9000
KSERVE_REST_PORT = 8080
KSERVE_MODEL_DIR = "/mnt/models"


def default_image() -> str:
    try:
        version = metadata.version("tfship")
    except metadata.PackageNotFoundError:
        version = "latest"
    return f"tfship-model-server:{version}"


@dataclass(frozen=True)
class DeployOptions:
    repo: Path
    target: str = "kubernetes"  # kubernetes or kserve
    public_key: Path | None = None
    image: str = field(default_factory=default_image)
    verify_image: str | None = None  # the image running `tfship verify` (default: tfship's, i.e. --image when it is tfship's)
    storage: str | None = None  # pvc:NAME, s3://..., gs://...
    name: str = "tfship"
    namespace: str | None = None
    versions: str = "latest:1"
    replicas: int = 2
    max_replicas: int = 10
    autoscale: str = "hpa"  # hpa or keda
    kustomize: bool = False
    require_golden: bool = True
    drain_seconds: int = 30
    prometheus: str = DEFAULT_PROMETHEUS
    queue_threshold: int = 8
    fetch_image: str | None = None

    @property
    def official(self) -> bool:
        return self.image.split("@")[0].rsplit(":", 1)[0].endswith(OFFICIAL_IMAGE)


@dataclass(frozen=True)
class Manifests:
    """The generated objects, by file name (one object per file, in the order a user applies them)."""

    files: dict[str, dict[str, Any]]
    models: dict[str, list[int]]
    kubernetes_version: str = KUBERNETES_VERSION

    def texts(self, kustomize: bool = False) -> dict[str, str]:
        out = {name: dump(obj) for name, obj in self.files.items()}
        if kustomize:
            out["kustomization.yaml"] = dump({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                                              "resources": list(self.files)})
        return out


class _Dumper(yaml.SafeDumper):
    """Plain YAML a person reviews: no anchors for repeated values, multi-line text (models.config) as a block."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _text)


def dump(obj: dict[str, Any]) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


# --- the repository ----------------------------------------------------------------------------------

def verified_entries(options: DeployOptions) -> list[cfg.ModelEntry]:
    """The served entries (paths as the server sees them), after every version on disk verified."""
    from tfship.serving.gate import check_repository

    repo = Path(options.repo)
    if options.public_key is None:
        raise UsageError("deploy verifies every model version first: pass --public-key KEY (or TFSHIP_PUBLIC_KEY); "
                         "the same key goes into the manifests for the init container and the server")
    if not Path(options.public_key).is_file():
        raise UsageError(f"{options.public_key}: public key file not found")
    failed = [r for r in check_repository(repo, options.public_key) if not r.ok]
    if failed:
        raise SignatureError(f"refusing to write manifests: {len(failed)} model version(s) fail verification: "
                             + "; ".join(f"{r.name}/{r.version}: {r.reason}" for r in failed))
    root = KSERVE_MODEL_DIR if options.target == "kserve" else MODELS_DIR
    entries = cfg.build_entries(repo, base_root=root, policy=cfg.VersionPolicy.parse(options.versions))
    if not entries:
        raise UsageError(f"{repo}: no model version to deploy; export one first: tfship export MODEL --name NAME --repo {repo}")
    if options.require_golden and not options.official:
        missing = [f"{e.name}/{v}" for e in entries for v in e.versions if not (repo / e.name / str(v) / "golden.npz").is_file()]
        if missing:
            raise UsageError(f"--require-golden: {', '.join(missing)} has no golden.npz, so the server would never report it "
                             f"ready; re-export with --samples, or pass --no-require-golden")
    return entries


def models_config_text(entries: list[cfg.ModelEntry]) -> str:
    return text_format.MessageToString(cfg.model_server_config(entries))


def _check(options: DeployOptions) -> None:
    if options.target not in TARGETS:
        raise UsageError(f"deploy target {options.target!r}: choose {' or '.join(TARGETS)}")
    if options.autoscale not in ("hpa", "keda"):
        raise UsageError(f"--autoscale {options.autoscale!r}: choose hpa or keda")
    if options.autoscale == "keda" and options.official:
        raise UsageError(f"--autoscale keda scales on {QUEUE_METRIC}, which only tfship's image exports; "
                         f"use --autoscale hpa with {options.image}")
    if options.replicas < 1 or options.max_replicas < options.replicas:
        raise UsageError("--replicas must be >= 1 and --max-replicas >= --replicas")
    if not cfg.LABEL_PATTERN.match(options.name.replace("-", "_")) or options.name != options.name.lower() or len(options.name) > 40:
        raise UsageError(f"--name {options.name!r}: lowercase letters, digits and '-', at most 40 characters (a Kubernetes name prefix)")
    if options.storage is not None:
        _storage(options.storage)
    if options.target == "kserve" and options.official:
        raise UsageError("deploy kserve: KServe already ships a runtime for tensorflow/serving (kserve-tensorflow-serving); "
                         "tfship writes the ServingRuntime of its own image: drop --image or give tfship's image")


def _storage(storage: str) -> tuple[str, str]:
    """('pvc', NAME) or ('s3'|'gs', URI)."""
    if storage.startswith("pvc:") and len(storage) > 4 and "/" not in storage[4:]:
        return "pvc", storage[4:]
    for scheme in ("s3", "gs"):
        if storage.startswith(f"{scheme}://") and len(storage) > len(scheme) + 3:
            return scheme, storage.rstrip("/")
    raise UsageError(f"--storage {storage!r}: expected pvc:NAME, s3://BUCKET/PATH or gs://BUCKET/PATH")


# --- Kubernetes objects ------------------------------------------------------------------------------

def _meta(options: DeployOptions, name: str, component: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**_selector(options), "app.kubernetes.io/component": component,
                                                     "app.kubernetes.io/managed-by": "tfship"}}
    if options.namespace:
        meta["namespace"] = options.namespace
    return meta


def _selector(options: DeployOptions) -> dict[str, str]:
    return {"app.kubernetes.io/name": "tfship-model-server", "app.kubernetes.io/instance": options.name}


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "runAsUser": SERVER_UID, "capabilities": {"drop": ["ALL"]}}


def _config_map(options: DeployOptions, entries: list[cfg.ModelEntry]) -> dict[str, Any]:
    from tfship.serving.config import monitoring_config

    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(options, f"{options.name}-config", "config"),
            "data": {cfg.MODELS_CONFIG: models_config_text(entries),
                     cfg.MONITORING_CONFIG: text_format.MessageToString(monitoring_config())}}


def _key_map(options: DeployOptions) -> dict[str, Any]:
    key = Path(str(options.public_key)).read_text(encoding="utf-8")
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(options, f"{options.name}-public-key", "public-key"),
            "data": {KEY_FILE: key}}


def _server_args(options: DeployOptions) -> list[str]:
    args = [f"--model_config_file={CONFIG_DIR}/{cfg.MODELS_CONFIG}",
            f"--model_config_file_poll_wait_seconds={CONFIG_POLL_SECONDS}",
            f"--monitoring_config_file={CONFIG_DIR}/{cfg.MONITORING_CONFIG}",
            # rollout's ConfigMap patch names the canary in the same write that adds its version (tfship rollout --print-k8s)
            "--allow_version_labels_for_unavailable_models=true"]
    if not options.official:
        args += ["--enable_grpc_healthcheck_service=true", f"--tfship_public_key={KEY_DIR}/{KEY_FILE}",
                 f"--tfship_drain_seconds={options.drain_seconds}"]
        if options.require_golden:
            args.append("--require_golden=true")
    return args


def _verify_script(entries: list[cfg.ModelEntry]) -> str:
    lines = ["set -e"]
    for entry in entries:
        for version in entry.versions:
            lines.append(f"tfship verify {MODELS_DIR}/{entry.name}/{version} --public-key {KEY_DIR}/{KEY_FILE}")
    return "\n".join(lines) + "\n"


def _fetch_container(options: DeployOptions, scheme: str, uri: str) -> dict[str, Any]:
    image = options.fetch_image or FETCH_IMAGES[scheme]
    command = (["aws", "s3", "sync", "--only-show-errors", uri, MODELS_DIR] if scheme == "s3"
               else ["gsutil", "-m", "rsync", "-r", uri, MODELS_DIR])
    return {"name": "fetch-models", "image": image, "command": command,
            # credentials for the bucket: a Secret the user creates (optional, so workload identity works too)
            "envFrom": [{"secretRef": {"name": f"{options.name}-storage-credentials", "optional": True}}],
            "env": [{"name": "HOME", "value": "/tmp"}],
            "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
            "securityContext": _container_security()}


def _probes(options: DeployOptions, entries: list[cfg.ModelEntry]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The server container's probes, and any sidecar that carries the readiness check."""
    if not options.official:
        # tfship's image: grpc.health.v1 "" is SERVING once every model has an AVAILABLE version (with
        # --require_golden: one whose golden set replayed within tolerance) and NOT_SERVING while draining.
        grpc_probe = {"port": GRPC_PORT, "service": ""}
        return {"startupProbe": {"grpc": grpc_probe, "periodSeconds": 5, "failureThreshold": 120},
                "readinessProbe": {"grpc": grpc_probe, "periodSeconds": 5, "failureThreshold": 2},
                "livenessProbe": {"httpGet": {"path": "/v1/live", "port": "http"}, "periodSeconds": 10,
                                  "failureThreshold": 3}}, []
    # The official image has no health service (TF Serving #671) and no tool to ask GetModelStatus: a sidecar
    # of tfship's image asks it, and its readiness holds the pod out of the Service until every model is AVAILABLE.
    status = ["tfship", "deploy", "probe", "--target", f"127.0.0.1:{GRPC_PORT}"]
    for entry in entries:
        status += ["--model", entry.name]
    sidecar = {"name": "model-status", "image": options.verify_image or default_image(),
               "command": ["python3", "-c", "import signal; signal.pause()"],
               "startupProbe": {"exec": {"command": status}, "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 120},
               "readinessProbe": {"exec": {"command": status}, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 2},
               "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
               "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
               "env": [{"name": "HOME", "value": "/tmp"}],
               "securityContext": _container_security()}
    tcp = {"tcpSocket": {"port": "grpc"}}
    return {"startupProbe": {**tcp, "periodSeconds": 5, "failureThreshold": 120},
            "livenessProbe": {**tcp, "periodSeconds": 10, "failureThreshold": 3}}, [sidecar]


def _deployment(options: DeployOptions, entries: list[cfg.ModelEntry]) -> dict[str, Any]:
    scheme, where = _storage(options.storage) if options.storage else ("pvc", f"{options.name}-models")
    models_volume: dict[str, Any] = ({"name": "models", "persistentVolumeClaim": {"claimName": where, "readOnly": True}}
                                     if scheme == "pvc" else {"name": "models", "emptyDir": {}})
    verify_image = options.verify_image or (default_image() if options.official else options.image)
    init = [] if scheme == "pvc" else [_fetch_container(options, scheme, where)]
    init.append({"name": "verify-models", "image": verify_image, "command": ["/bin/sh", "-c", _verify_script(entries)],
                 "env": [{"name": "HOME", "value": "/tmp"}],
                 "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
                                  {"name": "public-key", "mountPath": KEY_DIR, "readOnly": True},
                                  {"name": "tmp", "mountPath": "/tmp"}],
                 "securityContext": _container_security()})
    probes, sidecars = _probes(options, entries)
    server = {
        "name": "server", "image": options.image, "args": _server_args(options),
        "ports": [{"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                  {"name": "http", "containerPort": REST_PORT, "protocol": "TCP"}],
        "env": [{"name": "HOME", "value": "/tmp"}],
        **probes,
        # Endpoints drop the pod while it sleeps; then SIGTERM, and the server drains in-flight requests.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
        "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
                         {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                         {"name": "public-key", "mountPath": KEY_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": _container_security(),
    }
    pod_annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(REST_PORT),
                       "prometheus.io/path": cfg.PROMETHEUS_PATH}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(options, options.name, "server"),
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": _selector(options)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": _selector(options), "annotations": pod_annotations},
                "spec": {
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": PRESTOP_SECONDS + options.drain_seconds + 5,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": SERVER_UID, "runAsGroup": SERVER_UID,
                                        "fsGroup": SERVER_UID, "seccompProfile": {"type": "RuntimeDefault"}},
                    "initContainers": init,
                    "containers": [server, *sidecars],
                    "volumes": [models_volume,
                                {"name": "config", "configMap": {"name": f"{options.name}-config"}},
                                {"name": "public-key", "configMap": {"name": f"{options.name}-public-key"}},
                                {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def _service(options: DeployOptions) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(options, options.name, "server"),
            "spec": {"selector": _selector(options), "ports": [
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
                {"name": "http", "port": REST_PORT, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}]}}


def _pdb(options: DeployOptions) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(options, options.name, "server"),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(options)}}}


def _hpa(options: DeployOptions) -> dict[str, Any]:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(options, options.name, "server"),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": options.name},
                     "minReplicas": options.replicas, "maxReplicas": options.max_replicas,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization",
                                                                                             "averageUtilization": 70}}}]}}


def queue_query(entries: list[cfg.ModelEntry]) -> str:
    names = "|".join(e.name for e in entries)
    return f'sum(avg_over_time({QUEUE_METRIC}{{model_name=~"{names}"}}[1m]))'


def _scaled_object(options: DeployOptions, entries: list[cfg.ModelEntry]) -> dict[str, Any]:
    # KEDA makes the HPA itself (one per ScaledObject): a second HPA on the same Deployment would fight it,
    # so with --autoscale keda the CPU target is a trigger of the ScaledObject instead.
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": _meta(options, options.name, "autoscaler"),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": options.name},
                     "minReplicaCount": options.replicas, "maxReplicaCount": options.max_replicas,
                     "pollingInterval": 15, "cooldownPeriod": 300,
                     "triggers": [
                         {"type": "prometheus", "name": "queue-depth",
                          "metadata": {"serverAddress": options.prometheus, "query": queue_query(entries),
                                       "threshold": str(options.queue_threshold)}},
                         {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}}]}}


def _network_policy(options: DeployOptions) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(options, options.name, "server"),
            "spec": {"podSelector": {"matchLabels": _selector(options)}, "policyTypes": ["Ingress"],
                     "ingress": [{"ports": [{"protocol": "TCP", "port": GRPC_PORT}, {"protocol": "TCP", "port": REST_PORT}]}]}}


# --- KServe objects ----------------------------------------------------------------------------------

def runtime_name(options: DeployOptions) -> str:
    return f"{options.name}-model-server"


def _serving_runtime(options: DeployOptions) -> dict[str, Any]:
    args = [f"--port={KSERVE_GRPC_PORT}", f"--rest_api_port={KSERVE_REST_PORT}", "--model_name={{.Name}}",
            f"--model_base_path={KSERVE_MODEL_DIR}", "--enable_grpc_healthcheck_service=true",
            f"--tfship_public_key={KEY_DIR}/{KEY_FILE}", f"--tfship_drain_seconds={options.drain_seconds}"]
    if options.require_golden:
        args.append("--require_golden=true")
    container = {
        "name": "kserve-container", "image": options.image, "command": ["tfship-model-server"], "args": args,
        "ports": [{"containerPort": KSERVE_REST_PORT, "protocol": "TCP"}],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "readinessProbe": {"httpGet": {"path": "/v1/ready", "port": KSERVE_REST_PORT}, "periodSeconds": 5},
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
        "volumeMounts": [{"name": "public-key", "mountPath": KEY_DIR, "readOnly": True}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": _container_security(),
    }
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime", "metadata": _meta(options, runtime_name(options), "runtime"),
            "spec": {"annotations": {"prometheus.kserve.io/port": str(KSERVE_REST_PORT), "prometheus.kserve.io/path": cfg.PROMETHEUS_PATH},
                     "supportedModelFormats": [{"name": "tensorflow", "version": "2", "autoSelect": False}],
                     "protocolVersions": ["v1", "v2", "grpc-v1", "grpc-v2"],
                     "containers": [container],
                     "volumes": [{"name": "public-key", "configMap": {"name": f"{options.name}-public-key"}},
                                 {"name": "tmp", "emptyDir": {}}]}}


def _kserve_pdb(options: DeployOptions, entry: cfg.ModelEntry) -> dict[str, Any]:
    # KServe makes no PodDisruptionBudget for a predictor (KServe #4574); its pods carry this label.
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(options, f"{entry.name}-predictor", "server"),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"serving.kserve.io/inferenceservice": entry.name}}}}


def _storage_uri(options: DeployOptions, model: str) -> str:
    scheme, where = _storage(options.storage) if options.storage else ("pvc", f"{options.name}-models")
    return f"pvc://{where}/{model}" if scheme == "pvc" else f"{where}/{model}"


def _inference_service(options: DeployOptions, entry: cfg.ModelEntry) -> dict[str, Any]:
    metadata_ = _meta(options, entry.name, "inference-service")
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": metadata_,
            "spec": {"predictor": {
                "minReplicas": options.replicas, "maxReplicas": options.max_replicas,
                "model": {"modelFormat": {"name": "tensorflow"}, "runtime": runtime_name(options),
                          "storageUri": _storage_uri(options, entry.name), "protocolVersion": "v1"}}}}


# --- the whole ---------------------------------------------------------------------------------------

def generate(options: DeployOptions) -> Manifests:
    """Verify the repository, then build every object for ``options.target``."""
    _check(options)
    entries = verified_entries(options)
    models = {e.name: list(e.versions) for e in entries}
    files: dict[str, dict[str, Any]] = {"public-key-configmap.yaml": _key_map(options)}
    if options.target == "kserve":
        files["servingruntime.yaml"] = _serving_runtime(options)
        for entry in entries:
            files[f"inferenceservice-{entry.name}.yaml"] = _inference_service(options, entry)
            files[f"poddisruptionbudget-{entry.name}.yaml"] = _kserve_pdb(options, entry)
        return Manifests(files, models)
    files["configmap.yaml"] = _config_map(options, entries)
    files["deployment.yaml"] = _deployment(options, entries)
    files["service.yaml"] = _service(options)
    files["poddisruptionbudget.yaml"] = _pdb(options)
    if options.autoscale == "keda":
        files["scaledobject.yaml"] = _scaled_object(options, entries)
    else:
        files["horizontalpodautoscaler.yaml"] = _hpa(options)
    files["networkpolicy.yaml"] = _network_policy(options)
    return Manifests(files, models)


def write(manifests: Manifests, out: Path, *, kustomize: bool = False) -> list[Path]:
    """Write each object to its own file in ``out`` (with --kustomize, a kustomization.yaml listing them)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in manifests.texts(kustomize).items():
        path = cfg.write_text_file(out / name, text)
        written.append(path)
    return written


def config_map_patch(name: str, models_config: str, namespace: str | None = None) -> dict[str, Any]:
    """A merge patch of the generated ConfigMap's models.config (``kubectl patch configmap NAME-config --patch-file``)."""
    metadata_: dict[str, Any] = {"name": f"{name}-config"}
    if namespace:
        metadata_["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata_, "data": {cfg.MODELS_CONFIG: models_config}}


def probe(target: str, models: list[str], timeout: float = 4.0) -> str | None:
    """The exec readiness probe for the official image: None when every model has an AVAILABLE version, else why not."""
    from tfship.client.grpc_client import ServingClient
    from tfship.core.errors import TfshipError

    with ServingClient(target, timeout=timeout) as client:
        for model in models:
            try:
                answer = client.status(model)
            except TfshipError as exc:
                return f"{model}: {exc.message}"
            states = {str(v.version): v.state for v in answer}
            if "AVAILABLE" not in states.values():
                return f"{model}: no AVAILABLE version ({json.dumps(states, sort_keys=True)})"
    return None


__all__ = ["KUBERNETES_VERSION", "DeployOptions", "Manifests", "config_map_patch", "default_image", "generate",
           "models_config_text", "probe", "queue_query", "write"]
