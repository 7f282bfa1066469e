"""The TF-free client against TensorFlow's own calls, side by side in one run.

    .venv/bin/python bench/client.py [--samples 10000]

1. codec: tfship.core.codec encode/decode against tf.make_tensor_proto / tf.make_ndarray, 1 KB to 64 MB
   (target: no slower at any size);
2. import time: `import tfship.client` against `import tensorflow`, each in a fresh interpreter (target >= 10x);
3. validating --samples golden samples of the example model over gRPC (the local engine in its own
   process on loopback, one TensorFlow thread per op) against
   running the same samples through the in-process SavedModel (target >= 50% of the in-process rate).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from _common import free_port  # noqa: E402  (bench/ is on sys.path when run as a script)


def timeit(fn: Callable[[], object], min_seconds: float = 0.3, min_runs: int = 5) -> float:
    """Best time of several runs after one warm-up (first touches of fresh memory distort big arrays)."""
    fn()
    best, runs, began = float("inf"), 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - began < min_seconds:
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
        runs += 1
    return best


def bench_codec() -> list[tuple[int, float, float, float, float]]:
    import tensorflow as tf

    from tfship.core import protos
    from tfship.core.codec import to_ndarray, to_tensor_proto

    def row(size: int) -> tuple[int, float, float, float, float]:
        array = np.random.default_rng(0).random(size // 4, dtype=np.float32)
        wire = to_tensor_proto(array).SerializeToString()
        tf_proto_cls = type(tf.make_tensor_proto(array[:1]))
        return (size,
                timeit(lambda: to_tensor_proto(array).SerializeToString()),
                timeit(lambda: tf.make_tensor_proto(array).SerializeToString()),
                timeit(lambda: to_ndarray(protos.TensorProto.FromString(wire))),
                timeit(lambda: tf.make_ndarray(tf_proto_cls.FromString(wire))))

    return [row(size) for size in (1 << 10, 1 << 16, 1 << 20, 16 << 20, 64 << 20)]


def bench_import() -> tuple[float, float]:
    def cold(statement: str) -> float:
        times = []
        for _ in range(3):
            out = subprocess.run([sys.executable, "-c", f"import time; t=time.perf_counter(); {statement}; print(time.perf_counter()-t)"],
                                 capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, check=True)
            times.append(float(out.stdout.strip().splitlines()[-1]))
        return min(times)

    return cold("import tfship.client.grpc_client, tfship.client.validate"), cold("import tensorflow")


def bench_validate(samples: int) -> tuple[float, float]:
    import tensorflow as tf

    from tfship.client.golden import load_golden
    from tfship.client.grpc_client import ServingClient
    from tfship.client.validate import validate
    from tfship.core.tolerance import Tolerance
    from tfship.exporter import ExportOptions, export
    from tfship.serving.readiness import wait_ready

    sys.path.insert(0, str(ROOT / "examples"))
    from train_digits import build_model

    with tempfile.TemporaryDirectory(prefix="tfship-bench-") as tmp:
        model = build_model()
        model.save(Path(tmp) / "digits.keras")
        rng = np.random.default_rng(0)
        inputs = {"image": rng.random((samples, 8, 8, 1), dtype=np.float32)}
        np.savez(Path(tmp) / "samples.npz", image=inputs["image"])
        result = export(ExportOptions(source=Path(tmp) / "digits.keras", name="digits", repo=Path(tmp) / "models",
                                      formats=("savedmodel",), samples=Path(tmp) / "samples.npz"), progress=lambda m: None)
        expected = load_golden(result.directory).outputs
        served = tf.saved_model.load(str(result.directory)).signatures["serving_default"]
        batch = 32

        def in_process():
            for start in range(0, samples, batch):
                served(image=tf.constant(inputs["image"][start:start + batch]))

        in_process()  # warm-up (tracing)
        began = time.perf_counter()
        in_process()
        local = time.perf_counter() - began
        # The engine in its own process, as a deployment is: the client does not share its GIL.
        port = free_port()
        engine = subprocess.Popen([sys.executable, "-m", "tfship", "-q", "serve", "up", "--repo", str(Path(tmp) / "models"),
                                   "--engine", "local", "--allow-unsigned", "--grpc-port", str(port), "--rest-port", "0",
                                   "--tensorflow-intra-op-parallelism", "1", "--tensorflow-inter-op-parallelism", "1"],
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(f"127.0.0.1:{port}", {"digits": []}, timeout=120, alive=lambda: engine.poll() is None)
            with ServingClient(f"127.0.0.1:{port}") as client:
                validate(client, "digits", inputs, expected, result.manifest.signature, Tolerance(1e-5, 1e-5),
                         batch_size=batch, concurrency=4)  # warm-up
                began = time.perf_counter()
                report = validate(client, "digits", inputs, expected, result.manifest.signature, Tolerance(1e-5, 1e-5),
                                  batch_size=batch, concurrency=4)
                remote = time.perf_counter() - began
            assert report.passed
        finally:
            engine.terminate()
            engine.wait(30)
    return local, remote


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10_000)
    args = parser.parse_args()
    print("codec (float32), seconds per call; ratio = TensorFlow time / tfship time (>= 1 means tfship is no slower)")
    print(f"{'size':>8} {'encode':>10} {'tf encode':>10} {'ratio':>6} {'decode':>10} {'tf decode':>10} {'ratio':>6}")
    for size, oe, te, od, td in bench_codec():
        label = f"{size >> 20} MB" if size >= 1 << 20 else f"{size >> 10} KB"
        print(f"{label:>8} {oe:10.2e} {te:10.2e} {te / oe:6.2f} {od:10.2e} {td:10.2e} {td / od:6.2f}")
    client_import, tf_import = bench_import()
    print(f"\nimport: client {client_import:.3f} s, tensorflow {tf_import:.3f} s, ratio {tf_import / client_import:.1f}x (target >= 10x)")
    local, remote = bench_validate(args.samples)
    print(f"\nvalidate {args.samples} samples: in-process SavedModel {args.samples / local:,.0f} samples/s, "
          f"over gRPC {args.samples / remote:,.0f} samples/s, ratio {local / remote * 100:.0f}% (target >= 50%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
