"""The model repository on disk: version numbers, and versions that appear atomically.

A version is built in ``models/<name>/.tfship-tmp-<pid>-<random>`` (not a number, so TF Serving and the
local engine ignore it) and renamed into place once complete. A crash at any point leaves no partial
version visible; the next export removes leftovers whose process is gone.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import psutil

from tfship.core.errors import ExportError, UsageError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TMP_PREFIX = ".tfship-tmp-"


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name or ""):
        raise UsageError(f"--name {name!r}: use letters, digits, '_', '.' or '-' (TF Serving uses it in paths and URLs)")
    return name


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def clean_stale(model_dir: Path) -> list[Path]:
    removed: list[Path] = []
    if not model_dir.is_dir():
        return removed
    for entry in model_dir.iterdir():
        if entry.name.startswith(TMP_PREFIX):
            parts = entry.name[len(TMP_PREFIX):].split("-")
            if parts and parts[0].isdigit() and not psutil.pid_exists(int(parts[0])):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def staging_dir(model_dir: Path) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    clean_stale(model_dir)
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=model_dir))


def next_version(model_dir: Path, requested: int | None) -> int:
    existing = versions(model_dir)
    if requested is not None:
        if requested <= 0:
            raise UsageError(f"--version {requested}: versions are positive integers")
        if requested in existing or (model_dir / str(requested)).exists():
            raise ExportError(f"{model_dir / str(requested)} already exists; versions are never overwritten: choose another --version or omit it")
        return requested
    return (existing[-1] + 1) if existing else 1


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would set it, racing other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def publish(staging: Path, model_dir: Path, version: int) -> Path:
    """Rename the finished staging directory to its version number (atomic on one file system)."""
    target = model_dir / str(version)
    if target.exists():
        raise ExportError(f"{target} appeared while exporting; nothing was overwritten (the export is discarded)")
    # mkdtemp makes the staging folder 0700; a published version gets the mode a plain mkdir would give it,
    # so a server running as another user (tfship's image runs as a non-root user) can read it.
    os.chmod(staging, 0o777 & ~_umask())
    fd = os.open(staging, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.rename(staging, target)
    except OSError as exc:
        raise ExportError(f"cannot publish {target}: {exc.strerror}") from None
    return target
