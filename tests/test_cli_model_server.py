"""``tfship model-server``: TF Serving's flags, spelled as TF Serving spells them, on the local engine.

Where a test quotes TF Serving, the words come from tensorflow_serving/model_servers/main.cc and server.cc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_repo, free_port, run_cli

from tfship.serving.config import read_model_server_config


def _start(*flags: object, env: dict[str, str] | None = None, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tfship", "model-server", *map(str, flags)]
    with log.open("wb") as output:
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})})


def _wait_ready(process: subprocess.Popen[bytes], port: int, versions: dict[str, list[int]], log: Path) -> None:
    from tfship.core.errors import ServerUnavailable
    from tfship.serving.readiness import wait_ready

    try:
        wait_ready(f"127.0.0.1:{port}", versions, timeout=120, alive=lambda: process.poll() is None)
    except ServerUnavailable as exc:
        pytest.fail(f"{exc.message}\n{log.read_text(errors='replace')[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


def test_an_unknown_flag_is_named_as_tf_serving_names_it():
    # main.cc: std::cout << "unknown argument: " << argv[1] << "\n" << usage;
    result = run_cli("model-server", "--model_base_path=/models/x", "--enable_magic=true")
    assert result.exit_code == 2
    assert "unknown argument: --enable_magic" in result.stderr


@pytest.mark.parametrize("flags, message", [
    # server.cc: "At least one of server_options.grpc_port or server_options.grpc_socket_path must be set."
    (["--port=0", "--model_base_path=/x"], "At least one of server_options.grpc_port or server_options.grpc_socket_path must be set"),
    # server.cc: "server_options.batching_parameters_file is set without setting server_options.enable_batching to true."
    (["--model_base_path=/x", "--batching_parameters_file={file}"],
     "server_options.batching_parameters_file is set without setting server_options.enable_batching to true"),
    (["--model_base_path=/x", "--enable_batching=false", "--batching_parameters_file", "{file}"], "without setting server_options.enable_batching"),
    # server.cc: "Both server_options.model_base_path and server_options.model_config_file are empty!"
    (["--port=9000"], "Both server_options.model_base_path and server_options.model_config_file are empty!"),
    (["--model_config_file=/nonexistent/models.config"], "--model_config_file=/nonexistent/models.config: no such file"),
])
def test_flag_combinations_tf_serving_refuses(flags, message, tmp_path):
    parameters = tmp_path / "batching.txt"
    parameters.write_text("max_batch_size { value: 8 }\n")
    result = run_cli("model-server", *[f.format(file=parameters) for f in flags])
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr


@pytest.mark.slow
def test_single_model_mode_serves_verified_versions_and_stops_on_sigterm(signed_repo, keys, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    grpc_port, rest_port = free_port(), free_port()
    log = tmp_path / "server.log"
    # TF Serving's flag forms both: --flag=value and --flag value.
    process = _start(f"--port={grpc_port}", "--rest_api_port", rest_port, "--model_name=digits",
                     f"--model_base_path={repo / 'digits'}", "--file_system_poll_wait_seconds", 1,
                     env={"TFSHIP_PUBLIC_KEY": str(keys["public"])}, log=log)
    try:
        _wait_ready(process, grpc_port, {"digits": [2]}, log)
        golden = repo / "digits" / "2" / "golden.npz"
        result = run_cli("validate", "--target", f"127.0.0.1:{grpc_port}", "--model", "digits", "--golden", golden)
        assert result.exit_code == 0, result.stdout + result.stderr
    finally:
        code = _stop(process)
    assert code == 0, log.read_text(errors="replace")[-3000:]
    assert "NOT verified" not in log.read_text(errors="replace")


@pytest.mark.slow
def test_config_file_mode_follows_the_file_and_warns_when_unverified(signed_repo, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    config = tmp_path / "models.config"
    text = ('model_config_list { config { name: "digits" base_path: "%s" model_platform: "tensorflow" '
            'model_version_policy { specific { versions: %d } } } }\n')
    config.write_text(text % (repo / "digits", 1))
    grpc_port, rest_port = free_port(), free_port()
    log = tmp_path / "server.log"
    # The official image passes --model_name and --model_base_path too; the config file wins (main.cc:
    # "If used, --model_name, --model_base_path are ignored.").
    process = _start(f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--model_name=model",
                     "--model_base_path=/models/model", f"--model_config_file={config}",
                     "--model_config_file_poll_wait_seconds=1", env={"TFSHIP_PUBLIC_KEY": ""}, log=log)
    try:
        _wait_ready(process, grpc_port, {"digits": [1]}, log)
        config.write_text(text % (repo / "digits", 2))
        assert read_model_server_config(config).model_config_list.config[0].model_version_policy.specific.versions == [2]
        _wait_ready(process, grpc_port, {"digits": [2]}, log)
    finally:
        code = _stop(process)
    assert code == 0
    assert "model signatures are NOT verified" in log.read_text(errors="replace")
