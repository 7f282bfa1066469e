"""The export worker: a model file is loaded and converted in a child process that writes only staging.

Whether Landlock is available is asked of the kernel here with its own system call
(``landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)``, Documentation/userspace-api/landlock.rst),
not through tfship's sandbox module.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import listing, run_cli

SM_ONLY = ("--formats", "savedmodel")


def _kernel_landlock_abi() -> int:
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    syscall.restype = ctypes.c_long
    return max(int(syscall(ctypes.c_long(444), None, ctypes.c_size_t(0), ctypes.c_uint32(1))), 0)


LANDLOCK = _kernel_landlock_abi()
needs_landlock = pytest.mark.skipif(LANDLOCK < 1, reason="the kernel offers no Landlock (landlock_create_ruleset failed)")


def _versions(repo: Path, name: str) -> list[str]:
    folder = repo / name
    return sorted(p.name for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def _lambda_model(path: Path, body: str) -> Path:
    """A Keras 3 model whose Lambda layer evaluates ``body`` (an expression of its input ``t``) whenever it is built.

    The body only acts when TFSHIP_TEST_ACT is set, so saving the model here runs nothing.
    """
    import keras

    function = eval(f"lambda t: t if not __import__('os').environ.get('TFSHIP_TEST_ACT') else ({body})")
    x = keras.Input((3,), name="x")
    keras.Model(x, keras.layers.Lambda(function, output_shape=(3,), name="probe")(x)).save(path)
    return path


def _worker_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("export worker:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_real_export_runs_in_a_temporary_worker_and_says_whether_it_is_confined(tmp_path, monkeypatch):
    import keras

    caller = tmp_path / "caller"
    caller.mkdir()
    monkeypatch.chdir(caller)
    x = keras.Input((4,), name="x")
    model = keras.Model(x, keras.layers.Dense(3, activation="softmax", name="p")(x))
    model.save(caller / "m.keras")
    result = run_cli("export", "m.keras", "--name", "m", "--repo", "models", "--json")  # relative paths, as a user types
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)["data"]
    assert {p["artifact"]: p["status"] for p in data["parity"]} == {"savedmodel": "pass", "tflite": "pass", "onnx": "pass"}
    version = caller / "models" / "m" / "1"
    golden = np.load(version / "golden.npz")
    np.testing.assert_allclose(golden["outputs/p"], model.predict(golden["inputs/x"], verbose=0), atol=1e-5)
    assert {"model.tflite", "model.onnx", "saved_model.pb", "manifest.json"} <= set(listing(version))
    assert json.loads((version / "manifest.json").read_text())["source"]["path"] == "m.keras"

    line = _worker_line(result.stderr)
    if LANDLOCK:
        assert f"writes confined to the staging directory and private temporary folders (Landlock ABI {LANDLOCK})" in line
        assert "reads confined to Python, system libraries, the model and the files named on the command line" in line
    else:
        assert "writes NOT confined" in line and "reads NOT confined" in line
    workdir = Path(re.search(r"working directory (\S+) \(empty, temporary\)", line).group(1))
    assert workdir != caller and not workdir.exists()  # removed once the export is done
    assert sorted(p.name for p in caller.iterdir()) == ["m.keras", "models"]


def test_trusted_code_writing_a_relative_path_never_lands_in_the_callers_directory(tmp_path, monkeypatch):
    # The Lambda plants a file by a relative path, then scales its input by 1 + the number of entries
    # in its working directory: 2 proves it ran in a directory that held nothing but its own file.
    source = _lambda_model(tmp_path / "plant.keras", "(__import__('pathlib').Path('planted.txt').write_text('x'), "
                                                     "t * (1 + len(__import__('os').listdir('.'))))[-1]")
    caller = tmp_path / "caller"
    caller.mkdir()
    (caller / "notes.txt").write_text("the user's own file")
    monkeypatch.chdir(caller)
    result = run_cli("export", source, "--name", "plant", "--repo", tmp_path / "models", "--trust-code", *SM_ONLY,
                     env={"TFSHIP_TEST_ACT": "1"})
    assert result.exit_code == 0, result.stderr
    assert listing(caller) == ["notes.txt"]
    golden = np.load(tmp_path / "models" / "plant" / "1" / "golden.npz")
    np.testing.assert_allclose(golden["outputs/probe"], 2 * golden["inputs/x"], atol=1e-6)
    assert "planted.txt" not in listing(tmp_path / "models")


@needs_landlock
def test_trusted_code_cannot_write_outside_staging(tmp_path):
    marker = tmp_path / "marker"
    # The Lambda says on stderr that it ran and how its write ended, then lets the error end the export.
    attempt = (f"try:\n    open({str(marker)!r}, 'w').write('escaped')\n"
               f"except OSError as exc:\n    print('probe ran, write refused:', exc, file=__import__('sys').stderr)\n    raise\n")
    source = _lambda_model(tmp_path / "escape.keras", f"(exec({attempt!r}, {{}}), t)[-1]")
    repo = tmp_path / "models"
    result = run_cli("-vv", "export", source, "--name", "escape", "--repo", repo, "--trust-code", *SM_ONLY,
                     env={"TFSHIP_TEST_ACT": "1"})
    assert result.exit_code == 1
    assert f"probe ran, write refused: [Errno 13] Permission denied: '{marker}'" in result.stderr
    assert not marker.exists()
    assert _versions(repo, "escape") == []
    assert not any(p.name.startswith(".tfship-tmp-") for p in (repo / "escape").iterdir())


def test_trusted_code_cannot_plant_a_symlink_to_host_files_in_the_version(tmp_path):
    # The Lambda finds the staging directory and links /etc into it: a version must never carry host files.
    # With Landlock the kernel refuses the symlink; without, the exporter refuses the staging directory.
    # (With Landlock the worker cannot list the repository to find staging: it tries its writable working directory.)
    repo = tmp_path / "models"
    link = f"(__import__('glob').glob({str(repo / 'leak' / '.tfship-tmp-*')!r}) or [__import__('os').getcwd()])[0] + '/hostfiles'"
    plant = f"__import__('os').path.lexists({link}) or __import__('os').symlink('/etc', {link})"
    source = _lambda_model(tmp_path / "leak.keras", f"({plant}, t)[-1]")
    result = run_cli("export", source, "--name", "leak", "--repo", repo, "--trust-code", *SM_ONLY, env={"TFSHIP_TEST_ACT": "1"})
    assert result.exit_code == 1
    if LANDLOCK:
        assert re.search(r"/etc -> \S+/cwd/hostfiles: access refused: the export worker is confined \(Landlock\)", result.stderr), result.stderr
    else:
        assert "hostfiles, which is not a regular file or directory" in result.stderr
    assert _versions(repo, "leak") == []
    assert not any(p.name.startswith(".tfship-tmp-") for p in (repo / "leak").iterdir())


@needs_landlock
def test_trusted_code_cannot_read_the_signing_key_next_to_the_model(tmp_path):
    # The project layout users have: the model, and keys/ beside it. The Lambda bakes the key's bytes into the
    # graph as a string constant, so without read confinement they would be in saved_model.pb, signed and published.
    secret = tmp_path / "keys" / "signing_key.pem"
    secret.parent.mkdir()
    key_bytes = b"-----BEGIN PRIVATE KEY-----tfship-test-" + os.urandom(16).hex().encode()
    secret.write_bytes(key_bytes)
    tf = "__import__('tensorflow')"
    source = _lambda_model(tmp_path / "model.keras",
                           f"t + 0.0 * {tf}.cast({tf}.strings.length(open({str(secret)!r}).read()), 'float32')")
    repo = tmp_path / "models"
    result = run_cli("export", source, "--name", "steal", "--repo", repo, "--trust-code", *SM_ONLY,
                     env={"TFSHIP_TEST_ACT": "1"})
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert f"{secret}: access refused: the export worker is confined (Landlock) and may read only" in errors[0]
    assert _versions(repo, "steal") == []
    assert not any(p.name.startswith(".tfship-tmp-") for p in (repo / "steal").iterdir())
    assert not [p for p in repo.rglob("*") if p.is_file() and key_bytes in p.read_bytes()]


@needs_landlock
def test_trusted_code_cannot_read_the_exporters_environment(tmp_path):
    # The key's password is kept out of the worker's environment; the exporter's own, in /proc, must stay out of reach.
    password = "pw-" + os.urandom(8).hex()
    tf = "__import__('tensorflow')"
    environ = "'/proc/%d/environ' % __import__('os').getppid()"
    source = _lambda_model(tmp_path / "env.keras", f"t + 0.0 * {tf}.cast({tf}.strings.length(open({environ}, 'rb').read()), 'float32')")
    repo = tmp_path / "models"
    result = subprocess.run([sys.executable, "-m", "tfship", "-q", "export", str(source), "--name", "env", "--repo", str(repo),
                             "--trust-code", *SM_ONLY], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TFSHIP_TEST_ACT": "1", "TFSHIP_SIGN_KEY_PASSWORD": password})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(r"error: /proc/\d+/environ: access refused: the export worker is confined", lines[0]), result.stderr
    assert password not in result.stderr
    assert _versions(repo, "env") == []
    assert not [p for p in repo.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]


@needs_landlock
def test_custom_objects_module_cannot_read_the_users_ssh_key(tmp_path, monkeypatch):
    import keras

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("not for the export")
    monkeypatch.setenv("HOME", str(home))
    code = tmp_path / "code"
    code.mkdir()
    (code / "layers.py").write_text(f"KEY = open({str(home / '.ssh' / 'id_ed25519')!r}).read()\n")
    x = keras.Input((3,), name="x")
    keras.Model(x, keras.layers.Dense(2, name="d")(x)).save(tmp_path / "m.keras")
    repo = tmp_path / "models"
    result = run_cli("export", tmp_path / "m.keras", "--name", "ssh", "--repo", repo, "--custom-objects", code / "layers.py",
                     *SM_ONLY)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert f"{home / '.ssh' / 'id_ed25519'}: access refused: the export worker is confined (Landlock)" in errors[0]
    assert "cannot import the custom objects module" in errors[0]  # what failed, after what was refused
    assert _versions(repo, "ssh") == []


def test_the_worker_has_a_private_home_with_the_users_keras_configuration(tmp_path, monkeypatch):
    # The worker may not read the user's home: its HOME is private, and holds a copy of keras.json.
    keras_home = tmp_path / "keras_home"
    keras_home.mkdir()
    (keras_home / "keras.json").write_text(json.dumps({"epsilon": 0.25, "floatx": "float32", "backend": "tensorflow",
                                                       "image_data_format": "channels_last"}))
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    probe = "__import__('os').path.expanduser('~')"
    source = _lambda_model(tmp_path / "cfg.keras", f"t * __import__('keras').config.epsilon() * (1 + int({probe} == "
                                                   f"{str(Path.home())!r}))")
    repo = tmp_path / "models"
    result = run_cli("export", source, "--name", "cfg", "--repo", repo, "--trust-code", *SM_ONLY, env={"TFSHIP_TEST_ACT": "1"})
    assert result.exit_code == 0, result.stderr
    golden = np.load(repo / "cfg" / "1" / "golden.npz")
    np.testing.assert_allclose(golden["outputs/probe"], 0.25 * golden["inputs/x"], atol=1e-6)  # 0.5 had HOME been the user's
    assert listing(keras_home) == ["keras.json"]


def test_the_worker_reads_neither_the_folder_of_the_model_nor_the_checkout_root(tmp_path, monkeypatch):
    import tfship
    from tfship.exporter.worker import read_rules

    project = tmp_path / "project"
    (project / "keys").mkdir(parents=True)
    (project / "arch_mod_readrules.py").write_text("def build(): ...\n")
    monkeypatch.syspath_prepend(str(project))  # where the user's arch_mod_readrules is imported from
    monkeypatch.chdir(project)
    readable, listable = read_rules({"source": str(project / "m.weights.h5"), "architecture": "arch_mod_readrules:build",
                                     "samples": str(project / "s.npz")}, sign_key=project / "keys" / "signing_key.pem")
    project = project.resolve()
    # No rule opens the project (or a folder above it) whole: only the files named on the command line.
    assert [r for r in readable if project.is_relative_to(r)] == []
    assert {str(project / name) for name in ("m.weights.h5", "s.npz", "arch_mod_readrules.py")} <= set(readable)
    assert str(project) in listable  # the import system lists it to find arch_mod_readrules.py
    checkout = Path(tfship.__file__).resolve().parents[1]
    assert str(checkout / "exporter") in readable and str(checkout / "tfship") in readable
    assert [r for r in readable if checkout.is_relative_to(r)] == []


def test_only_regular_files_and_directories_are_published(tmp_path):
    from tfship.core.errors import ExportError
    from tfship.exporter.worker import check_staging

    staging = tmp_path / "staging"
    (staging / "variables").mkdir(parents=True)
    (staging / "saved_model.pb").write_bytes(b"x")
    check_staging(staging)
    (staging / "variables" / "hostfiles").symlink_to("/etc")
    with pytest.raises(ExportError, match=r"variables/hostfiles, which is not a regular file or directory"):
        check_staging(staging)
    (staging / "variables" / "hostfiles").unlink()
    os.mkfifo(staging / "pipe")
    with pytest.raises(ExportError, match=r"pipe, which is not a regular file"):
        check_staging(staging)


def test_errors_in_the_worker_arrive_as_one_line_with_their_exit_code(tmp_path):
    import keras

    repo = tmp_path / "models"
    (tmp_path / "bad.keras").write_bytes(b"PK\x03\x04 this is no model at all" * 10)
    bad = subprocess.run([sys.executable, "-m", "tfship", "-q", "export", str(tmp_path / "bad.keras"), "--name", "b",
                          "--repo", str(repo)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfship export: error:") and "bad.keras" in lines[0], bad.stderr
    assert _versions(repo, "b") == []

    # A UsageError raised in the worker is re-raised as a UsageError: exit 2, same message.
    model = keras.Sequential([keras.Input((2,), name="x"), keras.layers.Dense(1)])
    model.save_weights(tmp_path / "only.weights.h5")
    weights = run_cli("export", tmp_path / "only.weights.h5", "--name", "w", "--repo", repo, "--json")
    assert weights.exit_code == 2
    envelope = json.loads(weights.stdout)
    assert envelope["exit_code"] == 2 and "holds only weights" in envelope["errors"][0]
    assert "--architecture" in envelope["errors"][0]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)  # polling interval of a bounded wait on an observable state, not synchronisation by delay
    pytest.fail(f"timed out after {seconds} s waiting for {what}")


def test_killing_the_exporter_leaves_no_worker_and_no_version(tmp_path):
    # The Lambda announces itself in the worker's private TMPDIR, then hangs: the worker is mid-load.
    source = _lambda_model(tmp_path / "hang.keras", "(__import__('pathlib').Path(__import__('tempfile').gettempdir(), "
                                                    "'started').write_text('1'), __import__('time').sleep(600), t)[-1]")
    parent_tmp = tmp_path / "ptmp"
    parent_tmp.mkdir()
    repo = tmp_path / "models"
    env = {**os.environ, "TFSHIP_TEST_ACT": "1", "TMPDIR": str(parent_tmp)}
    log = tmp_path / "export.log"
    with log.open("wb") as output:
        exporter = subprocess.Popen([sys.executable, "-m", "tfship", "export", str(source), "--name", "hang", "--repo", str(repo),
                                     "--trust-code", *SM_ONLY], env=env, stdout=output, stderr=output)

    def started() -> bool:
        assert exporter.poll() is None, f"the export ended on its own: {log.read_text()}"
        return bool(list(parent_tmp.glob("tfship-export-*/tmp/started")))

    try:
        _wait_for(started, 180, "the worker to run the model's code")
        workers = _children(exporter.pid)
        assert len(workers) == 1
        os.kill(exporter.pid, signal.SIGKILL)
        exporter.wait(timeout=30)
        _wait_for(lambda: not _running(workers[0]), 30, f"worker {workers[0]} to end with its parent")
    finally:
        if exporter.poll() is None:
            exporter.kill()
            exporter.wait()
    assert _versions(repo, "hang") == []
