"""Serving throughput and latency against the transport ceiling, side by side in one run.

    .venv/bin/python bench/serving.py [--duration 5] [--parts small,large,rest,tflite,memory]

Every server runs in its own process and so does every load generator (official grpcio stubs or
http.client, closed loop: each worker sends its next request when the answer arrives). Servers:
  echo      grpc.aio server: parses each PredictRequest, answers one fixed PredictResponse (the ceiling)
  engine    the tfship local engine, batching on (max_batch_size 64, batch_timeout_micros 0, one batch
            thread: a batch starts as soon as the batch thread is free and takes every waiting task),
            TF_ENABLE_ONEDNN_OPTS=0 and TensorFlow threads as the model server chooses them (on <= 2 cores one
            per op, ops on the calling thread; TFSHIP_BENCH_TF_THREADS=INTRA,INTER sets them, 0 leaves them to TensorFlow)
  tflite    the same engine with --prefer_tflite_model on a version holding model.tflite
  http-echo aiohttp server: parses the JSON body, answers a fixed JSON (the REST ceiling)
Parts:
  small   one sample of 4 floats, a small Dense model: req/s at c=16 and p50 at c=1 (targets: >= 0.7 of
          echo's req/s at c=16, 0 errors; p50 at c=1 <= 2x echo's)
  large   one 224x224x3 float32 image (~600 KB) and a batch of 32: bytes/s (target >= 0.8 of echo), and
          tracemalloc's peak per request inside the engine (target <= 2x the payload), beside the echo server's
          (what gRPC's own receive of the message costs before any handler runs)
  rest    :predict with the JSON row format, vs http-echo
  tflite  req/s of the .tflite path beside the SavedModel path (same model, same settings)
  memory  RSS after loading N versions of a 5M-parameter model and across 50 reload cycles; startup time
          of the model server (process start to AVAILABLE) for the digits example
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # as serving/model_server.use_standard_kernels: before TF loads

import numpy as np  # noqa: E402
from _common import free_port  # noqa: E402  (bench/ is on sys.path when run as a script)

PREDICT = "/tensorflow.serving.PredictionService/Predict"
SMALL_SHAPE = (1, 4)
IMAGE_SHAPE = (224, 224, 3)


# --- models ---------------------------------------------------------------------------------------

def build_models(tmp: Path, parts: set[str]) -> Path:
    """Export the bench's models into a repository: small (Dense on 4 floats, also as .tflite), image."""
    import keras

    from tfship.exporter import ExportOptions, export

    repo = tmp / "models"
    inputs = keras.Input(shape=(4,), name="x")
    small = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(16, activation="relu")(inputs)))
    small.save(tmp / "small.keras")
    formats = ("savedmodel", "tflite") if "tflite" in parts else ("savedmodel",)
    export(ExportOptions(source=tmp / "small.keras", name="small", repo=repo, formats=formats), progress=lambda m: None)
    if "large" in parts:
        image = keras.Input(shape=IMAGE_SHAPE, name="image")
        model = keras.Model(image, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(image)))
        model.save(tmp / "image.keras")
        export(ExportOptions(source=tmp / "image.keras", name="image", repo=repo, formats=("savedmodel",)), progress=lambda m: None)
    return repo


def small_payload() -> bytes:
    from tfship.core import protos
    from tfship.core.codec import to_tensor_proto

    request = protos.PredictRequest()
    request.model_spec.name = "small"
    to_tensor_proto(np.random.default_rng(0).random(SMALL_SHAPE, dtype=np.float32), request.inputs["x"])
    return request.SerializeToString()


def image_payload(batch: int) -> bytes:
    from tfship.core import protos
    from tfship.core.codec import to_tensor_proto

    request = protos.PredictRequest()
    request.model_spec.name = "image"
    to_tensor_proto(np.random.default_rng(0).random((batch, *IMAGE_SHAPE), dtype=np.float32), request.inputs["image"])
    return request.SerializeToString()


# --- servers --------------------------------------------------------------------------------------

async def start_echo(port: int = 0) -> tuple:
    """The gRPC ceiling on the engine's stack (grpc.aio, official stubs): parse each request, answer one fixed
    PredictResponse. Returns the started server and its port."""
    import grpc
    from tensorflow_serving.apis import predict_pb2

    from tfship.core.codec import to_tensor_proto

    fixed = predict_pb2.PredictResponse()
    fixed.model_spec.name = "small"
    to_tensor_proto(np.zeros((1, 2), np.float32), fixed.outputs["output_0"])

    async def handler(request, context):
        return fixed

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", (1 << 31) - 1)])
    rpc = grpc.unary_unary_rpc_method_handler(handler, request_deserializer=predict_pb2.PredictRequest.FromString,
                                              response_serializer=predict_pb2.PredictResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {"Predict": rpc}),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


