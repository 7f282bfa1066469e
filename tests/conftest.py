from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
# TensorFlow's standard kernels, as tfship model-server runs them (serving.model_server.use_standard_kernels):
# the in-process engines of the tests then answer bad shapes as the server does.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = ROOT.parent / "shared" / "models"


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict | None = None) -> CliResult:
    """Call the tfship command in-process, like a user in a shell."""
    from tfship.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def run_subprocess(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tfship", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=kwargs.pop("cwd", None), **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shared_model(*parts: str) -> Path:
    path = SHARED_MODELS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared real-world models are not next to this checkout)")
    return path


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


# --- models built for the tests -------------------------------------------------------------------

@pytest.fixture(scope="session")
def digits_data():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    return images, digits.target


@pytest.fixture(scope="session")
def digits_model(digits_data, tmp_path_factory):
    """A small CNN trained for a few epochs on the bundled digits: real, classifier-like outputs."""
    import keras

    keras.utils.set_random_seed(3)
    images, labels = digits_data
    image = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(image)
    x = keras.layers.Flatten()(x)
    probabilities = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    model = keras.Model(image, probabilities)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images[:1400], labels[:1400], epochs=8, batch_size=64, verbose=0)
    folder = tmp_path_factory.mktemp("digits")
    model.save(folder / "digits.keras")
    model.save(folder / "digits.h5")
    np.savez(folder / "samples.npz", image=images[1400:1528])
    return {"model": model, "keras": folder / "digits.keras", "h5": folder / "digits.h5",
            "samples": folder / "samples.npz", "images": images[1400:1528]}


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    from tfship.core.signing import generate_keys

    folder = tmp_path_factory.mktemp("keys")
    private, public = generate_keys(folder / "a")
    other_private, other_public = generate_keys(folder / "b")
    return {"private": private, "public": public, "other_private": other_private, "other_public": other_public}


@pytest.fixture(scope="session")
def signed_repo(digits_model, keys, tmp_path_factory):
    """A repository with the digits model exported (all formats) and signed: versions 1 and 2."""
    from tfship.exporter import ExportOptions, export

    repo = tmp_path_factory.mktemp("repo") / "models"
    first = export(ExportOptions(source=digits_model["h5"], name="digits", repo=repo, samples=digits_model["samples"],
                                 sign_key=keys["private"], tflite_quantize=("float16", "int8")))
    second = export(ExportOptions(source=digits_model["keras"], name="digits", repo=repo, formats=("savedmodel",),
                                  samples=digits_model["samples"], sign_key=keys["private"]))
    return {"repo": repo, "v1": first, "v2": second}


def copy_repo(repo: Path, destination: Path) -> Path:
    shutil.copytree(repo, destination, symlinks=True)
    return destination


def pytest_collection_modifyitems(config, items):
    docker_items = [item for item in items if item.get_closest_marker("docker")]
    if not docker_items:
        return
    from tfship.serving.docker_engine import engine_problem

    problem = engine_problem()
    if problem:
        skip = pytest.mark.skip(reason=f"needs a reachable Docker engine; none answered here ({problem})")
        for item in docker_items:
            item.add_marker(skip)
