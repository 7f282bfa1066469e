"""Sign and verify a ~1 GiB version directory; time sha256sum over the same files in the same run.

    .venv/bin/python bench/signing.py [--size-mb 1024] [--repeat 3]

Prints each timing (best of --repeat) and the ratios sign/sha256sum and verify/sha256sum (target: verify <= 1.2x).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_version(folder: Path, size_mb: int) -> list[Path]:
    """A SavedModel-shaped directory: a big variables shard or two, and small files."""
    (folder / "variables").mkdir(parents=True)
    (folder / "assets.extra").mkdir()
    files = []
    chunk = os.urandom(1 << 20)
    shards = 4
    for i in range(shards):
        path = folder / "variables" / f"variables.data-{i:05d}-of-{shards:05d}"
        with path.open("wb") as handle:
            for _ in range(size_mb // shards):
                handle.write(chunk)
        files.append(path)
    for name, size in (("saved_model.pb", 200_000), ("variables/variables.index", 5_000), ("model.onnx", 300_000),
                       ("manifest.json", 4_000), ("golden.npz", 100_000), ("assets.extra/tf_serving_warmup_requests", 20_000)):
        path = folder / name
        path.write_bytes(os.urandom(size))
        files.append(path)
    return files


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from tfship.core.signing import generate_keys, sign, verify

    with tempfile.TemporaryDirectory(prefix="tfship-bench-") as tmp:
        root = Path(tmp)
        private, public = generate_keys(root / "keys")
        version = root / "models" / "big" / "1"
        files = make_version(version, args.size_mb)
        total = sum(f.stat().st_size for f in files)
        sha = best(lambda: subprocess.run(["sha256sum", *map(str, files)], check=True, stdout=subprocess.DEVNULL), args.repeat)

        def do_sign():
            (version / "model.sig").unlink(missing_ok=True)
            sign(version, key=private)

        signing = best(do_sign, args.repeat)

        def do_verify():
            result = verify(version, public_key=public)
            assert result.ok, result.reason

        verifying = best(do_verify, args.repeat)
    print(f"directory: {total / 2**30:.2f} GiB in {len(files)} files (best of {args.repeat})")
    print(f"sha256sum      {sha:8.3f} s")
    print(f"tfship sign    {signing:8.3f} s   ratio to sha256sum {signing / sha:5.2f}x")
    print(f"tfship verify  {verifying:8.3f} s   ratio to sha256sum {verifying / sha:5.2f}x   (target <= 1.20x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