def serve_echo(port: int) -> None:
    import asyncio

    async def main() -> None:
        server, _ = await start_echo(port)
        print("ready", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def serve_http_echo(port: int) -> None:
    """The REST ceiling on the engine's stack (aiohttp): parse the JSON body, fixed answer."""
    from aiohttp import web

    fixed = json.dumps({"predictions": [[0.0, 0.0]]}).encode()

    async def handler(request: web.Request) -> web.Response:
        json.loads(await request.read())
        return web.Response(body=fixed, content_type="application/json")

    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/v1/models/{name}:predict", handler)
    print("ready", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_engine(port: int, rest_port: int, repo: str, tflite: bool) -> None:
    from tfship.serving.config import BatchingOptions
    from tfship.serving.local_engine import LocalEngine, ModelConfig
    from tfship.serving.local_engine.models import LoadOptions

    options = BatchingOptions(max_batch_size=64, batch_timeout_micros=int(os.environ.get("TFSHIP_BENCH_TIMEOUT_US", "0")),
                              num_batch_threads=int(os.environ.get("TFSHIP_BENCH_BATCH_THREADS", "1")))
    configs = [ModelConfig(path.name, path) for path in sorted(Path(repo).iterdir()) if path.is_dir()]
    from tfship.serving.model_server import auto_threads

    # As tfship-model-server chooses (model_server.auto_threads), unless TFSHIP_BENCH_TF_THREADS="INTRA,INTER" says (0: TF's).
    chosen = os.environ.get("TFSHIP_BENCH_TF_THREADS")
    intra, inter = (int(n) for n in chosen.split(",")) if chosen else auto_threads()
    engine = LocalEngine(configs, grpc_port=port, rest_port=rest_port or None, batching=options, intra_op_threads=intra,
                         inter_op_threads=inter, load_options=LoadOptions(prefer_tflite=tflite)).start()
    print("ready", flush=True)
    engine.serve_until_signal(grace=1)


# --- load generators ------------------------------------------------------------------------------

def closed_loop(call, concurrency: int, duration: float) -> dict:
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    stop_at = time.perf_counter() + duration

    def worker(index: int) -> None:
        while time.perf_counter() < stop_at:
            began = time.perf_counter()
            try:
                call()
            except Exception:
                errors[index] += 1
                continue
            latencies[index].append(time.perf_counter() - began)

    began = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    ms = np.concatenate([np.asarray(v) for v in latencies]) * 1000 if any(latencies) else np.zeros(1)
    return {"requests": int(sum(len(v) for v in latencies)), "errors": sum(errors), "rps": sum(len(v) for v in latencies) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def loadgen_grpc(port: int, concurrency: int, duration: float, payload: str) -> dict:
    import grpc

    data = small_payload() if payload == "small" else image_payload(int(payload.removeprefix("image")))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", (1 << 31) - 1),
                                                                  ("grpc.max_receive_message_length", (1 << 31) - 1)])
    call = channel.unary_unary(PREDICT, request_serializer=None, response_deserializer=None)
    for _ in range(3):
        call(data, timeout=30)
    result = closed_loop(lambda: call(data, timeout=30), concurrency, duration)
    result["bytes"] = len(data)
    return result


def loadgen_rest(port: int, concurrency: int, duration: float) -> dict:
    import http.client

    body = json.dumps({"instances": np.random.default_rng(0).random(SMALL_SHAPE, dtype=np.float32).tolist()}).encode()
    local = threading.local()

    def call() -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/models/small:predict", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(response.status)

    call()
    return closed_loop(call, concurrency, duration)


def memory_per_request(repo: Path, batch: int, server: str = "engine", rounds: int = 5) -> dict:
    """tracemalloc's peak above the idle level while a server in this process answers one image request
    (the client too, its payload built before tracing starts; gRPC's and TensorFlow's C buffers are not
    Python's). ``server``: "engine", or "echo" for what gRPC's own receive costs (start_echo)."""
    import asyncio
    import tracemalloc

    import grpc

    from tfship.serving.config import BatchingOptions
    from tfship.serving.local_engine import LocalEngine, ModelConfig

    data = image_payload(batch)
    if server == "echo":
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        echo, port = asyncio.run_coroutine_threadsafe(start_echo(), loop).result()
        stop = lambda: asyncio.run_coroutine_threadsafe(echo.stop(0), loop).result()  # noqa: E731
    else:
        engine = LocalEngine([ModelConfig("image", repo / "image")], grpc_port=0, rest_port=None,
                             batching=BatchingOptions(max_batch_size=64, batch_timeout_micros=0, num_batch_threads=1)).start()
        port, stop = engine.grpc_port, lambda: engine.stop(grace=0)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", (1 << 31) - 1)])
        call = channel.unary_unary(PREDICT, request_serializer=None, response_deserializer=None)
        call(data, timeout=60)
        tracemalloc.start()
        peaks = []
        for _ in range(rounds):
            idle = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            call(data, timeout=60)
            peaks.append(tracemalloc.get_traced_memory()[1] - idle)
        tracemalloc.stop()
    finally:
        stop()
    return {"payload": len(data), "peak": int(np.median(peaks))}


# --- memory and startup ---------------------------------------------------------------------------

def rss_mb(pid: int | None = None) -> float:
    with open(f"/proc/{pid or os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def memory_run(tmp: Path, versions: int, cycles: int) -> dict:
    """RSS of an engine holding ``versions`` versions of a 5M-parameter model, then across ``cycles``
    reloads (each cycle: a new version appears, the oldest goes; the engine keeps the latest ``versions``)."""
    import shutil

    import keras
    from tensorflow_serving.config import model_server_config_pb2

    from tfship.serving.local_engine import LocalEngine
    from tfship.serving.local_engine.models import configs_from_proto

    src = tmp / "big"
    x = keras.Input(shape=(1000,), name="x")
    model = keras.Model(x, keras.layers.Dense(10)(keras.layers.Dense(5000)(x)))  # 5.06M parameters
    model.export(str(src), format="tf_saved_model", verbose=False)
    base = tmp / "mem" / "big"
    for v in range(1, versions + 1):
        shutil.copytree(src, base / str(v))
    before = rss_mb()
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add(name="big", base_path=str(base), model_platform="tensorflow")
    entry.model_version_policy.latest.num_versions = versions
    engine = LocalEngine(configs_from_proto(config), grpc_port=0, rest_port=None, poll_seconds=0.05).start()
    try:
        loaded = rss_mb()
        samples = []
        next_version = versions + 1
        for cycle in range(cycles):
            shutil.copytree(src, base / str(next_version))
            shutil.rmtree(base / str(next_version - versions))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                states = {s.version: s.state for s in engine.core.manager.status("big", None, None)}
                if states.get(next_version) == "AVAILABLE" and next_version - versions not in states:
                    break
                time.sleep(0.02)
            next_version += 1
            if cycle in (0, 9, 24, cycles - 1):
                samples.append((cycle + 1, rss_mb()))
    finally:
        engine.stop(grace=0)
    return {"versions": versions, "params": model.count_params(), "rss_before_mb": before, "rss_loaded_mb": loaded,
            "rss_cycles": samples}


def startup_seconds(repo_dir: Path) -> float:
    """The model server from process start to its model AVAILABLE (GetModelStatus over gRPC)."""
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    port = free_port()
    began = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", "from tfship.cli_model_server import main; main()", f"--port={port}", "--model_name=digits",
                                f"--model_base_path={repo_dir}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "digits"
        while time.perf_counter() - began < 120:
            try:
                answer = stub.GetModelStatus(request, timeout=1)
                if any(s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE for s in answer.model_version_status):
                    return time.perf_counter() - began
            except grpc.RpcError:
                pass
            time.sleep(0.02)
        return float("nan")
    finally:
        process.terminate()
        process.wait(30)


# --- orchestration --------------------------------------------------------------------------------

def start_server(args: list[str]) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    line = process.stdout.readline() if process.stdout else ""
    if line.strip() != "ready":
        process.kill()
        raise RuntimeError(f"server {args} did not start")
    time.sleep(0.5)
    return process


def batch_totals(rest_port: int) -> tuple[float, float]:
    """(model calls, rows) the engine's batcher has run so far: processed_batch_size's count and sum on its metrics page."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    name = ":tensorflow:serving:batching_session:processed_batch_size"
    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics", timeout=30) as response:
        page = response.read().decode()
    values = {sample.name: sample.value for family in text_string_to_metric_families(page) if family.name == name
              for sample in family.samples}
    return values.get(name + "_count", 0.0), values.get(name + "_sum", 0.0)


def run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def grpc_load(port: int, concurrency: int, duration: float, payload: str) -> dict:
    return run_child(["loadgen", "--port", str(port), "--concurrency", str(concurrency), "--duration", str(duration), "--payload", payload])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role")
    server = sub.add_parser("server")
    server.add_argument("--kind", choices=["echo", "http-echo", "engine", "tflite"], required=True)
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--rest-port", type=int, default=0)
    server.add_argument("--repo")
    gen = sub.add_parser("loadgen")
    gen.add_argument("--port", type=int, required=True)
    gen.add_argument("--concurrency", type=int, required=True)
    gen.add_argument("--duration", type=float, required=True)
    gen.add_argument("--payload", default="small")
    gen.add_argument("--rest", action="store_true")
    traced = sub.add_parser("tracemalloc")
    traced.add_argument("--repo", required=True)
    traced.add_argument("--batch", type=int, required=True)
    traced.add_argument("--server", choices=["engine", "echo"], default="engine")
    mem = sub.add_parser("memory")
    mem.add_argument("--tmp", required=True)
    mem.add_argument("--versions", type=int, default=3)
    mem.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each load per server, interleaved (medians reported)")
    parser.add_argument("--parts", default="small,large,rest,tflite,memory")
    args = parser.parse_args()

    if args.role == "server":
        if args.kind == "echo":
            serve_echo(args.port)
        elif args.kind == "http-echo":
            serve_http_echo(args.port)
        else:
            serve_engine(args.port, args.rest_port, args.repo, args.kind == "tflite")
        return 0
    if args.role == "loadgen":
        result = loadgen_rest(args.port, args.concurrency, args.duration) if args.rest else \
            loadgen_grpc(args.port, args.concurrency, args.duration, args.payload)
        print(json.dumps(result))
        return 0
    if args.role == "tracemalloc":
        print(json.dumps(memory_per_request(Path(args.repo), args.batch, args.server)))
        return 0
    if args.role == "memory":
        print(json.dumps(memory_run(Path(args.tmp), args.versions, args.cycles)))
        return 0

    parts = set(args.parts.split(","))
    d = args.duration
    print(f"machine: {os.cpu_count()} cores; {d:g} s per run; load generators in their own processes; TF_ENABLE_ONEDNN_OPTS=0")
    with tempfile.TemporaryDirectory(prefix="tfship-bench-") as tmpdir:
        tmp = Path(tmpdir)
        repo = build_models(tmp, parts)
        grpc_loads = []
        if "small" in parts or "tflite" in parts:
            grpc_loads += [("small", 1), ("small", 16)]
        if "large" in parts:
            grpc_loads += [("image1", 4), ("image32", 2)]
        results: dict[str, dict] = {}
        kinds = ["echo", "engine"] + (["tflite"] if "tflite" in parts else [])
        servers: dict[str, tuple[subprocess.Popen, int, int]] = {}
        try:
            # All servers up at once, the loads interleaved round by round (echo, engine, echo, engine, ...):
            # on a shared machine a ratio then compares runs seconds apart, and medians drop the outliers.
            for kind in kinds:
                port, rest_port = free_port(), free_port()
                servers[kind] = (start_server(["server", "--kind", kind, "--port", str(port), "--rest-port", str(rest_port),
                                               "--repo", str(repo)]), port, rest_port)
            if "rest" in parts:
                port = free_port()
                servers["http-echo"] = (start_server(["server", "--kind", "http-echo", "--port", str(port)]), port, 0)
            runs: dict[tuple[str, str], list[dict]] = {}
            broken: dict[str, list[str]] = {}  # a server whose model did not answer (the .tflite path)
            for _ in range(args.rounds):
                for p, c in grpc_loads:
                    for kind in kinds:
                        if kind == "tflite" and (p != "small" or kind in broken):
                            continue
                        try:
                            before = batch_totals(servers[kind][2]) if kind != "echo" else (0.0, 0.0)
                            result = grpc_load(servers[kind][1], c, d, p)
                            if kind != "echo":
                                after = batch_totals(servers[kind][2])
                                result["batches"], result["batch_rows"] = after[0] - before[0], after[1] - before[1]
                            runs.setdefault((kind, f"{p}@{c}"), []).append(result)
                        except subprocess.CalledProcessError as exc:
                            if kind != "tflite":
                                raise
                            broken[kind] = [line.strip() for line in (exc.stderr or "").splitlines() if "details" in line][-1:]
                if "rest" in parts:
                    for kind, port in (("rest-echo", servers["http-echo"][1]), ("rest-engine", servers["engine"][2])):
                        runs.setdefault((kind, "rest@16"), []).append(
                            run_child(["loadgen", "--port", str(port), "--concurrency", "16", "--duration", str(d), "--rest"]))
        finally:
            for process, _, _ in servers.values():
                process.terminate()
                process.wait(30)
        for (kind, key), found in runs.items():
            middle = sorted(found, key=lambda r: r["rps"])[len(found) // 2]
            results.setdefault(kind, {})[key] = {**middle, "errors": sum(r["errors"] for r in found),
                                                 "all_rps": [r["rps"] for r in found], "all_p50": [r["p50_ms"] for r in found]}

        def ratio(kind: str, other: str, key: str, field: str = "all_rps") -> float:
            """The median over rounds of the ratio within each round."""
            pairs = [a / b for a, b in zip(results[kind][key][field], results[other][key][field]) if b]
            return float(np.median(pairs)) if pairs else float("nan")

        def row(kind: str, key: str) -> dict:
            return results[kind][key]

        def show(label: str, r: dict) -> str:
            mbs = r["rps"] * r.get("bytes", 0) / 1e6
            return (f"  {label:<24}{r['rps']:>9,.0f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms"
                    + (f"  {mbs:8,.0f} MB/s" if mbs >= 1 else "") + f"  errors {r['errors']}")

        for key in results.get("echo", {}):
            print(f"\n{key} (payload, concurrency)")
            for kind in ("echo", "engine", "tflite"):
                if key in results.get(kind, {}):
                    print(show(kind, row(kind, key)))
        if "small" in parts:
            e16, g16, e1, g1 = row("echo", "small@16"), row("engine", "small@16"), row("echo", "small@1"), row("engine", "small@1")
            print(f"\nsmall, c=16: engine / echo req/s = {ratio('engine', 'echo', 'small@16'):.2f} (target >= 0.70), "
                  f"errors {g16['errors']} (echo {e16['errors']}); per round: "
                  + ", ".join(f"{a / b:.2f}" for a, b in zip(g16["all_rps"], e16["all_rps"])))
            print(f"small, c=1:  engine p50 / echo p50 = {ratio('engine', 'echo', 'small@1', 'all_p50'):.2f} (target <= 2.0); per round: "
                  + ", ".join(f"{a / b:.2f}" for a, b in zip(g1["all_p50"], e1["all_p50"])))
            if g16.get("batches"):
                print(f"small, c=16: the engine's batches (TF Serving's processed_batch_size) averaged "
                      f"{g16['batch_rows'] / g16['batches']:.2f} rows per model call ({g16['batches']:,.0f} calls, median round)")
        if "large" in parts:
            for key in ("image1@4", "image32@2"):
                print(f"{key}: engine / echo bytes/s = {ratio('engine', 'echo', key):.2f} (target >= 0.80)")
            for batch in (1, 32):
                traced = {kind: run_child(["tracemalloc", "--repo", str(repo), "--batch", str(batch), "--server", kind])
                          for kind in ("engine", "echo")}
                payload = traced["engine"]["payload"]
                print(f"tracemalloc peak per request, batch {batch}: {traced['engine']['peak'] / 1e6:.2f} MB for a "
                      f"{payload / 1e6:.2f} MB payload = {traced['engine']['peak'] / payload:.2f}x (target <= 2x); "
                      f"the echo server, measured the same way: {traced['echo']['peak'] / payload:.2f}x")
        if "rest" in parts:
            r_e, r_g = row("rest-echo", "rest@16"), row("rest-engine", "rest@16")
            print("\nREST :predict (row format, one sample), c=16")
            print(show("http-echo", r_e))
            print(show("engine", r_g))
            print(f"REST engine / http-echo req/s = {ratio('rest-engine', 'rest-echo', 'rest@16'):.2f}")
        if "tflite" in broken:
            print(f"\ntflite: the .tflite version did not answer: {' '.join(broken['tflite'])[:300]}")
        elif "tflite" in parts:
            for key in ("small@1", "small@16"):
                print(f"tflite / SavedModel req/s, {key}: {ratio('tflite', 'engine', key):.2f}")
        if "memory" in parts:
            mem_result = run_child(["memory", "--tmp", str(tmp)])
            print(f"\nmemory: {mem_result['versions']} versions of a {mem_result['params'] / 1e6:.1f}M-parameter model: RSS "
                  f"{mem_result['rss_before_mb']:.0f} MB before, {mem_result['rss_loaded_mb']:.0f} MB loaded; after reload cycles: "
                  + ", ".join(f"{c}: {mb:.0f} MB" for c, mb in mem_result["rss_cycles"]))
            digits = tmp / "digits"
            sys.path.insert(0, str(ROOT / "examples"))
            from train_digits import build_model

            from tfship.exporter import ExportOptions, export

            build_model().save(tmp / "digits.keras")
            export(ExportOptions(source=tmp / "digits.keras", name="digits", repo=tmp, formats=("savedmodel",)), progress=lambda m: None)
            print(f"startup, model server process start to digits AVAILABLE: {startup_seconds(digits):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
