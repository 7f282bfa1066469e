"""The local engine's ports under hostile traffic: real servers on loopback, bounded loops.

Each attack is followed by a normal request that must still be answered.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from engine_helpers import official_stubs

HOST = "127.0.0.1"


# --- a small served model ----------------------------------------------------------------------------

def _save_models(repo: Path) -> None:
    import tensorflow as tf

    class Double(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * 2.0}

    class Text(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            return {"length": tf.strings.length(text)}

    for name, module in (("double", Double()), ("text", Text())):
        tf.saved_model.save(module, str(repo / name / "1"), signatures={"serving_default": module.serve})


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("attacks") / "models"
    _save_models(repo)
    return repo


def _start(repo: Path, limits: Any = None) -> Any:
    from tfship.serving.config import VersionPolicy
    from tfship.serving.local_engine import LocalEngine, ModelConfig

    configs = [ModelConfig(name, repo / name, VersionPolicy("all"), {}) for name in ("double", "text")]
    return LocalEngine(configs, grpc_port=0, rest_port=0, poll_seconds=0, rest_limits=limits).start()


@pytest.fixture(scope="module")
def engine(model_repo):
    from tfship.serving.local_engine.bounded_json import JsonLimits
    from tfship.serving.local_engine.rest import RestLimits

    limits = RestLimits(max_body_bytes=1 << 20, max_inflight_body_bytes=8 << 20, header_timeout=1.5, body_timeout=1.5,
                        json=JsonLimits(max_depth=64, max_values=100_000))
    served = _start(model_repo, limits)
    yield served
    served.stop(grace=0)


# --- a plain HTTP/1.1 client on a socket, so that the attacks can be written byte by byte ---------------

class Connection:
    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response on the connection: status, headers (lower-case names), body."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"connection closed before a response; got {self.buffer[:200]!r}")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not self._fill():
                raise ConnectionError("connection closed in the middle of a body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def closed_by_server(self) -> bool:
        """True when the server closes the connection (read until EOF within the socket timeout)."""
        try:
            while self._fill():
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return True

    def close(self) -> None:
        self.sock.close()


def _request(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None and not any(k.lower() in ("content-length", "transfer-encoding") for k in (headers or {})):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def _call(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    connection = Connection(port)
    try:
        connection.send(raw)
        return connection.response()
    finally:
        connection.close()


def _json_error(status_headers_body: tuple[int, dict[str, str], bytes], status: int) -> str:
    """The error message of a TF-Serving-style JSON error answer with ``status``; one line, no traceback."""
    got, headers, body = status_headers_body
    assert got == status, body[:300]
    assert headers["content-type"].startswith("application/json"), headers
    message = json.loads(body)["error"]
    assert "\n" not in message and "Traceback" not in message
    return message


def _predict(port: int, body: dict, model: str = "double") -> tuple[int, dict[str, str], bytes]:
    return _call(port, _request("POST", f"/v1/models/{model}:predict", json.dumps(body).encode()))


def assert_still_serving(port: int) -> None:
    status, _, body = _predict(port, {"instances": [[1.0, 2.0]]})
    assert status == 200 and json.loads(body) == {"predictions": [[2.0, 4.0]]}


# --- bodies ----------------------------------------------------------------------------------------------

def test_content_length_minus_one_is_a_json_400_and_closes(engine):
    connection = Connection(engine.rest_port)
    connection.send(_request("POST", "/v1/models/double:predict", b'{"instances": [[1]]}', {"Content-Length": "-1"}))
    message = _json_error(connection.response(), 400)
    assert "Content-Length" in message
    assert connection.closed_by_server()
    assert_still_serving(engine.rest_port)


def test_declared_body_over_the_limit_is_413_before_it_is_read(engine):
    connection = Connection(engine.rest_port)
    connection.send(_request("POST", "/v1/models/double:predict", None, {"Content-Length": str(10 << 30)}))
    message = _json_error(connection.response(), 413)
    assert "larger than the limit of 1048576 bytes" in message
    assert connection.closed_by_server()
    assert_still_serving(engine.rest_port)


def test_chunked_body_over_the_limit_is_413(engine):
    connection = Connection(engine.rest_port)
    connection.send(_request("POST", "/v1/models/double:predict", None, {"Transfer-Encoding": "chunked"}))
    chunk = b"[" + b"1," * 32767 + b"1]"
    try:
        for _ in range(40):  # 2.6 MB in all, over the 1 MiB limit; the server may stop reading first
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert "larger than the limit" in _json_error(connection.response(), 413)
    assert_still_serving(engine.rest_port)


def test_bodies_held_at_once_are_bounded_over_all_connections(engine):
    # Nine bodies of almost 1 MiB, each one byte short so the server holds them: over the 8 MiB budget.
    connections = [Connection(engine.rest_port) for _ in range(9)]
    try:
        for connection in connections:
            connection.send(_request("POST", "/v1/models/double:predict", None, {"Content-Length": "1000000"}) + b" " * 999_999)
        statuses = sorted(connection.response()[0] for connection in connections)
    finally:
        for connection in connections:
            connection.close()
    assert 503 in statuses and set(statuses) <= {408, 503}, statuses  # the others wait for their last byte, then 408
    assert_still_serving(engine.rest_port)


def test_gzip_bodies_are_limited_by_their_inflated_size(engine):
    import gzip

    small = gzip.compress(json.dumps({"instances": [[1.0, 2.0]]}).encode())
    status, _, answer = _call(engine.rest_port, _request("POST", "/v1/models/double:predict", small, {"Content-Encoding": "gzip",
                                                                                                      "Content-Length": str(len(small))}))
    assert status == 200 and json.loads(answer) == {"predictions": [[2.0, 4.0]]}
    bomb = gzip.compress(b" " * (100 << 20), compresslevel=9)  # about 100 KB that inflate to 100 MiB
    raw = _request("POST", "/v1/models/double:predict", bomb, {"Content-Encoding": "gzip", "Content-Length": str(len(bomb))})
    assert "larger than the limit" in _json_error(_call(engine.rest_port, raw), 413)
    assert_still_serving(engine.rest_port)


def test_chunked_body_is_read_whole_and_predicts(engine):
    body = json.dumps({"instances": [[0.5, 1.5, 2.5]] * 4}).encode()
    parts = [body[i:i + 7] for i in range(0, len(body), 7)]
    raw = _request("POST", "/v1/models/double:predict", None, {"Transfer-Encoding": "chunked"})
    raw += b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    status, _, answer = _call(engine.rest_port, raw)
    assert status == 200 and json.loads(answer) == {"predictions": [[1.0, 3.0, 5.0]] * 4}


def test_expect_100_continue_is_answered_before_the_body(engine):
    body = json.dumps({"instances": [[1.0, 2.0]]}).encode()
    connection = Connection(engine.rest_port)
    try:
        connection.send(_request("POST", "/v1/models/double:predict", None, {"Content-Length": str(len(body)), "Expect": "100-continue"}))
        while b"\r\n\r\n" not in connection.buffer:
            assert connection._fill()
        assert connection.buffer.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        connection.buffer = connection.buffer[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
        connection.send(body)
        status, _, answer = connection.response()
        assert status == 200 and json.loads(answer) == {"predictions": [[2.0, 4.0]]}
    finally:
        connection.close()


def test_body_shorter_than_its_content_length_times_out_with_408(engine):
    connection = Connection(engine.rest_port)
    connection.send(_request("POST", "/v1/models/double:predict", None, {"Content-Length": "100"}) + b'{"instances"')
    message = _json_error(connection.response(), 408)
    assert "did not arrive within 1.5 s" in message
    assert connection.closed_by_server()
    assert_still_serving(engine.rest_port)


def test_bytes_after_a_lying_content_length_are_not_run_as_a_request(engine):
    # Content-Length says 2 bytes; what follows is not a request and must get a 400, not a prediction.
    connection = Connection(engine.rest_port)
    connection.send(_request("POST", "/v1/models/double:predict", None, {"Content-Length": "2"}) + b"{}")
    assert "Missing 'inputs' or 'instances' key" in _json_error(connection.response(), 400)
    connection.send(b'"instances": [[1.0]]}\r\n\r\n')  # the rest of a body that the length did not announce
    assert "Malformed HTTP request: Invalid method" in _json_error(connection.response(), 400)
    assert connection.closed_by_server()


# --- keep-alive -------------------------------------------------------------------------------------------

def test_unread_and_rejected_bodies_are_never_parsed_as_the_next_request(engine):
    smuggled = _request("GET", "/monitoring/prometheus/metrics")
    connection = Connection(engine.rest_port)
    # 1. a GET whose body the server never reads, 2. a POST whose body (the smuggled request) is refused,
    # 3. a normal request: exactly three answers, none of them the smuggled metrics page.
    connection.send(_request("GET", "/v1/models/double", smuggled)
                    + _request("POST", "/v1/models/nope:predict", smuggled)
                    + _request("GET", "/v1/models/double/versions/1"))
    first, second, third = connection.response(), connection.response(), connection.response()
    assert first[0] == 200 and json.loads(first[2])["model_version_status"][0]["state"] == "AVAILABLE"
    assert _json_error(second, 400).startswith("JSON Parse error: ")
    assert third[0] == 200 and json.loads(third[2])["model_version_status"][0]["version"] == "1"
    connection.sock.settimeout(1.0)
    assert not connection.closed_by_server() and connection.buffer == b""  # nothing more was answered
    connection.close()


def test_a_refused_oversized_body_closes_the_connection_instead_of_reading_on(engine):
    smuggled = _request("GET", "/monitoring/prometheus/metrics")
    connection = Connection(engine.rest_port)
    connection.send(_request("POST", "/v1/models/double:predict", None, {"Content-Length": str(2 << 20)}) + smuggled)
    _json_error(connection.response(), 413)
    assert connection.closed_by_server()
    assert b"tensorflow:serving" not in connection.buffer


# --- URL and headers ------------------------------------------------------------------------------------

def test_long_url_is_414_in_tf_serving_json(engine):
    message = _json_error(_call(engine.rest_port, _request("GET", "/v1/models/" + "a" * 20_000)), 414)
    assert "8192 bytes" in message
    assert_still_serving(engine.rest_port)


def test_large_or_many_headers_are_431_in_tf_serving_json(engine):
    assert "a header line" in _json_error(_call(engine.rest_port, _request("GET", "/v1/models/double", None, {"X-Big": "b" * 20_000})), 431)
    many = {f"X-H{i}": "v" for i in range(300)}
    assert "more than 100 headers" in _json_error(_call(engine.rest_port, _request("GET", "/v1/models/double", None, many)), 431)
    assert_still_serving(engine.rest_port)


def test_silent_and_slow_header_connections_are_closed(engine):
    silent = Connection(engine.rest_port)
    slow = Connection(engine.rest_port)
    slow.send(b"GET /v1/models/double HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    began = time.monotonic()
    assert silent.closed_by_server() and slow.closed_by_server()  # the header timeout is 1.5 s
    assert time.monotonic() - began < 8
    assert_still_serving(engine.rest_port)


# --- JSON --------------------------------------------------------------------------------------------------

def test_deep_nesting_is_400_not_a_recursion_error(engine):
    body = b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    message = _json_error(_call(engine.rest_port, _request("POST", "/v1/models/double:predict", body)), 400)
    assert message == "JSON Parse error: the document nests 100001 levels deep; the limit is 64"
    # Brackets inside strings are text, not nesting.
    status, _, answer = _predict(engine.rest_port, {"instances": ["[" * 5000]}, model="text")
    assert status == 200 and json.loads(answer) == {"predictions": [5000]}
    assert_still_serving(engine.rest_port)


def test_too_many_values_is_400(engine):
    body = b'{"instances": [' + b",".join([b"[]"] * 150_000) + b"]}"
    assert "values; the limit is 100000" in _json_error(_call(engine.rest_port, _request("POST", "/v1/models/double:predict", body)), 400)


def test_invalid_json_is_400(engine):
    message = _json_error(_call(engine.rest_port, _request("POST", "/v1/models/double:predict", b'{"instances": [1, }')), 400)
    assert message.startswith("JSON Parse error: ")


# The messages TF Serving gives for these (tensorflow_serving/util/json_tensor.cc):
#   Base64FormatError:    "JSON Value: " <value> " not formatted correctly for base64 data"
#   FormatSignatureError: "JSON Value: " <value> " not formatted correctly. 'signature_name' key must be a string value."
# and tensorflow_serving/model_servers/http_rest_api_handler.cc:
#   "Failed to convert version: " <text> " to numeric."
CLIENT_ERRORS = {
    "b64 not a string": ("/v1/models/text:predict", {"inputs": {"text": [{"b64": 5}]}},
                         "JSON Value: {\"b64\": 5} not formatted correctly for base64 data"),
    "b64 with other keys": ("/v1/models/text:predict", {"inputs": {"text": [{"b64": "YQ==", "x": 1}]}},
                            "not formatted correctly for base64 data"),
    "b64 not a string, row form": ("/v1/models/text:predict", {"instances": [{"b64": [1]}]},
                                   "not formatted correctly for base64 data"),
    "b64 undecodable": ("/v1/models/text:predict", {"instances": [{"b64": "Y"}]}, "Unable to base64 decode"),
    "signature_name a number": ("/v1/models/double:predict", {"signature_name": 7, "instances": [[1.0]]},
                                "JSON Value: 7 not formatted correctly. 'signature_name' key must be a string value."),
    "signature_name a list": ("/v1/models/double:predict", {"signature_name": ["a"], "instances": [[1.0]]},
                              "'signature_name' key must be a string value."),
    "5000-digit version": ("/v1/models/double/versions/" + "9" * 5000 + ":predict", {"instances": [[1.0]]},
                           "Failed to convert version: " + "9" * 40 + "... to numeric."),
    "version over int64": ("/v1/models/double/versions/9223372036854775808:predict", {"instances": [[1.0]]},
                           "Failed to convert version: 9223372036854775808 to numeric."),
    "ragged rows": ("/v1/models/double:predict", {"instances": [[1.0], [1.0, 2.0]]}, "ragged"),
    "integer beyond int64": ("/v1/models/double:predict", {"inputs": [[10 ** 30]]}, "Expects arg[0] to be float"),
    "strings for floats": ("/v1/models/double:predict", {"inputs": [["a"]]}, "Expects arg[0] to be float"),
    "body not an object": ("/v1/models/double:predict", [1, 2], "request body must be an object"),
}


@pytest.mark.parametrize("case", sorted(CLIENT_ERRORS))
def test_client_errors_are_400_with_one_line(case, engine):
    path, body, expected = CLIENT_ERRORS[case]
    message = _json_error(_call(engine.rest_port, _request("POST", path, json.dumps(body).encode())), 400)
    assert expected in message


def test_malformed_path_under_v1_is_400_and_elsewhere_404(engine):
    # tensorflow_serving/model_servers/http_rest_api_handler.cc:
    #   Status status = errors::InvalidArgument("Malformed request: ", http_method, " ", request_path);
    assert _json_error(_call(engine.rest_port, _request("PUT", "/v1/models/double:predict", b"{}")), 400) == \
        "Malformed request: PUT /v1/models/double:predict"
    assert _json_error(_call(engine.rest_port, _request("GET", "/elsewhere")), 404) == "Malformed request: GET /elsewhere"


# --- metrics ------------------------------------------------------------------------------------------------

def _metrics(port: int) -> str:
    status, _, body = _call(port, _request("GET", "/monitoring/prometheus/metrics"))
    assert status == 200
    return body.decode()


def test_unknown_model_names_do_not_grow_the_metrics(engine):
    from tensorflow_serving.apis import predict_pb2

    _predict(engine.rest_port, {"instances": [[1.0]]})
    for i in range(300):
        assert _predict(engine.rest_port, {"instances": [[1.0]]}, model=f"{i:04d}" + "n" * 2000)[0] == 404
    prediction, _, channel = official_stubs(engine.grpc_port)
    try:
        for i in range(5):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = f"{i}" + "m" * (1 << 20)
            with pytest.raises(grpc.RpcError) as info:
                prediction.Predict(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert info.value.details().startswith("Servable not found for request: Latest(") and len(info.value.details()) < 3000
    finally:
        channel.close()
    text = _metrics(engine.rest_port)
    assert len(text) < 50_000, len(text)
    assert "nnnn" not in text and "mmmm" not in text
    assert ':tensorflow:serving:request_count{model_name="<unknown>",status="NOT_FOUND"}' in text
    assert ':tensorflow:serving:request_count{model_name="double",status="OK"}' in text


# --- many connections -------------------------------------------------------------------------------------

def test_200_concurrent_connections_are_all_answered(engine):
    connections = [Connection(engine.rest_port, timeout=30) for _ in range(200)]
    try:
        body = json.dumps({"instances": [[1.0, 2.0]]}).encode()
        for connection in connections:
            connection.send(_request("POST", "/v1/models/double:predict", body))
        answers = [connection.response() for connection in connections]
    finally:
        for connection in connections:
            connection.close()
    assert [status for status, _, _ in answers] == [200] * 200
    assert all(json.loads(body) == {"predictions": [[2.0, 4.0]]} for _, _, body in answers)


def test_200_simultaneous_connects_are_not_reset(engine):
    """A burst of connects before the server accepts any: the listen backlog holds them all."""
    errors: list[BaseException] = []
    answers: list[int] = []
    start = threading.Barrier(200)
    lock = threading.Lock()

    def client() -> None:
        try:
            start.wait(timeout=30)
            status, _, _ = _call(engine.rest_port, _request("GET", "/v1/models/double"))
            with lock:
                answers.append(status)
        except (OSError, threading.BrokenBarrierError) as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and answers == [200] * 200


# --- gRPC: tensors whose dims do not make sense ------------------------------------------------------------

def _tensor_request(dims: list[int], *, content: bytes = b"", floats: tuple[float, ...] = ()) -> Any:
    from tensorflow.core.framework import tensor_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "double"
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=content, float_val=list(floats))
    for size in dims:
        tensor.tensor_shape.dim.add(size=size)
    request.inputs["x"].CopyFrom(tensor)
    return request


GRPC_DIMS: dict[str, tuple[list[int], dict[str, Any], str]] = {
    "product wraps int64 to 0": ([1 << 32, 1 << 32], {}, "more than TensorFlow's limit of 2**63-1"),
    "product overflows int64": ([1 << 62, 4], {"floats": (1.0,)}, "more than TensorFlow's limit of 2**63-1"),
    "largest dims": ([(1 << 63) - 1, (1 << 63) - 1], {}, "more than TensorFlow's limit of 2**63-1"),
    "negative dim": ([-5, 3], {"floats": (1.0,)}, "negative (unknown) dimension"),
    "huge fill": ([1 << 40, 2], {"floats": (1.0,)}, "send the values (tensor_content)"),
    "content size mismatch": ([2, 3], {"content": b"\0" * 12}, "tensor_content holds 12 bytes but shape [2, 3] of float32 needs 24"),
    "too many values": ([1, 2], {"floats": (1.0, 2.0, 3.0)}, "float_val holds 3 values but shape [1, 2] needs 2"),
}


@pytest.mark.parametrize("case", sorted(GRPC_DIMS))
def test_grpc_bad_dims_are_invalid_argument(case, engine):
    dims, fields, expected = GRPC_DIMS[case]
    prediction, _, channel = official_stubs(engine.grpc_port)
    try:
        with pytest.raises(grpc.RpcError) as info:
            prediction.Predict(_tensor_request(dims, **fields), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert expected in info.value.details() and "input 'x'" in info.value.details()
        assert "ValueError" not in info.value.details()
        answer = prediction.Predict(_tensor_request([1, 2], floats=(1.0, 2.0)), timeout=30)
        assert list(answer.outputs["y"].float_val) == [2.0, 4.0] or answer.outputs["y"].tensor_content
    finally:
        channel.close()


# --- logs ------------------------------------------------------------------------------------------------------

def test_repeated_errors_are_logged_once_per_interval_with_a_count(caplog):
    from tfship.serving.local_engine.repeated_errors import RepeatedErrors

    now = [100.0]
    logger = logging.getLogger("tfship.test.repeated")
    errors = RepeatedErrors(logger, interval=60, clock=lambda: now[0])
    try:
        raise KeyError("boom")
    except KeyError as exc:
        failure = exc
    with caplog.at_level(logging.ERROR, logger="tfship.test.repeated"):
        written = [errors.error("predict:KeyError", "REST POST failed: KeyError", failure) for _ in range(1000)]
        now[0] += 61
        errors.error("predict:KeyError", "REST POST failed: KeyError", failure)
    assert written.count(True) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "REST POST failed: KeyError", "REST POST failed: KeyError (repeated 999 more times since it was last logged)"]
    assert all(r.exc_info is None for r in caplog.records)  # tracebacks only at DEBUG
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="tfship.test.repeated"):
        now[0] += 61
        errors.error("predict:KeyError", "REST POST failed: KeyError", failure)
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.DEBUG] and caplog.records[1].exc_info


# --- memory of the server process --------------------------------------------------------------------------

SERVER = """
import json, sys
from pathlib import Path
from tfship.serving.config import VersionPolicy
from tfship.serving.local_engine import LocalEngine, ModelConfig
repo = Path(sys.argv[1])
configs = [ModelConfig(n, repo / n, VersionPolicy("all"), {}) for n in ("double", "text")]
engine = LocalEngine(configs, grpc_port=0, rest_port=0, poll_seconds=0).start()
print(json.dumps({"grpc": engine.grpc_port, "rest": engine.rest_port}), flush=True)
sys.stdin.read()
engine.stop(grace=0)
"""


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} missing")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak memory")
def test_large_json_bodies_cost_a_bounded_multiple_of_their_size(model_repo):
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(model_repo)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdin is not None and process.stdout is not None
    try:
        ports = json.loads(process.stdout.readline())
        assert_still_serving(ports["rest"])

        def peak_growth(body: bytes) -> tuple[int, float]:
            Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
            before = _kib(process.pid, "VmRSS")
            status, _, _ = _call(ports["rest"], _request("POST", "/v1/models/double:predict", body))
            return status, (_kib(process.pid, "VmHWM") - before) / len(body)

        rows = np.random.default_rng(0).random((6000, 256)).round(6)
        floats = json.dumps({"instances": rows.tolist()}).encode()  # ~14 MB, 1.5 M values
        status, ratio = peak_growth(floats)
        assert status == 200 and ratio < 12, ratio
        empties = b'{"instances": [' + b",".join([b"[]"] * 5_000_000) + b"]}"  # 15 MB of the costliest values
        status, ratio = peak_growth(empties)
        assert status == 400 and ratio < 4, ratio
        assert_still_serving(ports["rest"])
    finally:
        process.stdin.close()
        process.wait(60)


# --- the reliability runs of bench/reliability.py, bounded ---------------------------------------------------

def _reliability():
    bench = Path(__file__).resolve().parents[1] / "bench"
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))
    import reliability

    return reliability


@pytest.mark.slow
def test_reliability_malformed_requests_get_proper_answers(signed_repo, tmp_path):
    from conftest import copy_repo
    from engine_helpers import start_engine

    reliability = _reliability()
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    served = start_engine(repo, models=["digits"])
    channel = grpc.insecure_channel(f"{HOST}:{served.grpc_port}")
    try:
        call = channel.unary_unary(reliability.PREDICT, request_serializer=None, response_deserializer=None)
        grpc_run = reliability.run_malformed_grpc(call, 2000)
        assert grpc_run.improper == [], grpc_run.improper[:5]
        rest_run = reliability.run_malformed_rest(served.rest_port, 500)
        assert rest_run.improper == [], rest_run.improper[:5]
        assert sum(grpc_run.answers.values()) == 2000 and sum(rest_run.answers.values()) == 500
        assert grpc_run.seconds + rest_run.seconds < 300
        assert call(reliability.good_request(), timeout=30)
        status, body = reliability.http_status(served.rest_port, _request(
            "POST", "/v1/models/digits:predict", json.dumps({"instances": np.zeros((1, 8, 8, 1)).tolist()}).encode()))
        assert status == 200 and len(json.loads(body)["predictions"][0]) == 10
    finally:
        channel.close()
        served.stop(grace=0)


@pytest.mark.slow
def test_reliability_hot_swap_under_load_fails_no_request(signed_repo, tmp_path):
    import shutil

    from engine_helpers import start_engine

    reliability = _reliability()
    repo = tmp_path / "models"
    (repo / "digits").mkdir(parents=True)
    shutil.copytree(signed_repo["repo"] / "digits" / "1", repo / "digits" / "1")
    served = start_engine(repo, models=["digits"])
    channel = grpc.insecure_channel(f"{HOST}:{served.grpc_port}")
    try:
        run = reliability.run_transitions(channel, repo, signed_repo["repo"], requests=2000, concurrency=8)
        assert run.failures == [], run.failures[:5]
        assert run.served[2] > 0 and sum(run.served.values()) == 2000
        assert run.states.get(3) == "END" and run.states.get(2) == "AVAILABLE"
        assert run.seconds < 300
    finally:
        channel.close()
        served.stop(grace=0)
