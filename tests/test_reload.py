"""``tfship serve reload``: a version copied into a served repository is served only once it is verified."""

from __future__ import annotations

import json
import os
import shutil

from conftest import copy_repo, free_port, run_cli, run_subprocess
from engine_helpers import wait_until


def _pinned(repo) -> list[int]:
    from tfship.serving.config import read_model_server_config

    (model,) = read_model_server_config(repo / "models.config").model_config_list.config
    assert model.model_version_policy.WhichOneof("policy_choice") == "specific"
    return list(model.model_version_policy.specific.versions)


def _served_states(repo) -> dict[int, str]:
    """What the engine itself reports (GetModelStatus, through ``serve status``)."""
    status = run_cli("serve", "status", "--repo", repo, "--json")
    assert status.exit_code == 0, status.stderr
    return {s["version"]: s["state"] for s in json.loads(status.stdout)["data"]["models"]["digits"]}


def test_an_unsigned_version_copied_in_is_served_only_after_sign_and_reload(signed_repo, keys, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    grpc_port = free_port()
    up = run_subprocess("serve", "up", "--repo", repo, "--engine", "local", "--public-key", keys["public"], "--versions", "all",
                        "--grpc-port", grpc_port, "--rest-port", free_port(), "--detach", "--json")
    assert up.returncode == 0, up.stderr
    try:
        assert _pinned(repo) == [1, 2]
        # An unsigned version 3 appears, then version 1 goes: once the engine's directory poll has unloaded 1,
        # the same scan has seen 3, so its absence below is the engine's decision, not a poll not yet run.
        shutil.copytree(repo / "digits" / "2", repo / "digits" / "3")
        (repo / "digits" / "3" / "model.sig").unlink()
        shutil.rmtree(repo / "digits" / "1")
        wait_until(lambda: 1 not in _served_states(repo), 30, "the engine to notice version 1 is gone")
        assert _served_states(repo) == {2: "AVAILABLE"}

        before = (repo / "models.config").read_bytes()
        refused = run_cli("serve", "reload", "--repo", repo, "--public-key", keys["public"])
        assert refused.exit_code == 5
        assert "digits/3:" in refused.stderr and "--skip-invalid" in refused.stderr
        assert (repo / "models.config").read_bytes() == before

        skipped = run_cli("serve", "reload", "--repo", repo, "--public-key", keys["public"], "--skip-invalid", "--json")
        assert skipped.exit_code == 0, skipped.stderr
        data = json.loads(skipped.stdout)["data"]
        assert data["skipped"] == [["digits", 3]] and data["models"] == {"digits": [2]} and data["reloaded"]
        assert _pinned(repo) == [2]

        signed = run_cli("sign", repo / "digits" / "3", "--key", keys["private"])
        assert signed.exit_code == 0, signed.stderr
        reloaded = run_cli("serve", "reload", "--repo", repo, "--public-key", keys["public"], "--json")
        assert reloaded.exit_code == 0, reloaded.stderr
        data = json.loads(reloaded.stdout)["data"]
        # The policy serve up used (all) is kept: every verified version is pinned.
        assert data["versions"] == "all" and data["models"] == {"digits": [2, 3]} and data["reloaded"]
        assert _pinned(repo) == [2, 3]
        assert wait_until(lambda: _served_states(repo) == {2: "AVAILABLE", 3: "AVAILABLE"}, 30, "version 3 to be served")
        valid = run_cli("validate", "--target", f"127.0.0.1:{grpc_port}", "--model", "digits",
                        "--golden", repo / "digits" / "3" / "golden.npz")
        assert valid.exit_code == 0, valid.stderr
    finally:
        down = run_cli("serve", "down", "--repo", repo)
    assert down.exit_code == 0, down.stderr


def test_reload_without_an_engine_pins_and_says_what_serves_it(signed_repo, keys, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    result = run_cli("serve", "reload", "--repo", repo, "--public-key", keys["public"], "--versions", "latest:2")
    assert result.exit_code == 0, result.stderr
    assert "no engine recorded" in result.stdout and "digits: versions 1, 2" in result.stdout
    assert _pinned(repo) == [1, 2]
    assert (repo / "models.config").stat().st_mode & 0o777 == 0o644  # a container's server user must read it
    # Replaced atomically: no temporary file is left next to it.
    assert sorted(p for p in os.listdir(repo) if p.endswith(".tmp")) == []


def test_reload_keeps_the_labels_serve_config_recorded(signed_repo, keys, tmp_path):
    from tfship.serving.config import read_model_server_config

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    first = run_cli("serve", "config", "--repo", repo, "--public-key", keys["public"], "--versions", "all", "--label", "stable=1")
    assert first.exit_code == 0, first.stderr
    result = run_cli("serve", "reload", "--repo", repo, "--public-key", keys["public"])
    assert result.exit_code == 0, result.stderr
    (model,) = read_model_server_config(repo / "models.config").model_config_list.config
    assert dict(model.version_labels) == {"stable": 1} and _pinned(repo) == [1, 2]


def test_reload_refuses_without_a_key_and_on_a_bad_policy(signed_repo, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    no_key = run_cli("serve", "reload", "--repo", repo, env={"TFSHIP_PUBLIC_KEY": None})
    assert no_key.exit_code == 2 and "--public-key" in no_key.stderr
    bad = run_cli("serve", "reload", "--repo", repo, "--allow-unsigned", "--versions", "newest")
    assert bad.exit_code == 2 and "latest:N, all, or specific" in bad.stderr
    assert not (repo / "models.config").exists()
