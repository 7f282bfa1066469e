"""``tfship deploy kubernetes|kserve``: manifests that Kubernetes' own schema accepts, that refuse unverified models,
and whose server-side parts (the verify init container's script, the server's flags and models.config) run for real."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner
from conftest import copy_repo, free_port, listing

GOLDEN = Path(__file__).parent / "golden"
KEY_PLACEHOLDER = "<public key of the signing key>\n"


def _deploy(*args: object) -> tuple[int, str, str]:
    from tfship.cli_deploy import COMMANDS

    group = click.Group("tfship")
    for command in COMMANDS:
        group.add_command(command)
    result = CliRunner().invoke(group, ["deploy", *map(str, args)], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _objects(out: Path) -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml")) if p.name != "kustomization.yaml"}


def _generate(tmp_path: Path, repo: Path, key: Path, target: str, *extra: object, out: str = "out") -> dict[str, dict]:
    code, _, stderr = _deploy(target, "--repo", repo, "--public-key", key, "--out", tmp_path / out, *extra)
    assert code == 0, stderr
    return _objects(tmp_path / out)


def _k8s_validate(obj: dict) -> None:
    import kubernetes_validate

    from tfship.serving.deploy import KUBERNETES_VERSION

    for version in (KUBERNETES_VERSION, kubernetes_validate.latest_version()):
        kubernetes_validate.validate(obj, version, strict=True)  # raises ValidationError naming the field


# KEDA and KServe publish their schemas only as CRD YAML in their repositories (kedacore/keda
# config/crd/bases/keda.sh_scaledobjects.yaml; kserve/kserve config/crd/full/serving.kserve.io_*.yaml). No
# PyPI package ships that text (the kserve 0.21.0 wheel and sdist hold none) and the tests have no network,
# so these checks state the CRD facts the manifests rely on, each from the openAPIV3Schema named.
def _check_scaled_object(obj: dict) -> None:
    # keda.sh_scaledobjects.yaml: spec.required [scaleTargetRef, triggers]; scaleTargetRef.required [name];
    # triggers[].required [metadata, type], metadata: object of strings; *ReplicaCount, pollingInterval,
    # cooldownPeriod: int32.
    assert obj["apiVersion"] == "keda.sh/v1alpha1" and obj["kind"] == "ScaledObject"
    spec = obj["spec"]
    assert isinstance(spec["scaleTargetRef"]["name"], str)
    assert spec["triggers"]
    for trigger in spec["triggers"]:
        assert isinstance(trigger["type"], str)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in trigger["metadata"].items())
    for key in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
        assert type(spec[key]) is int
    assert set(spec) <= {"scaleTargetRef", "triggers", "minReplicaCount", "maxReplicaCount", "pollingInterval",
                         "cooldownPeriod", "idleReplicaCount", "advanced", "fallback", "initialCooldownPeriod"}


def _check_inference_service(obj: dict) -> None:
    # serving.kserve.io_inferenceservices.yaml (v1beta1): spec.required [predictor]; predictor.model.required
    # [modelFormat]; modelFormat.required [name]; storageUri, runtime, protocolVersion: strings.
    assert obj["apiVersion"] == "serving.kserve.io/v1beta1" and obj["kind"] == "InferenceService"
    model = obj["spec"]["predictor"]["model"]
    assert isinstance(model["modelFormat"]["name"], str)
    assert all(isinstance(model[k], str) for k in ("storageUri", "runtime", "protocolVersion"))
    assert model["protocolVersion"] in ("v1", "v2", "grpc-v1", "grpc-v2")


def _check_serving_runtime(obj: dict) -> None:
    # serving.kserve.io_servingruntimes.yaml (v1alpha1): spec.required [containers]; containers: core/v1 Container;
    # supportedModelFormats[].required [name]; protocolVersions: strings; volumes: core/v1 Volume.
    import kubernetes_validate

    assert obj["apiVersion"] == "serving.kserve.io/v1alpha1" and obj["kind"] == "ServingRuntime"
    spec = obj["spec"]
    assert spec["containers"] and all(isinstance(f["name"], str) for f in spec["supportedModelFormats"])
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in spec["annotations"].items())
    # The containers and volumes are core/v1 types: check them with Kubernetes' schema inside a Pod.
    from tfship.serving.deploy import KUBERNETES_VERSION

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"},
           "spec": {"containers": spec["containers"], "volumes": spec["volumes"]}}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("extra", [
    (),
    ("--autoscale", "keda", "--storage", "s3://bucket/models"),
    ("--image", "tensorflow/serving:2.21.0", "--storage", "pvc:models"),
], ids=["tfship-image", "keda-s3", "official-image"])
def test_every_kubernetes_object_validates_against_the_kubernetes_schema(signed_repo, keys, tmp_path, extra):
    objects = _generate(tmp_path, signed_repo["repo"], keys["public"], "kubernetes", *extra)
    kinds = sorted(o["kind"] for o in objects.values())
    expected = ["ConfigMap", "ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "Service"]
    assert kinds == sorted(expected + (["ScaledObject"] if "keda" in extra else ["HorizontalPodAutoscaler"]))
    for obj in objects.values():
        if obj["kind"] == "ScaledObject":
            _check_scaled_object(obj)
        else:
            _k8s_validate(obj)


def test_the_schema_check_catches_a_broken_object(signed_repo, keys, tmp_path):
    """The oracle can fail: a misspelt field and a wrong type are refused by Kubernetes' schema."""
    import kubernetes_validate

    objects = _generate(tmp_path, signed_repo["repo"], keys["public"], "kubernetes")
    deployment = objects["deployment.yaml"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        _k8s_validate(deployment)
    service = objects["service.yaml"]
    service["spec"]["ports"][0]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        _k8s_validate(service)


def test_kubernetes_manifests_carry_the_guarantees(signed_repo, keys, tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    objects = _generate(tmp_path, signed_repo["repo"], keys["public"], "kubernetes", "--versions", "all")
    pod = objects["deployment.yaml"]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert "tfship verify /models/digits/1 " in init["command"][2] and "tfship verify /models/digits/2 " in init["command"][2]
    (server,) = pod["containers"]
    assert server["startupProbe"]["grpc"] == {"port": 8500, "service": ""}
    assert server["readinessProbe"]["grpc"] == {"port": 8500, "service": ""}
    assert server["livenessProbe"]["httpGet"]["path"] == "/v1/live"
    assert "--require_golden=true" in server["args"] and "--enable_grpc_healthcheck_service=true" in server["args"]
    assert server["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    drain = next(a for a in server["args"] if a.startswith("--tfship_drain_seconds="))
    assert pod["terminationGracePeriodSeconds"] > int(drain.split("=")[1]) + int(server["lifecycle"]["preStop"]["exec"]["command"][1])
    for container in (init, server):
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and security["runAsNonRoot"] and security["capabilities"]["drop"] == ["ALL"]
        assert not security["allowPrivilegeEscalation"]
    grpc_port = next(p for p in objects["service.yaml"]["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["appProtocol"] == "kubernetes.io/h2c"
    assert objects["poddisruptionbudget.yaml"]["spec"]["maxUnavailable"] == 1
    assert {p["port"] for p in objects["networkpolicy.yaml"]["spec"]["ingress"][0]["ports"]} == {8500, 8501}
    config = text_format.Parse(objects["configmap.yaml"]["data"]["models.config"], model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.base_path == "/models/digits" and list(model.model_version_policy.specific.versions) == [1, 2]
    assert objects["public-key-configmap.yaml"]["data"]["public_key.pem"] == keys["public"].read_text()


def test_official_image_gets_a_model_status_probe_instead_of_grpc_health(signed_repo, keys, tmp_path):
    objects = _generate(tmp_path, signed_repo["repo"], keys["public"], "kubernetes", "--image", "tensorflow/serving:2.21.0")
    pod = objects["deployment.yaml"]["spec"]["template"]["spec"]
    server, sidecar = pod["containers"]
    # TF Serving has no grpc.health.v1 (TF Serving #671) and knows none of tfship's flags.
    assert "readinessProbe" not in server and not any(a.startswith(("--tfship", "--require_golden", "--enable_grpc_health"))
                                                      for a in server["args"])
    assert sidecar["readinessProbe"]["exec"]["command"][:3] == ["tfship", "deploy", "probe"]
    assert pod["initContainers"][0]["image"].startswith("tfship-model-server:")
    code, _, stderr = _deploy("kubernetes", "--repo", signed_repo["repo"], "--public-key", keys["public"], "--out",
                              tmp_path / "keda", "--image", "tensorflow/serving:2.21.0", "--autoscale", "keda")
    assert code == 2 and "tfship_batch_queue_depth" in stderr
    assert not (tmp_path / "keda").exists()


def test_kserve_objects_match_the_crd_structure(signed_repo, keys, tmp_path):
    objects = _generate(tmp_path, signed_repo["repo"], keys["public"], "kserve", "--storage", "gs://bucket/models")
    _check_serving_runtime(objects["servingruntime.yaml"])
    isvc = objects["inferenceservice-digits.yaml"]
    _check_inference_service(isvc)
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "gs://bucket/models/digits"
    assert isvc["spec"]["predictor"]["model"]["runtime"] == objects["servingruntime.yaml"]["metadata"]["name"]
    _k8s_validate(objects["public-key-configmap.yaml"])
    pdb = objects["poddisruptionbudget-digits.yaml"]
    _k8s_validate(pdb)
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": {"serving.kserve.io/inferenceservice": "digits"}}}
    args = objects["servingruntime.yaml"]["spec"]["containers"][0]["args"]
    assert "--require_golden=true" in args and "--model_base_path=/mnt/models" in args


def _normalised(objects: dict[str, dict], key: Path) -> dict[str, str]:
    from tfship.serving.deploy import dump

    texts = {}
    for name, obj in objects.items():
        if obj.get("data", {}).get("public_key.pem") == key.read_text():
            obj["data"]["public_key.pem"] = KEY_PLACEHOLDER
        texts[name] = dump(obj)
    return texts


@pytest.mark.parametrize("target,extra", [
    ("kubernetes", ("--autoscale", "keda", "--storage", "pvc:models", "--kustomize")),
    ("kserve", ("--storage", "s3://bucket/models")),
])
def test_manifests_match_the_golden_files(signed_repo, keys, tmp_path, target, extra):
    """The reviewed YAML, byte for byte (the signing key, generated per run, is replaced by a placeholder).
    UPDATE_GOLDEN=1 rewrites the files after a deliberate change."""
    objects = _generate(tmp_path, signed_repo["repo"], keys["public"], target, "--image", "tfship-model-server:0.1.0", *extra)
    texts = _normalised(objects, keys["public"])
    if "--kustomize" in extra:
        texts["kustomization.yaml"] = (tmp_path / "out" / "kustomization.yaml").read_text()
        assert sorted(yaml.safe_load(texts["kustomization.yaml"])["resources"]) == sorted(objects)
    folder = GOLDEN / target
    if os.environ.get("UPDATE_GOLDEN"):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.yaml"):
            old.unlink()
        for name, text in texts.items():
            (folder / name).write_text(text)
    expected = {p.name: p.read_text() for p in sorted(folder.glob("*.yaml"))}
    assert sorted(texts) == sorted(expected)
    for name in expected:
        assert texts[name] == expected[name], f"{folder / name} differs from what deploy writes now"


def test_deploy_refuses_a_tampered_version_and_writes_nothing(signed_repo, keys, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    with (repo / "digits" / "1" / "golden.npz").open("ab") as handle:
        handle.write(b"\0")
    for target in ("kubernetes", "kserve"):
        out = tmp_path / f"out-{target}"
        code, _, stderr = _deploy(target, "--repo", repo, "--public-key", keys["public"], "--out", out)
        assert code == 5, stderr
        assert "digits/1:" in stderr and "golden.npz" in stderr
        assert listing(out) == []
    code, _, stderr = _deploy("kubernetes", "--repo", signed_repo["repo"], "--public-key", keys["other_public"], "--out", tmp_path / "x")
    assert code == 5 and "digits/1:" in stderr and "digits/2:" in stderr
    code, _, stderr = _deploy("kubernetes", "--repo", signed_repo["repo"], "--out", tmp_path / "y")
    assert code == 2 and "--public-key" in stderr
    assert listing(tmp_path / "x") == [] and listing(tmp_path / "y") == []


def _as_on_host(text: str, repo: Path, config_dir: Path, key_dir: Path) -> str:
    from tfship.serving.deploy import CONFIG_DIR, KEY_DIR, MODELS_DIR

    # /models as a path's start only (not the file name in /etc/tfship/config/models.config)
    text = re.sub(rf'(^|[\s"=]){MODELS_DIR}(?=/)', lambda m: m.group(1) + str(repo), text, flags=re.MULTILINE)
    return text.replace(CONFIG_DIR, str(config_dir)).replace(KEY_DIR, str(key_dir))


def test_the_init_container_script_verifies_every_version_for_real(signed_repo, keys, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    objects = _generate(tmp_path, repo, keys["public"], "kubernetes", "--versions", "all")
    key_dir = tmp_path / "key"
    key_dir.mkdir()
    (key_dir / "public_key.pem").write_text(objects["public-key-configmap.yaml"]["data"]["public_key.pem"])
    script = _as_on_host(objects["deployment.yaml"]["spec"]["template"]["spec"]["initContainers"][0]["command"][2],
                         repo, tmp_path, key_dir)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ok = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    (repo / "digits" / "2" / "model.sig").unlink()  # the volume changed after the manifests were written
    failed = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert failed.returncode == 5 and "digits/2" in failed.stderr  # the pod does not start


def test_the_server_runs_with_the_generated_flags_and_models_config(signed_repo, keys, tmp_path):
    """The Deployment's server args and ConfigMap, paths mapped to this machine, on tfship's real server: it
    verifies, replays the golden set (--require_golden), then reports SERVING on grpc.health.v1, and the
    probe the official image would use says ready too."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tfship.serving.deploy import probe

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    objects = _generate(tmp_path, repo, keys["public"], "kubernetes")
    config_dir, key_dir = tmp_path / "config", tmp_path / "key"
    for folder, data in ((config_dir, objects["configmap.yaml"]["data"]), (key_dir, objects["public-key-configmap.yaml"]["data"])):
        folder.mkdir()
        for name, text in data.items():
            (folder / name).write_text(_as_on_host(text, repo, config_dir, key_dir))
    (server,) = objects["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
    grpc_port, rest_port = free_port(), free_port()
    # the image's entry point adds the ports (docker/model-server.Dockerfile)
    args = [f"--port={grpc_port}", f"--rest_api_port={rest_port}"] + [_as_on_host(a, repo, config_dir, key_dir) for a in server["args"]]
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "tfship", "model-server", *args], stdout=output,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        from engine_helpers import wait_until

        def serving() -> bool:
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                try:
                    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                except grpc.RpcError:
                    return False
            return answer.status == health_pb2.HealthCheckResponse.SERVING

        wait_until(serving, 120, "the server to report SERVING", poll=0.5)
        assert probe(f"127.0.0.1:{grpc_port}", ["digits"]) is None
        assert (probe(f"127.0.0.1:{grpc_port}", ["digits", "absent"]) or "").startswith("absent: ")
        # the exec probe as the kubelet runs it: exit 0 ready, non-zero not
        assert _deploy("probe", "--target", f"127.0.0.1:{grpc_port}", "--model", "digits")[0] == 0
        code, _, stderr = _deploy("probe", "--target", f"127.0.0.1:{grpc_port}", "--model", "absent")
        assert code == 1 and "not ready: absent" in stderr
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
