"""TF Serving configuration files generated from the repository on disk.

``models.config`` is a text ``ModelServerConfig`` (the real schema from tensorflow-serving-api); the
batching, monitoring and SSL files use the schemas in ``serving.config_protos``. The same files drive
the official container (paths as seen inside it, under /models) and the local engine (host paths).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from google.protobuf.message import Message

from tfship.core.errors import ServingError, UsageError
from tfship.exporter.repository import versions as repo_versions

LABEL_PATTERN = re.compile(r"^[a-zA-Z0-9_]+$")
CONTAINER_ROOT = "/models"
MODELS_CONFIG = "models.config"
BATCHING_CONFIG = "batching.config"
MONITORING_CONFIG = "monitoring.config"
SSL_CONFIG = "ssl.config"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


@dataclass(frozen=True)
class VersionPolicy:
    kind: str = "latest"  # latest, all, specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> VersionPolicy:
        text = (text or "latest:1").strip()
        if text == "all":
            return cls("all")
        kind, _, rest = text.partition(":")
        try:
            if kind == "latest":
                count = int(rest or "1")
                if count < 1:
                    raise ValueError
                return cls("latest", num_versions=count)
            if kind == "specific":
                numbers = tuple(sorted({int(v) for v in rest.split(",") if v.strip()}))
                if not numbers or min(numbers) < 1:
                    raise ValueError
                return cls("specific", versions=numbers)
        except ValueError:
            pass
        raise UsageError(f"--versions {text!r}: expected latest:N, all, or specific:1,2")

    def text(self) -> str:
        """The --versions spelling of this policy (parse(text()) gives it back)."""
        if self.kind == "all":
            return "all"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return f"latest:{self.num_versions}"

    def select(self, available: list[int]) -> list[int]:
        """The versions this policy serves out of ``available`` (the verified ones), ascending."""
        if self.kind == "all":
            return sorted(available)
        if self.kind == "specific":
            return [v for v in self.versions if v in available]
        return sorted(available)[-self.num_versions:]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    labels: dict[str, int] = field(default_factory=dict)
    # The verified versions the policy selected: models.config pins exactly these (``specific``), so a
    # version copied in later is never served before ``tfship serve reload`` has verified it.
    versions: tuple[int, ...] = ()


def scan(repo: Path) -> dict[str, list[int]]:
    """Model names and their numeric version directories (temporary and hidden folders are ignored)."""
    repo = Path(repo)
    if not repo.is_dir():
        raise ServingError(f"{repo}: model repository not found; export a model first (tfship export ... --repo {repo})")
    result = {}
    for entry in sorted(repo.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            found = repo_versions(entry)
            if found:
                result[entry.name] = found
    return result


def parse_labels(values: Iterable[str]) -> dict[str, dict[str, int]]:
    """``--label stable=1`` (every model) or ``--label mymodel:stable=1``."""
    result: dict[str, dict[str, int]] = {}
    for value in values:
        target, _, number = value.partition("=")
        model, _, label = target.rpartition(":")
        if not LABEL_PATTERN.match(label or ""):
            raise UsageError(f"--label {value!r}: labels are letters, digits and '_' (TF Serving's rule)")
        try:
            version = int(number)
        except ValueError:
            raise UsageError(f"--label {value!r}: expected LABEL=VERSION") from None
        result.setdefault(model or "*", {})[label] = version
    return result


def build_entries(repo: Path, *, base_root: str | None = None, policy: VersionPolicy = VersionPolicy(),
                  labels: dict[str, dict[str, int]] | None = None,
                  exclude: Set[tuple[str, int]] = frozenset()) -> list[ModelEntry]:
    repo = Path(repo).resolve()
    labels = labels or {}
    entries = []
    for name, found in scan(repo).items():
        valid = [v for v in found if (name, v) not in exclude]
        if not valid:
            continue
        missing = [v for v in policy.versions if v not in found] if policy.kind == "specific" else []
        if missing:
            raise UsageError(f"--versions specific:...: {name} has no version {', '.join(map(str, missing))} in {repo} "
                             f"(on disk: {', '.join(map(str, found))})")
        served = policy.select(valid)
        model_labels = {**labels.get("*", {}), **labels.get(name, {})}
        for label, version in model_labels.items():
            if version not in served:
                raise UsageError(
                    f"--label {label}={version}: {name} version {version} is not served "
                    f"(served: {', '.join(map(str, served)) or 'none'}); TF Serving only labels available versions"
                )
        if not served:
            continue
        base = f"{base_root.rstrip('/')}/{name}" if base_root else str(repo / name)
        entries.append(ModelEntry(name=name, base_path=base, policy=policy, labels=model_labels, versions=tuple(served)))
    for model in labels:
        if model != "*" and model not in {e.name for e in entries}:
            raise UsageError(f"--label {model}:...: no model named {model} in {repo}")
    return entries


def model_server_config(entries: list[ModelEntry]) -> Any:
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for entry in entries:
        model = config.model_config_list.config.add()
        model.name = entry.name
        model.base_path = entry.base_path
        model.model_platform = "tensorflow"
        # Always pinned: TF Serving's latest/all policies would load any version directory that appears.
        model.model_version_policy.specific.versions.extend(entry.versions)
        for label, version in sorted(entry.labels.items()):
            model.version_labels[label] = version
    return config


def read_model_server_config(path: Path) -> Any:
    from tensorflow_serving.config import model_server_config_pb2

    try:
        return text_format.Parse(Path(path).read_text(encoding="utf-8"), model_server_config_pb2.ModelServerConfig())
    except FileNotFoundError:
        raise ServingError(f"{path}: model config file not found") from None
    except text_format.ParseError as exc:
        # TF Serving's words (protobuf's text parser, as tensorflow_model_server logs them), then where.
        where = f"{exc.GetLine()}:{exc.GetColumn()}: " if exc.GetLine() else ""
        detail = str(exc).split(" : ", 1)[-1] if " : " in str(exc) else str(exc)
        raise ServingError(f"Error parsing text-format tensorflow.serving.ModelServerConfig: {where}{detail} "
                           f"(in {path}; fix the file: it is a text ModelServerConfig)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ServingError(f"{path}: cannot read the model config file: {exc}") from None


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 32
    batch_timeout_micros: int = 1000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 2
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def check(self) -> BatchingOptions:
        if self.max_batch_size < 1 or self.num_batch_threads < 1 or self.max_enqueued_batches < 1 or self.batch_timeout_micros < 0:
            raise UsageError("batching: max_batch_size, num_batch_threads and max_enqueued_batches must be >= 1, batch_timeout_micros >= 0")
        sizes = list(self.allowed_batch_sizes)
        if sizes and (sizes != sorted(set(sizes)) or sizes[-1] != self.max_batch_size):
            raise UsageError("batching: allowed_batch_sizes must increase and end with max_batch_size")
        return self

    def to_proto(self) -> Any:
        from tfship.serving.config_protos import BatchingParameters

        proto = BatchingParameters()
        proto.max_batch_size.value = self.max_batch_size
        proto.batch_timeout_micros.value = self.batch_timeout_micros
        proto.max_enqueued_batches.value = self.max_enqueued_batches
        proto.num_batch_threads.value = self.num_batch_threads
        proto.allowed_batch_sizes.extend(self.allowed_batch_sizes)
        proto.pad_variable_length_inputs = self.pad_variable_length_inputs
        return proto

    @classmethod
    def from_file(cls, path: Path) -> BatchingOptions:
        from tfship.serving.config_protos import BatchingParameters

        try:
            proto = text_format.Parse(Path(path).read_text(encoding="utf-8"), BatchingParameters())
        except (OSError, text_format.ParseError) as exc:
            raise UsageError(f"{path}: not a readable BatchingParameters text proto: {exc}") from None
        default = cls()
        value = lambda field_name: getattr(proto, field_name).value if proto.HasField(field_name) else getattr(default, field_name)  # noqa: E731
        return cls(max_batch_size=value("max_batch_size"), batch_timeout_micros=value("batch_timeout_micros"),
                   max_enqueued_batches=value("max_enqueued_batches"), num_batch_threads=value("num_batch_threads"),
                   allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
                   pad_variable_length_inputs=proto.pad_variable_length_inputs).check()


def monitoring_config() -> Any:
    from tfship.serving.config_protos import MonitoringConfig

    proto = MonitoringConfig()
    proto.prometheus_config.enable = True
    proto.prometheus_config.path = PROMETHEUS_PATH
    return proto


def ssl_config(server_key: Path, server_cert: Path, custom_ca: Path | None = None, client_verify: bool = False) -> Any:
    from tfship.serving.config_protos import SSLConfig

    proto = SSLConfig()
    proto.server_key = Path(server_key).read_text(encoding="utf-8")
    proto.server_cert = Path(server_cert).read_text(encoding="utf-8")
    if custom_ca:
        proto.custom_ca = Path(custom_ca).read_text(encoding="utf-8")
    proto.client_verify = client_verify
    return proto


def read_ssl_config(path: Path) -> Any:
    from tfship.serving.config_protos import SSLConfig

    try:
        return text_format.Parse(Path(path).read_text(encoding="utf-8"), SSLConfig())
    except (OSError, text_format.ParseError) as exc:
        raise UsageError(f"{path}: not a readable SSLConfig text proto: {exc}") from None


def write_text_file(path: Path, text: str, mode: int = 0o644) -> Path:
    """Replace ``path`` atomically: a temporary file in the same folder, fsynced, then ``os.replace``.

    TF Serving polls its config files: it reads either the old file or the new one, never half of one,
    and a crash leaves one of the two on disk.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0o600; TF Serving in a container, as another user, must still read it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:  # some file systems cannot fsync a folder; the file itself is already on disk
        pass
    finally:
        os.close(dir_fd)
    return path


def write_text_proto(path: Path, message: Message, mode: int = 0o644) -> Path:
    """Write a text proto atomically, created with ``mode`` (0o600 for files holding keys)."""
    return write_text_file(path, text_format.MessageToString(message), mode)
