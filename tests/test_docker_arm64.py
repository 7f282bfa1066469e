"""tfship's server image for linux/arm64, built and run on this x86 machine under QEMU user emulation.

``TFSHIP_PLATFORM=linux/arm64 docker/build-test-images.sh`` makes ``tfship-test-base:arm64`` and
``tfship-model-server:arm64`` (debootstrap --arch=arm64, aarch64 wheels, ``docker build --platform linux/arm64``);
the engine runs the image's aarch64 programs through binfmt_misc's ``qemu-aarch64`` entry. A cold build took
12 minutes on this project's 2-core machines (docker/README.md has the measured times), and a changed checkout
rebuilds the image under emulation again, so these tests only run when the image is already there, or when
``TFSHIP_TEST_ARM64=1`` asks for it to be built (or brought up to date); CI does not pay for it by default.
On an arm64 machine the plain test images are arm64 already: there the image is ``tfship-model-server`` and no emulation is involved.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, copy_repo, free_port, run_cli

pytestmark = [pytest.mark.docker, pytest.mark.slow]

BUILDER = ROOT / "docker" / "build-test-images.sh"
NATIVE = platform.machine() in ("aarch64", "arm64")
SERVER_IMAGE = "tfship-model-server" if NATIVE else "tfship-model-server:arm64"
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
LABEL = "org.tfship.test"
UNREACHABLE = 75  # build-test-images.sh: Debian's packages or the package index could not be reached
COLD_BUILD = "about 12 min cold on 2 cores, the install steps emulated; see docker/README.md"
# TensorFlow's import under emulation is several times slower than native: a minute or two before the model
# is AVAILABLE here, more on a busy machine.
READY_WITHIN = 900.0


def _sdk() -> Any:
    return importlib.import_module("docker")


def emulation_problem() -> str | None:
    """Why this machine cannot run aarch64 programs in containers, or None when it can."""
    if NATIVE:
        return None
    if not BINFMT.is_file():
        return (f"{BINFMT} is missing: install Debian's qemu-user-static and binfmt-support "
                "(and mount binfmt_misc if it is not mounted)")
    lines = BINFMT.read_text().splitlines()
    if not lines or lines[0] != "enabled":
        return f"{BINFMT} is disabled: update-binfmts --enable qemu-aarch64"
    flags = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("flags:")), "")
    if "F" not in flags:
        return f"{BINFMT} lacks the F flag (flags: {flags!r}), so containers cannot use it: install Debian's qemu-user-static"
    return None


def _image_present(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def arm64_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The arm64 server image: the one already built, or built now when TFSHIP_TEST_ARM64=1 asks for it."""
    problem = emulation_problem()
    if problem:
        pytest.skip(f"the linux/arm64 image needs QEMU emulation here: {problem}")
    wanted = os.environ.get("TFSHIP_TEST_ARM64") == "1"
    if not wanted:
        if _image_present(SERVER_IMAGE):
            return SERVER_IMAGE  # as built: TFSHIP_TEST_ARM64=1 brings it up to date with the checkout first
        pytest.skip(f"{SERVER_IMAGE} is not built ({COLD_BUILD}): build it with "
                    "'TFSHIP_PLATFORM=linux/arm64 docker/build-test-images.sh', or set TFSHIP_TEST_ARM64=1")
    env = {**os.environ, "PYTHON": str(ROOT / ".venv" / "bin" / "python")}
    if not NATIVE:
        env["TFSHIP_PLATFORM"] = "linux/arm64"
    result = subprocess.run(["bash", str(BUILDER), "all"], capture_output=True, text=True, timeout=4 * 3600, env=env)
    (tmp_path_factory.mktemp("arm64") / "build.log").write_text(result.stdout + result.stderr)
    if result.returncode == UNREACHABLE:
        pytest.skip(f"cannot build the arm64 images: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, f"docker/build-test-images.sh (linux/arm64) failed:\n{result.stderr[-4000:]}"
    return SERVER_IMAGE


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    client = _sdk().from_env(timeout=300)
    yield client
    client.close()


def test_the_image_is_arm64_and_its_programs_are_aarch64(arm64_image):
    inspected = json.loads(subprocess.run(["docker", "image", "inspect", arm64_image], capture_output=True, text=True,
                                          check=True).stdout)[0]
    assert (inspected["Os"], inspected["Architecture"]) == ("linux", "arm64")
    machine = subprocess.run(["docker", "run", "--rm", "--platform", "linux/arm64", "--entrypoint", "uname", arm64_image, "-m"],
                             capture_output=True, text=True, timeout=300)
    assert (machine.returncode, machine.stdout.strip()) == (0, "aarch64"), machine.stderr
    # The entry point passes flags through: --version is tfship-model-server's, answered as main.cc answers it.
    version = subprocess.run(["docker", "run", "--rm", "--platform", "linux/arm64", arm64_image, "--version"],
                             capture_output=True, text=True, timeout=600)
    assert version.returncode == 0, version.stdout + version.stderr
    assert version.stdout.startswith("TensorFlow ModelServer: tfship "), version.stdout
    assert "TensorFlow Library: " in version.stdout


def _readable(repo: Path) -> Path:
    """Let the image's non-root user read the repository (the exporter leaves version folders 0700)."""
    for path in [repo, *repo.rglob("*")]:
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
    return repo


def _rest(url: str, body: dict[str, Any] | None = None, timeout: float = 120) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read(2000).decode("utf-8", "replace")}


