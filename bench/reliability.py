"""Reliability runs of the local engine (a real server process on loopback).

    .venv/bin/python bench/reliability.py [--malformed 10000] [--requests 20000] [--concurrency 32]

1. --malformed requests: random dtypes, wrong shapes, missing and extra inputs, huge dimensions, empty
   tensors, unknown models and versions, garbage bytes. Every answer must be a proper gRPC status (no
   dropped connection, no UNKNOWN), and the server must still answer a good request afterwards.
2. --requests good requests at --concurrency while a new version is published and a broken one (its
   saved_model.pb damaged) is dropped in: zero failed requests; the new version takes over; the broken
   one ends in END.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

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
        dtype = rng.choice([np.int8, np.int32, np.int64, np.float64, np.float16, np.uint8, np.bool_, np.complex64])
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


def start_engine(repo: Path, port: int, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tfship", "-q", "serve", "up", "--repo", str(repo), "--engine", "local",
                             "--allow-unsigned", "--grpc-port", str(port), "--rest-port", "0"],
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--malformed", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    from tfship.exporter import ExportOptions, export

    sys.path.insert(0, str(ROOT / "examples"))
    from train_digits import build_model

    with tempfile.TemporaryDirectory(prefix="tfship-reliability-") as tmp:
        tmp = Path(tmp)
        build_model().save(tmp / "digits.keras")
        built = tmp / "built"
        for version in (1, 2):
            export(ExportOptions(source=tmp / "digits.keras", name="digits", repo=built, version=version, formats=("savedmodel",)),
                   progress=lambda m: None)
        repo = tmp / "models"
        (repo / "digits").mkdir(parents=True)
        shutil.copytree(built / "digits" / "1", repo / "digits" / "1")
        port = free_port()
        engine_log = (tmp / "engine.log").open("w")
        engine = start_engine(repo, port, engine_log)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        call = channel.unary_unary(PREDICT, request_serializer=None, response_deserializer=protos.PredictResponse.FromString)
        try:
            wait_ready(channel)
            # --- 1. malformed requests ---------------------------------------------------------
            rng = np.random.default_rng(7)
            codes: collections.Counter = collections.Counter()
            improper = []
            began = time.perf_counter()
            for _ in range(args.malformed):
                kind, payload = malformed(rng)
                try:
                    call(payload, timeout=30)
                    codes[(kind, "OK")] += 1
                except grpc.RpcError as exc:
                    name = exc.code().name
                    codes[(kind, name)] += 1
                    if name not in ACCEPTABLE and not (kind == "empty" and name == "OK"):
                        improper.append((kind, name, exc.details()))
            seconds = time.perf_counter() - began
            alive = engine.poll() is None and call(good_request(), timeout=30) is not None
            print(f"1. {args.malformed} malformed requests in {seconds:.1f} s: server alive afterwards: {alive}; "
                  f"improper answers: {len(improper)}")
            by_kind = collections.defaultdict(dict)
            for (kind, code), count in sorted(codes.items()):
                by_kind[kind][code] = count
            for kind, answer in by_kind.items():
                print(f"   {kind:<9} " + ", ".join(f"{code} {count}" for code, count in answer.items()))
            for kind, name, details in improper[:5]:
                print(f"   improper: {kind}: {name}: {details}")

            # --- 2. transitions under load ------------------------------------------------------
            payload = good_request()
            lock = threading.Lock()
            sent = [0]
            failures: list[str] = []
            served = collections.Counter()

            def worker():
                while True:
                    with lock:
                        if sent[0] >= args.requests:
                            return
                        sent[0] += 1
                    try:
                        response = call(payload, timeout=30)
                        with lock:
                            served[response.model_spec.version.value] += 1
                    except grpc.RpcError as exc:
                        with lock:
                            failures.append(f"{exc.code().name}: {exc.details()}")

            threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
            began = time.perf_counter()
            for t in threads:
                t.start()

            def wait_for_progress(fraction: float) -> None:
                while sent[0] < args.requests * fraction and any(t.is_alive() for t in threads):
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
            deadline = time.monotonic() + 30
            while True:  # the broken version is seen at the next file system poll
                states = {s.version: protos.STATE_NAMES[s.state]
                          for s in status_call(status_request.SerializeToString(), timeout=10).model_version_status}
                if states.get(3) == "END" or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            print(f"2. {args.requests} requests at concurrency {args.concurrency} in {seconds:.1f} s "
                  f"({args.requests / seconds:,.0f}/s): failed {len(failures)}; answered by version "
                  + ", ".join(f"{v}: {n}" for v, n in sorted(served.items())) + f"; final states {states}")
            for failure in failures[:5]:
                print(f"   failure: {failure}")
            ok = alive and not improper and not failures and states.get(3) == "END" and served.get(2, 0) > 0
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
