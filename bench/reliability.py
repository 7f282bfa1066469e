"""Reliability runs of the local engine (a real server process on loopback).

    .venv/bin/python bench/reliability.py [--malformed 10000] [--requests 20000] [--concurrency 32]

1. --malformed requests: random dtypes, wrong shapes, missing and extra inputs, huge dimensions, empty
   tensors, unknown models and versions, garbage bytes. Every answer must be a proper gRPC status (no
   dropped connection, no UNKNOWN). Then a fifth as many hostile REST requests (bad lengths, bad JSON,
   deep nesting, bad b64, huge versions and headers): every answer a 4xx with a one-line JSON error.
   The server must still answer a good request afterwards.
2. --requests good requests at --concurrency while a new version is published and a broken one (its
   saved_model.pb damaged) is dropped in: zero failed requests; the new version takes over; the broken
   one ends in END.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from _common import free_port  # noqa: E402  (bench/ is on sys.path when run as a script)

from tfship.core import protos  # noqa: E402
from tfship.core.codec import to_tensor_proto  # noqa: E402

PREDICT = "/tensorflow.serving.PredictionService/Predict"
ACCEPTABLE = {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED", "UNIMPLEMENTED"}


def malformed(rng: np.random.Generator) -> tuple[str, bytes]:
    kind = rng.choice(["dtype", "shape", "missing", "extra", "huge", "empty", "garbage", "model", "version", "content", "negative"])
    request = protos.PredictRequest()
    request.model_spec.name = "digits"
    good = rng.random((2, 8, 8, 1), dtype=np.float32)
    if kind == "dtype":
        dtype = [np.int8, np.int32, np.int64, np.float64, np.float16, np.uint8, np.bool_, np.complex64][int(rng.integers(8))]
        to_tensor_proto(good.astype(dtype), request.inputs["image"])
    elif kind == "shape":
        dims = rng.integers(0, 12, size=rng.integers(0, 6))
        to_tensor_proto(rng.random(tuple(int(d) for d in dims), dtype=np.float32), request.inputs["image"])
    elif kind == "missing":
        pass
    elif kind == "extra":
        to_tensor_proto(good, request.inputs["image"])
        to_tensor_proto(good, request.inputs[f"x{rng.integers(100)}"])
    elif kind == "huge":
        tensor = request.inputs["image"]
        tensor.dtype = 1
        for size in (int(rng.integers(1 << 30, 1 << 40)), 8, 8, 1):
            tensor.tensor_shape.dim.add(size=size)
        tensor.float_val.append(1.0)
    elif kind == "empty":
        to_tensor_proto(np.zeros((0, 8, 8, 1), np.float32), request.inputs["image"])
    elif kind == "model":
        request.model_spec.name = f"nope{rng.integers(10)}"
        to_tensor_proto(good, request.inputs["image"])
    elif kind == "version":
        request.model_spec.version.value = int(rng.integers(2, 1 << 40))
        to_tensor_proto(good, request.inputs["image"])
    elif kind == "content":
        to_tensor_proto(good, request.inputs["image"])
        request.inputs["image"].tensor_content = bytes(rng.integers(0, 255, size=int(rng.integers(0, 100)), dtype=np.uint8))
    elif kind == "negative":
        tensor = request.inputs["image"]
        tensor.dtype = 1
        for size in (-3, 8, 8, 1):
            tensor.tensor_shape.dim.add(size=size)
    else:
        return kind, bytes(rng.integers(0, 255, size=int(rng.integers(1, 300)), dtype=np.uint8))
    return kind, request.SerializeToString()


def good_request(version: int | None = None) -> bytes:
    request = protos.PredictRequest()
    request.model_spec.name = "digits"
    if version:
        request.model_spec.version.value = version
    to_tensor_proto(np.random.default_rng(1).random((1, 8, 8, 1), dtype=np.float32), request.inputs["image"])
    return request.SerializeToString()


def malformed_http(rng: np.random.Generator) -> tuple[str, bytes]:
    """A hostile REST request (one connection each): bad framing, bad JSON, bad values, bad paths."""
    kind = str(rng.choice(["length", "json", "deep", "b64", "signature", "version", "values", "path", "header", "garbage"]))
    body = b'{"instances": [[[[0.5]]]]}'
    path = "/v1/models/digits:predict"
    headers = ""
    if kind == "length":
        headers = f"Content-Length: {['-1', '1e3', '99999999999999999999', ' 5', '0x10'][int(rng.integers(5))]}\r\n"
    elif kind == "json":
        body = bytes(rng.choice(list(b'{}[]",:0123456789.eE-+ntrufalse\\'), size=int(rng.integers(1, 200))).astype(np.uint8))
    elif kind == "deep":
        depth = int(rng.integers(65, 200_000))
        body = b'{"instances": ' + b"[" * depth + b"]" * int(rng.integers(0, depth + 1)) + b"}"
    elif kind == "b64":
        value = [5, None, "!!", "Y", [1], {"b64": "x"}][int(rng.integers(6))]
        body = json.dumps({"inputs": {"image": [{"b64": value}]}}).encode()
    elif kind == "signature":
        body = json.dumps({"signature_name": [1, 2], "instances": [[[[0.5]]]]}).encode()
    elif kind == "version":
        path = "/v1/models/digits/versions/" + "9" * int(rng.integers(19, 6000)) + ":predict"
    elif kind == "values":
        values = [[[1], [1, 2]], [["a"]], [10 ** 30], [None], [{"x": 1}], []][int(rng.integers(6))]
        body = json.dumps({"instances": values}).encode()
    elif kind == "path":
        path = ["/v1/models/", "/v1/models/digits/versions/x:predict", "/v1/models/digits:explode", "/v2/x",
                "/v1/models/" + "n" * 3000 + ":predict"][int(rng.integers(5))]
    elif kind == "header":
        headers = "X-Big: " + "h" * int(rng.integers(9000, 40_000)) + "\r\n"
    else:
        return kind, bytes(rng.integers(0, 255, size=int(rng.integers(1, 300)), dtype=np.uint8))
    head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\n{headers}"
    if "Content-Length" not in headers:
        head += f"Content-Length: {len(body)}\r\n"
    return kind, head.encode("latin-1") + b"\r\n" + body


def http_status(port: int, raw: bytes, timeout: float = 30) -> tuple[int, bytes]:
    """Send one raw request; the answer's status and body (0 when the server only closed the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return 0, data
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(next((line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), b"0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(head.split()[1]), body


@dataclass
class MalformedRun:
    answers: collections.Counter = field(default_factory=collections.Counter)  # (kind, answer) -> count
    improper: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, answer, details)
    seconds: float = 0.0


def run_malformed_grpc(call: Callable[..., Any], count: int, seed: int = 7) -> MalformedRun:
    """``count`` malformed Predict requests; every answer must be a proper status (no UNKNOWN, no drop)."""
    rng = np.random.default_rng(seed)
    run = MalformedRun()
    began = time.perf_counter()
    for _ in range(count):
        kind, payload = malformed(rng)
        try:
            call(payload, timeout=30)
            run.answers[(kind, "OK")] += 1
        except grpc.RpcError as exc:
            name = exc.code().name
            run.answers[(kind, name)] += 1
            if name not in ACCEPTABLE:
                run.improper.append((kind, name, exc.details() or ""))
    run.seconds = time.perf_counter() - began
    return run


def run_malformed_rest(port: int, count: int, seed: int = 11) -> MalformedRun:
    """``count`` hostile REST requests; every answer must be a 4xx with a JSON ``error`` of one line."""
    rng = np.random.default_rng(seed)
    run = MalformedRun()
    began = time.perf_counter()
    for _ in range(count):
        kind, raw = malformed_http(rng)
        try:
            status, body = http_status(port, raw)
        except OSError as exc:
            run.answers[(kind, type(exc).__name__)] += 1
            run.improper.append((kind, type(exc).__name__, str(exc)))
            continue
        run.answers[(kind, str(status))] += 1
        try:
            message = json.loads(body)["error"]
            proper = 400 <= status < 500 and "\n" not in message and "Traceback" not in message
        except (ValueError, KeyError, TypeError):
            message, proper = body[:200].decode("latin-1"), False
        if not proper:
            run.improper.append((kind, str(status), message[:200]))
    run.seconds = time.perf_counter() - began
    return run


@dataclass
class TransitionRun:
    failures: list[str]
    served: collections.Counter  # version -> answered requests
    states: dict[int, str]
    seconds: float


def run_transitions(channel: grpc.Channel, repo: Path, built: Path, requests: int, concurrency: int,
                    status_timeout: float = 30) -> TransitionRun:
    """Good requests at ``concurrency`` while version 2 is published and a broken version 3 is dropped in.

    ``repo`` serves ``digits`` version 1; ``built`` holds an exported ``digits/2`` to publish.
    """
    call = channel.unary_unary(PREDICT, request_serializer=None, response_deserializer=protos.PredictResponse.FromString)
    payload = good_request()
    lock = threading.Lock()
    sent = [0]
    failures: list[str] = []
    served: collections.Counter = collections.Counter()

    def worker() -> None:
        while True:
            with lock:
                if sent[0] >= requests:
                    return
                sent[0] += 1
            try:
                response = call(payload, timeout=30)
                with lock:
                    served[response.model_spec.version.value] += 1
            except grpc.RpcError as exc:
                with lock:
                    failures.append(f"{exc.code().name}: {exc.details()}")

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    began = time.perf_counter()
    for t in threads:
        t.start()

    def wait_for_progress(fraction: float) -> None:
        while sent[0] < requests * fraction and any(t.is_alive() for t in threads):
            time.sleep(0.01)

    wait_for_progress(0.2)
    staging = repo / "digits" / ".incoming-2"
    shutil.copytree(built / "digits" / "2", staging)
    staging.rename(repo / "digits" / "2")  # published atomically, as tfship export does
    wait_for_progress(0.6)
    staging = repo / "digits" / ".incoming-3"
    shutil.copytree(built / "digits" / "2", staging)
    (staging / "saved_model.pb").write_bytes(b"broken")
    staging.rename(repo / "digits" / "3")
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    status_call = channel.unary_unary("/tensorflow.serving.ModelService/GetModelStatus", request_serializer=None,
                                      response_deserializer=protos.GetModelStatusResponse.FromString)
    status_request = protos.GetModelStatusRequest()
    status_request.model_spec.name = "digits"
    deadline = time.monotonic() + status_timeout
    while True:  # the broken version is seen at the next file system poll
        states = {s.version: protos.STATE_NAMES[s.state]
                  for s in status_call(status_request.SerializeToString(), timeout=10).model_version_status}
        if states.get(3) == "END" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return TransitionRun(failures, served, states, seconds)


def start_engine(repo: Path, port: int, rest_port: int, log: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tfship", "-q", "serve", "up", "--repo", str(repo), "--engine", "local",
                             "--allow-unsigned", "--grpc-port", str(port), "--rest-port", str(rest_port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, text=True)


def wait_ready(channel: grpc.Channel, timeout: float = 120) -> None:
    call = channel.unary_unary(PREDICT, request_serializer=None, response_deserializer=None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            call(good_request(), timeout=5)
            return
        except grpc.RpcError:
            time.sleep(0.2)
    raise RuntimeError("the engine did not come up")


def _print_answers(run: MalformedRun) -> None:
    by_kind: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for (kind, answer), count in sorted(run.answers.items()):
        by_kind[kind][answer] = count
    for kind, answers in by_kind.items():
        print(f"   {kind:<9} " + ", ".join(f"{answer} {count}" for answer, count in answers.items()))
    for kind, answer, details in run.improper[:5]:
        print(f"   improper: {kind}: {answer}: {details}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--malformed", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    from tfship.exporter import ExportOptions, export

    sys.path.insert(0, str(ROOT / "examples"))
    from train_digits import build_model

    with tempfile.TemporaryDirectory(prefix="tfship-reliability-") as tmp_name:
        tmp = Path(tmp_name)
        build_model().save(tmp / "digits.keras")
        built = tmp / "built"
        for version in (1, 2):
            export(ExportOptions(source=tmp / "digits.keras", name="digits", repo=built, version=version, formats=("savedmodel",)),
                   progress=lambda m: None)
        repo = tmp / "models"
        (repo / "digits").mkdir(parents=True)
        shutil.copytree(built / "digits" / "1", repo / "digits" / "1")
        port, rest_port = free_port(), free_port()
        engine_log = (tmp / "engine.log").open("w")
        engine = start_engine(repo, port, rest_port, engine_log)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        call = channel.unary_unary(PREDICT, request_serializer=None, response_deserializer=protos.PredictResponse.FromString)
        ok = False
        try:
            wait_ready(channel)
            # --- 1. malformed requests ---------------------------------------------------------
            grpc_run = run_malformed_grpc(call, args.malformed)
            rest_run = run_malformed_rest(rest_port, args.malformed // 5)
            alive = engine.poll() is None and call(good_request(), timeout=30) is not None
            print(f"1. {args.malformed} malformed gRPC requests in {grpc_run.seconds:.1f} s, {args.malformed // 5} hostile REST "
                  f"requests in {rest_run.seconds:.1f} s: server alive afterwards: {alive}; "
                  f"improper answers: {len(grpc_run.improper)} gRPC, {len(rest_run.improper)} REST")
            _print_answers(grpc_run)
            _print_answers(rest_run)

            # --- 2. transitions under load ------------------------------------------------------
            run = run_transitions(channel, repo, built, args.requests, args.concurrency)
            print(f"2. {args.requests} requests at concurrency {args.concurrency} in {run.seconds:.1f} s "
                  f"({args.requests / run.seconds:,.0f}/s): failed {len(run.failures)}; answered by version "
                  + ", ".join(f"{v}: {n}" for v, n in sorted(run.served.items())) + f"; final states {run.states}")
            for failure in run.failures[:5]:
                print(f"   failure: {failure}")
            ok = (alive and not grpc_run.improper and not rest_run.improper and not run.failures
                  and run.states.get(3) == "END" and run.served.get(2, 0) > 0)
        finally:
            engine.terminate()
            engine.wait(30)
            engine_log.close()
            errors = [line for line in (tmp / "engine.log").read_text().splitlines() if "Traceback" in line or "Error" in line]
            print(f"engine log: {len(errors)} error lines" + "".join(f"\n   {line}" for line in errors[:10]))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
