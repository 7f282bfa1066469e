"""The command as a user runs it: help, JSON envelope, and the detached local engine's lifecycle."""

from __future__ import annotations

import json
import os
import signal
import time

from conftest import copy_repo, free_port, run_cli, run_subprocess


def test_help_lists_the_commands_and_exit_codes():
    result = run_cli("--help")
    assert result.exit_code == 0
    for command in ("export", "serve", "validate", "compare", "bench", "keys", "sign", "verify"):
        assert command in result.stdout
    assert "5 signature missing or invalid" in result.stdout.replace("\n", " ").replace("  ", " ")


def test_usage_error_exits_2_with_json_envelope_on_failure(tmp_path):
    assert run_cli("export").exit_code == 2
    result = run_cli("export", tmp_path / "missing.h5", "--name", "m", "--repo", tmp_path / "r", "--json")
    assert result.exit_code == 1
    envelope = json.loads(result.stdout)
    assert envelope == {"schema": 1, "command": "export", "ok": False, "exit_code": 1, "data": None,
                        "errors": [f"{tmp_path / 'missing.h5'}: no such file or directory"]}


def test_detached_local_engine_up_status_down(signed_repo, keys, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    grpc_port, rest_port = free_port(), free_port()
    up = run_subprocess("serve", "up", "--repo", repo, "--engine", "local", "--public-key", keys["public"],
                        "--grpc-port", grpc_port, "--rest-port", rest_port, "--detach", "--json")
    assert up.returncode == 0, up.stderr
    data = json.loads(up.stdout)["data"]
    pid = data["pid"]
    try:
        assert data["models"]["digits"][0]["state"] == "AVAILABLE"
        assert (repo / ".tfship-run" / "local-engine.log").exists()
        status = run_cli("serve", "status", "--repo", repo, "--json")
        assert status.exit_code == 0
        assert json.loads(status.stdout)["data"]["models"]["digits"][0]["state"] == "AVAILABLE"
        again = run_cli("serve", "up", "--repo", repo, "--engine", "local", "--public-key", keys["public"],
                        "--grpc-port", free_port(), "--rest-port", free_port(), "--detach")
        assert again.exit_code == 1 and "already serving" in again.stderr
        golden = repo / "digits" / "2" / "golden.npz"
        valid = run_cli("validate", "--target", f"127.0.0.1:{grpc_port}", "--model", "digits", "--golden", golden)
        assert valid.exit_code == 0, valid.stderr
    finally:
        down = run_cli("serve", "down", "--repo", repo)
    assert down.exit_code == 0 and "stopped the local engine" in down.stdout
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        raise AssertionError("the engine did not exit after serve down")
    status = run_cli("serve", "status", "--repo", repo)
    assert status.exit_code == 4


def test_serve_up_reports_a_model_that_fails_to_load(signed_repo, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    for version in ("1", "2"):
        (repo / "digits" / version / "saved_model.pb").write_bytes(b"broken")
    result = run_subprocess("serve", "up", "--repo", repo, "--engine", "local", "--allow-unsigned", "--detach",
                            "--grpc-port", free_port(), "--rest-port", free_port(), "--timeout", "60")
    assert result.returncode == 4
    assert "failed to load" in result.stderr and "last lines of" in result.stderr
    assert not (repo / ".tfship-run" / "engine.json").exists()
