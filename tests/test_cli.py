"""The command as a user runs it: help, JSON envelope, and the detached local engine's lifecycle."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import psutil
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
        written = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (repo / "models.config", repo / ".tfship-run" / "local-models.config")}
        # Other options would change models.config, which the running engine polls: refused before anything is written.
        again = run_cli("serve", "up", "--repo", repo, "--engine", "local", "--public-key", keys["public"], "--versions", "all",
                        "--batching", "--grpc-port", free_port(), "--rest-port", free_port(), "--detach")
        assert again.exit_code == 1 and "already serving" in again.stderr
        assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in written} == written
        assert not (repo / "batching.config").exists()
        assert "digits version 2 is AVAILABLE" in (repo / ".tfship-run" / "local-engine.log").read_text()
        golden = repo / "digits" / "2" / "golden.npz"
        valid = run_cli("validate", "--target", f"127.0.0.1:{grpc_port}", "--model", "digits", "--golden", golden)
        assert valid.exit_code == 0, valid.stderr
    finally:
        down = run_cli("serve", "down", "--repo", repo)
    assert down.exit_code == 0 and "stopped the local engine" in down.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
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


def _own_process_record(repo, **fields):
    from tfship.serving.state import EngineState, write_state

    me = psutil.Process()
    record = {"engine": "local", "host": "127.0.0.1", "grpc_port": 1, "rest_port": 2, "pid": me.pid,
              "started_at": me.create_time(), **fields}
    return write_state(repo, EngineState(**record))


def test_serve_up_refuses_before_writing_anything(signed_repo, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    _own_process_record(repo)  # a live engine: this very process, recorded with its start time
    result = run_cli("serve", "up", "--repo", repo, "--engine", "local", "--allow-unsigned", "--detach",
                     "--grpc-port", free_port(), "--rest-port", free_port())
    assert result.exit_code == 1 and "already serving" in result.stderr
    for name in ("models.config", "monitoring.config", ".tfship-run/local-models.config"):
        assert not (repo / name).exists(), name


def test_serve_down_never_signals_a_process_that_took_the_recorded_pid(tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    # A real process unrelated to tfship now holds the pid the record names; the recorded engine started earlier.
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        state = _own_process_record(repo, pid=other.pid, started_at=psutil.Process(other.pid).create_time() - 3600)
        result = run_cli("serve", "down", "--repo", repo, "--json")
        assert result.exit_code == 0, result.stderr
        data = json.loads(result.stdout)["data"]
        assert data["stopped"] is False and data["stale"] is True
        assert f"pid {other.pid} now belongs to another process" in data["reason"]
        assert other.poll() is None and psutil.Process(other.pid).status() != psutil.STATUS_ZOMBIE
        assert not state.exists()
    finally:
        other.kill()
        other.wait()
    assert run_cli("serve", "down", "--repo", repo).stdout.strip() == f"no engine recorded for {repo}"


def test_a_record_of_an_engine_that_is_gone_is_stale(tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(gone.pid).create_time()
    gone.wait()
    _own_process_record(repo, pid=gone.pid, started_at=started)
    status = run_cli("serve", "status", "--repo", repo)
    assert status.exit_code == 4 and "not running" in status.stdout
    down = run_cli("serve", "down", "--repo", repo)
    assert down.exit_code == 0 and f"the recorded local engine (pid {gone.pid}) is not running" in down.stdout
    assert not (repo / ".tfship-run" / "engine.json").exists()


def test_engine_log_rotates_at_its_size_cap(tmp_path):
    from tfship.serving.local_process import engine_log_handler

    cap = 4096
    path = tmp_path / "run" / "local-engine.log"
    logger = logging.getLogger("tfship.test.rotation")
    handler = engine_log_handler(path, max_bytes=cap, backups=2)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for index in range(500):
            logger.warning("request %d failed: %s", index, "x" * 100)
    finally:
        logger.removeHandler(handler)
        handler.close()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["local-engine.log", "local-engine.log.1", "local-engine.log.2"]
    assert all((path.parent / name).stat().st_size <= cap for name in files)
    assert "request 499 failed" in path.read_text()
