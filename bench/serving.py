"""Serving throughput and latency, side by side in one run, the load generator in a separate process.

    .venv/bin/python bench/serving.py [--duration 5] [--concurrency 1,16,64]

Servers, each in its own process, all serving the example digits CNN over TF Serving's Predict API:
  echo      a gRPC server that answers each Predict with its request's bytes (the transport ceiling)
  engine    the tfship local engine, batching off
  batching  the tfship local engine, batching on (max_batch_size 64, batch_timeout_micros 1000, one batch thread)
Both engines run with --tensorflow-intra-op-parallelism 1 --tensorflow-inter-op-parallelism 1.
  naive     a gRPC server that decodes the request and calls keras model.predict per request
and, in this process, the in-process signature call (no transport) for reference.
Requests carry one sample each. Targets: batching at concurrency 16 >= 70% of echo's throughput and
>= 20x the naive server's; p99 latency is reported for each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from _common import free_port  # noqa: E402  (bench/ is on sys.path when run as a script)

PREDICT = "/tensorflow.serving.PredictionService/Predict"


# --- servers --------------------------------------------------------------------------------------

def serve_echo(port: int) -> None:
    import grpc

    def handler(request: bytes, context) -> bytes:
        return request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    rpc = grpc.unary_unary_rpc_method_handler(handler, request_deserializer=None, response_serializer=None)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {"Predict": rpc}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def serve_naive(port: int, model_path: str) -> None:
    import grpc
    import keras

    from tfship.core import protos
    from tfship.core.codec import to_ndarray, to_tensor_proto

    model = keras.saving.load_model(model_path)

    def handler(request, context):
        image = to_ndarray(request.inputs["image"])
        response = protos.PredictResponse()
        to_tensor_proto(model.predict(image, verbose=0), response.outputs["probabilities"])
        return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    rpc = grpc.unary_unary_rpc_method_handler(handler, request_deserializer=protos.PredictRequest.FromString,
                                              response_serializer=protos.PredictResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {"Predict": rpc}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def serve_engine(port: int, repo: str, batching: bool) -> None:
    from tfship.serving.config import BatchingOptions
    from tfship.serving.local_engine import LocalEngine, ModelConfig

    options = BatchingOptions(max_batch_size=64, batch_timeout_micros=int(os.environ.get("TFSHIP_BENCH_TIMEOUT_US", "1000")),
                              num_batch_threads=int(os.environ.get("TFSHIP_BENCH_BATCH_THREADS", "1"))) if batching else None
    engine = LocalEngine([ModelConfig("digits", Path(repo) / "digits")], grpc_port=port, rest_port=None, batching=options,
                         intra_op_threads=1, inter_op_threads=1).start()
    print("ready", flush=True)
    engine.serve_until_signal(grace=1)


# --- load generator -------------------------------------------------------------------------------

def loadgen(port: int, concurrency: int, duration: float) -> dict:
    import grpc

    from tfship.client.bench import closed_loop
    from tfship.core import protos
    from tfship.core.codec import to_tensor_proto
    from tfship.core.errors import TfshipError

    request = protos.PredictRequest()
    request.model_spec.name = "digits"
    to_tensor_proto(np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32), request.inputs["image"])
    payload = request.SerializeToString()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary(PREDICT, request_serializer=None, response_deserializer=protos.PredictResponse.FromString)
    call(payload, timeout=30)

    def one() -> None:
        try:
            call(payload, timeout=30)
        except grpc.RpcError as exc:
            raise TfshipError(str(exc.code())) from None

    result = closed_loop(one, concurrency, duration)
    return {"requests": result["requests"], "errors": result["errors"], "rps": result["throughput_rps"],
            "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"]}


# --- orchestration --------------------------------------------------------------------------------

def start_server(args: list[str]) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    line = process.stdout.readline()
    if line.strip() != "ready":
        process.kill()
        raise RuntimeError(f"server {args} did not start")
    return process


def run_loadgen(port: int, concurrency: int, duration: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "loadgen", "--port", str(port), "--concurrency", str(concurrency),
                          "--duration", str(duration)], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def in_process(repo: Path, duration: float) -> dict:
    import tensorflow as tf

    fn = tf.saved_model.load(str(repo / "digits" / "1")).signatures["serving_default"]
    x = tf.constant(np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32))
    fn(image=x)
    latencies = []
    stop_at = time.perf_counter() + duration
    while time.perf_counter() < stop_at:
        began = time.perf_counter()
        fn(image=x)
        latencies.append(time.perf_counter() - began)
    ms = np.asarray(latencies) * 1000
    return {"requests": len(ms), "errors": 0, "rps": len(ms) / duration, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role")
    server = sub.add_parser("server")
    server.add_argument("--kind", choices=["echo", "engine", "batching", "naive"], required=True)
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--repo")
    server.add_argument("--model")
    gen = sub.add_parser("loadgen")
    gen.add_argument("--port", type=int, required=True)
    gen.add_argument("--concurrency", type=int, required=True)
    gen.add_argument("--duration", type=float, required=True)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,16,64")
    args = parser.parse_args()

    if args.role == "server":
        if args.kind == "echo":
            serve_echo(args.port)
        elif args.kind == "naive":
            serve_naive(args.port, args.model)
        else:
            serve_engine(args.port, args.repo, args.kind == "batching")
        return 0
    if args.role == "loadgen":
        print(json.dumps(loadgen(args.port, args.concurrency, args.duration)))
        return 0

    levels = [int(v) for v in args.concurrency.split(",")]
    from tfship.exporter import ExportOptions, export

    sys.path.insert(0, str(ROOT / "examples"))
    from train_digits import build_model

    with tempfile.TemporaryDirectory(prefix="tfship-bench-") as tmp:
        model_path = Path(tmp) / "digits.keras"
        build_model().save(model_path)
        repo = Path(tmp) / "models"
        export(ExportOptions(source=model_path, name="digits", repo=repo, formats=("savedmodel",)), progress=lambda m: None)
        results: dict[str, dict[int, dict]] = {}
        kinds = os.environ.get("TFSHIP_BENCH_KINDS", "echo,engine,batching,naive").split(",")
        for kind in kinds:
            port = free_port()
            process = start_server(["server", "--kind", kind, "--port", str(port), "--repo", str(repo), "--model", str(model_path)])
            try:
                results[kind] = {c: run_loadgen(port, c, args.duration) for c in levels}
            finally:
                process.terminate()
                process.wait(30)
        reference = in_process(repo, args.duration)
    print(f"one-sample Predict requests, {args.duration:g} s per run; requests/s (p99 ms)")
    print(f"{'server':<10}" + "".join(f"{'c=' + str(c):>22}" for c in levels))
    for kind, by_level in results.items():
        print(f"{kind:<10}" + "".join(f"{r['rps']:>12,.0f} ({r['p99_ms']:6.2f})" + (f" E{r['errors']}" if r["errors"] else "   ") for r in by_level.values()))
    print(f"{'in-process':<10}{reference['rps']:>12,.0f} ({reference['p99_ms']:6.2f})   (signature call, one thread, no transport)")
    if 16 in levels and all(k in results for k in ("batching", "echo", "naive")):
        b, e, n = results["batching"][16]["rps"], results["echo"][16]["rps"], results["naive"][16]["rps"]
        print(f"\nat c=16: batching / echo = {b / e * 100:.0f}% (target >= 70%), batching / naive = {b / n:.1f}x (target >= 20x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
