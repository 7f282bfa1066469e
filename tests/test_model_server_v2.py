"""The Open Inference Protocol (KServe v2) beside TF Serving's API, checked with an independent client:
Triton's ``tritonclient.grpc`` (fetched from PyPI into the test cache, run in its own process, so its
generated protobuf modules never meet ours) and plain HTTP for the REST side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port

from tfship.serving.model_server import ServerFlags, build_engine

CACHE = Path(os.environ.get("TFSHIP_TEST_CACHE", Path.home() / ".cache" / "tfship-test")) / "tritonclient"


@pytest.fixture(scope="session")
def tritonclient_path() -> Path:
    """tritonclient (and python-rapidjson, which its modules import) without their pins: tritonclient[grpc] pins
    protobuf<7, tfship runs protobuf 7; its generated modules work with it, and live only in the client process."""
    marker = CACHE / ".installed-2"
    if not marker.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target", str(CACHE),
                                 "tritonclient>=2.40", "python-rapidjson>=1.10"], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            pytest.skip(f"tritonclient could not be installed from the package index: {result.stderr.strip()[-300:]}")
        marker.write_text("ok\n")
    return CACHE


def _save(path: Path) -> None:
    import tensorflow as tf

    class Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"), tf.TensorSpec([None], tf.string, name="tag")])
        def serve(self, x, tag):
            return {"y": tf.reduce_sum(x, axis=1) * 2.0, "tag_length": tf.strings.length(tag)}

    module = Model()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2")
    _save(root / "summer" / "4")
    config = root / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "summer" base_path: "{root / "summer"}" model_platform: "tensorflow" }} }}\n')
    server = build_engine(ServerFlags(port=free_port(), rest_api_port=free_port(), model_config_file=config, tfship_host="127.0.0.1",
                                      file_system_poll_wait_seconds=0, max_num_load_retries=0).check()).start()
    yield server
    server.stop(grace=1)


def test_tritons_grpc_client_reads_health_metadata_and_infers(engine, tritonclient_path):
    script = textwrap.dedent(f"""
        import json, numpy as np
        import tritonclient.grpc as triton
        client = triton.InferenceServerClient("127.0.0.1:{engine.grpc_port}")
        out = {{"live": client.is_server_live(), "ready": client.is_server_ready(),
               "model_ready": client.is_model_ready("summer"), "missing_ready": client.is_model_ready("nope")}}
        meta = client.get_model_metadata("summer", as_json=True)
        out["meta"] = meta
        x = triton.InferInput("x", [2, 3], "FP32"); x.set_data_from_numpy(np.array([[1, 2, 3], [4, 5, 6]], np.float32))
        tag = triton.InferInput("tag", [2], "BYTES"); tag.set_data_from_numpy(np.array([b"ab", b"hello"], dtype=object))
        result = client.infer("summer", [x, tag], model_version="4", outputs=[triton.InferRequestedOutput("y"),
                              triton.InferRequestedOutput("tag_length")])
        out["y"] = result.as_numpy("y").tolist(); out["tag_length"] = result.as_numpy("tag_length").tolist()
        out["version"] = result.get_response().model_version
        # A request above the engine's zero-copy size: its raw contents are read from the request's bytes.
        big = np.random.default_rng(0).random((8000, 3), dtype=np.float32)
        x = triton.InferInput("x", list(big.shape), "FP32"); x.set_data_from_numpy(big)
        tag = triton.InferInput("tag", [1], "BYTES"); tag.set_data_from_numpy(np.array([b"abc"], dtype=object))
        result = client.infer("summer", [x, tag], model_version="4")
        out["big_error"] = float(np.abs(result.as_numpy("y") - big.sum(axis=1) * 2).max())
        out["big_tag_length"] = result.as_numpy("tag_length").tolist()
        try:
            client.infer("summer", [x], model_version="4")
        except Exception as exc:
            out["missing_input"] = str(exc)
        print(json.dumps(out))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(tritonclient_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert (out["live"], out["ready"], out["model_ready"], out["missing_ready"]) == (True, True, True, False)
    assert out["meta"]["name"] == "summer" and out["meta"]["versions"] == ["4"]
    assert {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in out["meta"]["inputs"]} == \
        {"x": ("FP32", [-1, 3]), "tag": ("BYTES", [-1])}
    assert out["y"] == [12.0, 30.0] and out["tag_length"] == [2, 5] and out["version"] == "4"
    assert "input size does not match signature" in out["missing_input"]
    assert out["big_error"] < 1e-4 and out["big_tag_length"] == [3]


def _http(url: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_rest_v2_health_metadata_and_infer(engine):
    base = f"http://127.0.0.1:{engine.rest_port}/v2"
    assert _http(f"{base}/health/live") == (200, {"live": True})
    assert _http(f"{base}/health/ready") == (200, {"ready": True})
    assert _http(f"{base}/models/summer/ready") == (200, {"name": "summer", "ready": True})
    assert _http(f"{base}/models/nope/ready")[0] == 400
    status, meta = _http(f"{base}/models/summer/versions/4")
    assert status == 200 and meta["platform"] == "tensorflow_savedmodel"
    assert meta["outputs"] == [{"name": "tag_length", "datatype": "INT32", "shape": [-1]}, {"name": "y", "datatype": "FP32", "shape": [-1]}]
    status, body = _http(f"{base}/models/summer/infer", {
        "id": "r1", "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.5, 2, 3]},
                               {"name": "tag", "shape": [1], "datatype": "BYTES", "data": ["abc"]}],
        "outputs": [{"name": "y"}]})
    assert status == 200
    assert body == {"model_name": "summer", "model_version": "4", "id": "r1",
                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [13.0]}]}
    status, body = _http(f"{base}/models/summer/infer", {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2]},
                                                                   {"name": "tag", "shape": [1], "datatype": "BYTES", "data": ["a"]}]})
    assert status == 400 and body["error"] == "input 'x': 2 values for shape [2, 3] (6 expected)"
    status, body = _http(f"{base}/models/nope/infer", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]})
    assert status == 404 and body["error"] == "Servable not found for request: Latest(nope)"
    np.testing.assert_equal(engine.core.manager.status("summer")[0].version, 4)
