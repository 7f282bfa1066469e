"""``tfship rollout``: a canary beside stable on the real local engine, promoted or rolled back on evidence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import copy_repo, free_port, run_cli, run_subprocess


def _tfship(*args: object) -> tuple[int, str, str]:
    from tfship.cli_deploy import COMMANDS

    group = click.Group("tfship")
    for command in COMMANDS:
        group.add_command(command)
    result = CliRunner().invoke(group, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _rollout(repo: Path, version: int, keys, reports: Path, *extra: object) -> tuple[int, dict, str]:
    code, stdout, stderr = _tfship("rollout", "--repo", repo, "--model", "digits", "--version", version,
                                   "--public-key", keys["public"], "--report-dir", reports, "--latency-requests", 30,
                                   "--json", *extra)
    return code, json.loads(stdout), stderr


def _served(repo: Path) -> tuple[list[int], dict[str, int]]:
    """The versions the engine reports AVAILABLE (GetModelStatus through serve status; an unloaded version stays
    listed in END, as in TF Serving), and the labels models.config gives it."""
    from tfship.serving.config import read_model_server_config

    status = run_cli("serve", "status", "--repo", repo, "--json")
    assert status.exit_code == 0, status.stderr
    available = sorted(s["version"] for s in json.loads(status.stdout)["data"]["models"]["digits"] if s["state"] == "AVAILABLE")
    (model,) = read_model_server_config(repo / "models.config").model_config_list.config
    return available, dict(model.version_labels)


def _with_altered_golden(repo: Path, source: int, version: int, private_key: Path) -> None:
    """A version whose golden outputs are not what its model computes (shuffled), signed again: it verifies."""
    from tfship.core.signing import sign

    shutil.copytree(repo / "digits" / str(source), repo / "digits" / str(version))
    golden = repo / "digits" / str(version) / "golden.npz"
    arrays = dict(np.load(golden))
    arrays["outputs/probabilities"] = arrays["outputs/probabilities"][::-1].copy()
    np.savez(golden, **arrays)
    # Re-signed by the key's holder without an attestation (the export's would name the old golden set's digest).
    (repo / "digits" / str(version) / "model.sig").unlink()
    (repo / "digits" / str(version) / "attestation.intoto.jsonl").unlink(missing_ok=True)
    sign(repo / "digits" / str(version), key=private_key)


@pytest.mark.slow  # about 35 s: four reloads of a real engine and the golden and latency samples
def test_rollout_promotes_a_matching_canary_and_rolls_back_on_parity_and_latency(signed_repo, keys, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    _with_altered_golden(repo, 2, 3, keys["private"])
    reports = tmp_path / "reports"
    up = run_subprocess("serve", "up", "--repo", repo, "--engine", "local", "--public-key", keys["public"], "--versions",
                        "specific:1", "--label", "stable=1", "--grpc-port", free_port(), "--rest-port", free_port(),
                        "--detach", "--json")
    assert up.returncode == 0, up.stderr
    try:
        # An unsigned version copied in: rollout verifies the repository and refuses before the engine is touched.
        shutil.copytree(repo / "digits" / "2", repo / "digits" / "4")
        (repo / "digits" / "4" / "model.sig").unlink()
        code, _, stderr = _tfship("rollout", "--repo", repo, "--model", "digits", "--version", 3, "--public-key",
                                  keys["public"], "--report-dir", reports)
        assert code == 5 and "digits/4:" in stderr
        assert _served(repo) == ([1], {"stable": 1})
        shutil.rmtree(repo / "digits" / "4")

        # 3 computes what 2 computes, but its golden set says otherwise: rolled back on parity.
        code, data, stderr = _rollout(repo, 3, keys, reports)
        assert code == 3, stderr
        result = data["data"]
        assert result["decision"] == "rolled_back" and result["stable"] == 1 and result["canary"] == 3
        assert result["evidence"]["stable"]["parity"]["passed"] is True
        assert result["evidence"]["canary"]["parity"]["passed"] is False
        assert "output 'probabilities'" in result["reason"]
        assert _served(repo) == ([1], {"stable": 1})
        recorded = json.loads(Path(result["report"]).read_text())
        assert recorded["decision"] == "rolled_back" and recorded["exit_code"] == 3 and recorded["canary"] == 3

        # 2 matches, but no canary is ever 100 times faster than stable: rolled back on latency.
        code, data, stderr = _rollout(repo, 2, keys, reports, "--latency-factor", 0.01)
        assert code == 6, stderr
        latency = data["data"]["evidence"]
        assert latency["canary"]["parity"]["passed"] and latency["canary"]["latency"]["count"] == 30
        assert "p99" in data["data"]["reason"]
        assert _served(repo) == ([1], {"stable": 1})

        # 2 matches and is within the factor: promoted, stable now answers with version 2.
        code, data, stderr = _rollout(repo, 2, keys, reports, "--latency-factor", 50)
        assert code == 0, stderr
        assert data["data"]["decision"] == "promoted"
        assert _served(repo) == ([2], {"stable": 2})
        assert len(list(reports.glob("*.json"))) == 3
        state = json.loads((repo / ".tfship-run" / "engine.json").read_text())
        validate = run_cli("validate", "--target", f"127.0.0.1:{state['grpc_port']}", "--model", "digits", "--label",
                           "stable", "--golden", repo / "digits" / "2" / "golden.npz", "--json")
        assert validate.exit_code == 0, validate.stderr
        assert json.loads(validate.stdout)["data"]["served_versions"] == [2]
    finally:
        down = run_cli("serve", "down", "--repo", repo)
    assert down.exit_code == 0, down.stderr


def test_print_k8s_prints_configmap_patches_for_the_deployed_configmap(signed_repo, keys, tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    code, stdout, stderr = _tfship("rollout", "--repo", signed_repo["repo"], "--model", "digits", "--version", 2,
                                   "--public-key", keys["public"], "--print-k8s", "--name", "prod")
    assert code == 0, stderr
    documents = [d for d in yaml.safe_load_all(stdout) if d]
    assert [d["kind"] for d in documents] == ["ConfigMap"] * 3
    code, _, stderr = _tfship("deploy", "kubernetes", "--repo", signed_repo["repo"], "--public-key", keys["public"],
                              "--name", "prod", "--out", tmp_path / "out")
    assert code == 0, stderr
    deployed = yaml.safe_load((tmp_path / "out" / "configmap.yaml").read_text())
    served = []
    for document in documents:
        assert document["metadata"]["name"] == deployed["metadata"]["name"]
        config = text_format.Parse(document["data"]["models.config"], model_server_config_pb2.ModelServerConfig())
        (model,) = config.model_config_list.config
        assert model.base_path == "/models/digits"
        served.append((list(model.model_version_policy.specific.versions), dict(model.version_labels)))
    assert served == [([1, 2], {"stable": 1, "canary": 2}), ([2], {"stable": 2}), ([1], {"stable": 1})]


def test_rollout_without_an_engine_or_with_unknown_checks_says_what_to_do(signed_repo, keys, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    code, _, stderr = _tfship("rollout", "--repo", repo, "--model", "digits", "--version", 2, "--public-key", keys["public"])
    assert code == 4 and "tfship serve up" in stderr
    code, _, stderr = _tfship("rollout", "--repo", repo, "--model", "digits", "--version", 2, "--traffic-check", "parity,speed")
    assert code == 2 and "speed" in stderr
    code, _, stderr = _tfship("rollout", "--repo", repo, "--model", "digits", "--version", 9)
    assert code == 2 and "no such version" in stderr