def _wait_available(container: Any, status_url: str) -> None:
    """Until the model's version is AVAILABLE over REST (GET /v1/models/NAME), the container dies, or READY_WITHIN."""
    deadline, last = time.monotonic() + READY_WITHIN, "no answer yet"
    while time.monotonic() < deadline:
        container.reload()
        if container.status in ("exited", "dead"):
            pytest.fail(f"the arm64 server exited:\n{container.logs(tail=40).decode('utf-8', 'replace')}")
        try:
            code, answer = _rest(status_url, timeout=10)
        except OSError as exc:  # not listening yet
            last = str(exc)
        else:
            states = [entry.get("state") for entry in answer.get("model_version_status", [])]
            if code == 200 and "AVAILABLE" in states:
                return
            last = f"{code} {answer}"
        time.sleep(2)
    pytest.fail(f"the arm64 server did not make the model AVAILABLE within {READY_WITHIN:.0f}s ({last}):\n"
                f"{container.logs(tail=40).decode('utf-8', 'replace')}")


def test_the_arm64_image_serves_a_signed_version_and_predicts_the_golden_outputs(arm64_image, signed_repo, keys, tmp_path,
                                                                               docker_client):
    from tfship.client.golden import load_golden
    from tfship.client.validate import choose_tolerance

    repo = _readable(copy_repo(signed_repo["repo"], tmp_path / "models"))
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "signing_key.pub").write_bytes(Path(keys["public"]).read_bytes())
    (keys_dir / "signing_key.pub").chmod(0o644)
    grpc_port, rest_port = free_port(), free_port()
    container = docker_client.containers.run(
        arm64_image, detach=True, platform="linux/arm64", name=f"tfship-test-arm64-{uuid.uuid4().hex[:10]}",
        labels={LABEL: "test_docker_arm64"}, environment={"MODEL_NAME": "digits", "TFSHIP_PUBLIC_KEY": "/keys/signing_key.pub"},
        volumes={str(repo): {"bind": "/models", "mode": "ro"}, str(keys_dir): {"bind": "/keys", "mode": "ro"}},
        ports={"8500/tcp": ("127.0.0.1", grpc_port), "8501/tcp": ("127.0.0.1", rest_port)})
    try:
        base = f"http://127.0.0.1:{rest_port}/v1/models/digits"
        _wait_available(container, base)
        logs = container.logs().decode("utf-8", "replace")
        assert "NOT verified" not in logs, logs  # the key was given: every version was verified before loading

        # One REST Predict of golden rows through the mapped port, against what the original Keras model computed.
        version = repo / "digits" / "2"
        golden = load_golden(version / "golden.npz")
        rows = golden.inputs["image"][:8]
        code, answer = _rest(f"{base}/versions/2:predict", {"instances": [{"image": row.tolist()} for row in rows]})
        assert code == 200, answer
        predictions = np.asarray(answer["predictions"], dtype=np.float32)
        expected = golden.outputs["probabilities"][:8]
        tolerance = choose_tolerance(None, None, version).tolerance
        np.testing.assert_allclose(predictions, expected, atol=tolerance.atol, rtol=tolerance.rtol)
        assert (predictions.argmax(axis=1) == expected.argmax(axis=1)).all()
        print(f"arm64 REST predict: classes {predictions.argmax(axis=1).tolist()}, largest difference from the golden "
              f"outputs {np.abs(predictions - expected).max():.2e} (atol {tolerance.atol}, rtol {tolerance.rtol})")

        # The whole golden set over gRPC through the other mapped port, as for the amd64 image.
        result = run_cli("validate", "--target", f"127.0.0.1:{grpc_port}", "--model", "digits", "--golden", version / "golden.npz")
        assert result.exit_code == 0, result.stdout + result.stderr
    finally:
        container.remove(force=True, v=True)


def test_the_builder_names_what_to_install_when_emulation_is_missing(tmp_path):
    """No binfmt entry for qemu-aarch64 (an empty binfmt_misc folder stands in for it): one line naming
    Debian's packages, exit 1, nothing built and nothing installed."""
    if NATIVE:
        pytest.skip("an arm64 machine builds linux/arm64 natively: no emulation to miss")
    empty = tmp_path / "binfmt_misc"
    empty.mkdir()
    env = {**os.environ, "TFSHIP_PLATFORM": "linux/arm64", "TFSHIP_BINFMT_DIR": str(empty), "TFSHIP_TEST_CACHE": str(tmp_path / "cache"),
           "TFSHIP_BASE_IMAGE": f"tfship-test-never-{uuid.uuid4().hex[:8]}"}
    result = subprocess.run(["bash", str(BUILDER), "base"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "qemu-user-static" in line and "binfmt-support" in line and "qemu-aarch64" in line, line
    assert not _image_present(env["TFSHIP_BASE_IMAGE"])
    assert not (tmp_path / "cache").exists()
