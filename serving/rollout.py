"""``tfship rollout``: serve a candidate under the ``canary`` label beside ``stable``, promote it only on evidence.

On the engine ``serve up`` recorded (the local engine or the container), through ``serve reload``'s path
(verify, pin in models.config, HandleReloadConfigRequest, wait for AVAILABLE):

1. the candidate N is loaded beside the stable version S (labels: ``stable`` -> S), then labelled ``canary``;
   labels go on in a second reload because TF Serving refuses a label on a version that is not yet
   AVAILABLE (``--allow_version_labels_for_unavailable_models`` is off by default);
2. the canary's golden set (its inputs and the original model's outputs, ``N/golden.npz``) goes through the
   server by label and is compared within the tolerance the export proved (manifest.json), and so does
   stable's; then single-sample requests alternate between the two labels for the latency sample;
3. ``stable`` moves to N (and S is unloaded) only if the canary matched and its p99 <= factor x stable's p99;
   otherwise the canary is unloaded and S stays ``stable``.

The evidence and the decision go to ``reports/rollout/<time>.json``. Exit codes: 0 promoted, 3 rolled back
on parity (``EXIT_MISMATCH``), 6 rolled back on latency (``EXIT_LATENCY``, this command's own).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfship.core.errors import EXIT_MISMATCH, ServerUnavailable, UsageError
from tfship.serving import config as cfg

log = logging.getLogger(__name__)

EXIT_LATENCY = 6  # rolled back: the canary's p99 exceeds --latency-factor x stable's
CANARY = "canary"
STABLE = "stable"
WARMUP_REQUESTS = 5


@dataclass(frozen=True)
class RolloutOptions:
    repo: Path
    model: str
    version: int
    stable: int | None = None
    checks: tuple[str, ...] = ("parity", "latency")
    latency_factor: float = 2.0
    latency_requests: int = 100
    public_key: Path | None = None
    allow_unsigned: bool = False
    report_dir: Path = Path("reports/rollout")
    timeout: float = 120.0


@dataclass(frozen=True)
class RolloutResult:
    model: str
    stable: int
    canary: int
    decision: str  # promoted or rolled_back
    reason: str
    exit_code: int
    evidence: dict[str, Any] = field(default_factory=dict)
    report: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "stable": self.stable, "canary": self.canary, "decision": self.decision,
                "reason": self.reason, "exit_code": self.exit_code, "evidence": self.evidence, "report": self.report,
                "seconds": self.seconds}


def golden_tolerance(version_dir: Path) -> Any:
    """The tolerance the export proved the SavedModel against (manifest.json), else the float32 default
    (tfship.core.tolerance.FLOAT32, the same fallback as ``tfship validate``): what --require_golden uses."""
    from tfship.core.tolerance import FLOAT32, Tolerance

    try:
        manifest = json.loads((Path(version_dir) / "manifest.json").read_text(encoding="utf-8"))
        for entry in manifest.get("parity", ()):
            if entry.get("format") == "savedmodel" and entry.get("variant", "float32") == "float32" and entry.get("tolerance"):
                t = entry["tolerance"]
                return Tolerance(atol=float(t["atol"]), rtol=float(t["rtol"]), min_top1=t.get("min_top1"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return FLOAT32


def _versions_on_disk(repo: Path, model: str) -> list[int]:
    found = cfg.scan(repo)
    if model not in found:
        raise UsageError(f"--model {model}: no such model in {repo} (models: {', '.join(found) or 'none'})")
    if len(found) > 1:
        # serve reload's --versions policy is one for the whole repository; pinning S,N for this model would pin
        # them for every model.
        raise UsageError(f"{repo} holds {len(found)} models: rollout works on a repository serving one model; "
                         f"serve {model} from a repository of its own")
    return found[model]


def _choose_stable(repo: Path, model: str, version: int, stable: int | None, served: list[int]) -> int:
    from tfship.serving.config_writer import recorded_options

    if stable is None:
        _, labels = recorded_options(repo)
        stable = labels.get(model, {}).get(STABLE) or labels.get("*", {}).get(STABLE)
    if stable is None:
        others = [v for v in served if v != version]
        stable = max(others) if others else None
    if stable is None:
        raise UsageError(f"{model}: no stable version to compare with (none served besides {version}); pass --stable N")
    if stable == version:
        raise UsageError(f"--version {version} is already the stable version of {model}")
    return stable


def _reload(options: RolloutOptions, versions: list[int], labels: dict[str, int]) -> dict[str, Any]:
    from tfship.serving.reload import reload

    result = reload(options.repo, public_key=options.public_key, allow_unsigned=options.allow_unsigned, skip_invalid=False,
                    versions="specific:" + ",".join(map(str, sorted(set(versions)))), labels={options.model: labels},
                    timeout=options.timeout)
    if not result.get("reloaded"):
        raise ServerUnavailable(f"the engine did not apply the new config: {result.get('note', 'no reason given')}")
    return result


def _parity(client: Any, options: RolloutOptions, label: str, version: int) -> dict[str, Any]:
    from tfship.client.golden import load_golden
    from tfship.client.validate import validate

    version_dir = Path(options.repo) / options.model / str(version)
    if not (version_dir / "golden.npz").is_file():
        return {"passed": False, "golden": None, "reason": f"{version_dir} has no golden.npz"}
    golden = load_golden(version_dir)
    report = validate(client, options.model, golden.inputs, golden.outputs, golden.signature,
                      golden_tolerance(version_dir), label=label)
    failures = report.comparison.failures() if report.comparison else []
    reason = "; ".join(report.signature_problems) or "; ".join(f"output '{o.name}': {o.reason}" for o in failures)
    return {"passed": report.passed, "golden": str(version_dir / "golden.npz"), "reason": reason,
            "served_versions": list(report.served_versions), "samples": report.samples,
            "outputs": [o.to_dict() for o in report.comparison.outputs] if report.comparison else []}


def _latency(client: Any, options: RolloutOptions, sample: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Single-sample requests alternating between the labels, so that drift on the machine hits both alike."""
    from tfship.client.latency import LatencyStats

    durations: dict[str, list[float]] = {STABLE: [], CANARY: []}
    for i in range(WARMUP_REQUESTS + options.latency_requests):
        for label in (STABLE, CANARY) if i % 2 == 0 else (CANARY, STABLE):
            began = time.perf_counter()
            client.predict(sample, options.model, label=label)
            if i >= WARMUP_REQUESTS:
                durations[label].append(time.perf_counter() - began)
    return {label: LatencyStats.of(values).to_dict() for label, values in durations.items()}


def rollout(options: RolloutOptions) -> RolloutResult:
    from tfship.client.golden import load_golden
    from tfship.client.grpc_client import ServingClient
    from tfship.serving.lifecycle import is_running
    from tfship.serving.options import address
    from tfship.serving.state import read_state

    began = time.monotonic()
    repo = Path(options.repo)
    on_disk = _versions_on_disk(repo, options.model)
    if options.version not in on_disk:
        raise UsageError(f"--version {options.version}: {options.model} has no such version in {repo} "
                         f"(on disk: {', '.join(map(str, on_disk))})")
    state = read_state(repo)
    if state is None or not is_running(state):
        raise ServerUnavailable(f"no engine serves {repo}: start one first (tfship serve up --repo {repo} --detach), "
                                f"or print the Kubernetes patches with --print-k8s")
    if state.tls:
        raise UsageError("rollout talks to the engine without a client certificate: its gRPC port uses TLS")
    stable = _choose_stable(repo, options.model, options.version, options.stable, list(state.models.get(options.model, [])))
    if stable not in on_disk:
        raise UsageError(f"stable version {stable}: {options.model} has no such version in {repo}")

    _reload(options, [stable, options.version], {STABLE: stable})
    evidence: dict[str, Any] = {STABLE: {"version": stable}, CANARY: {"version": options.version}}
    try:
        _reload(options, [stable, options.version], {STABLE: stable, CANARY: options.version})
        target = address(state.host, state.grpc_port)
        with ServingClient(target, timeout=30) as client:
            if "parity" in options.checks:
                for label, version in ((STABLE, stable), (CANARY, options.version)):
                    evidence[label]["parity"] = _parity(client, options, label, version)
            if "latency" in options.checks:
                inputs = load_golden(repo / options.model / str(options.version)).inputs
                sample = {name: value[:1] for name, value in inputs.items()}
                for label, stats in _latency(client, options, sample).items():
                    evidence[label]["latency"] = stats
    except BaseException:
        log.warning("rollout interrupted: removing the canary, %s stays on version %d", options.model, stable)
        _reload(options, [stable], {STABLE: stable})
        raise

    decision, reason, code = "promoted", "", 0
    canary_parity = evidence[CANARY].get("parity")
    if canary_parity is not None and not canary_parity["passed"]:
        decision, code = "rolled_back", EXIT_MISMATCH
        reason = f"the canary does not match its golden set: {canary_parity['reason']}"
    elif "latency" in options.checks:
        canary_p99, stable_p99 = evidence[CANARY]["latency"]["p99_ms"], evidence[STABLE]["latency"]["p99_ms"]
        limit = options.latency_factor * stable_p99
        if canary_p99 > limit:
            decision, code = "rolled_back", EXIT_LATENCY
            reason = (f"the canary's p99 {canary_p99:.3f} ms exceeds {options.latency_factor:g} x stable's p99 "
                      f"{stable_p99:.3f} ms = {limit:.3f} ms")
        else:
            reason = f"parity passed; p99 {canary_p99:.3f} ms <= {options.latency_factor:g} x {stable_p99:.3f} ms"
    else:
        reason = "parity passed" if canary_parity is not None else "no check requested"
    if decision == "promoted":
        _reload(options, [options.version], {STABLE: options.version})
    else:
        _reload(options, [stable], {STABLE: stable})
    log.info("%s: %s (%s)", options.model, decision, reason)
    result = RolloutResult(options.model, stable, options.version, decision, reason, code, evidence,
                           seconds=round(time.monotonic() - began, 3))
    report = write_report(options.report_dir, result, options)
    return RolloutResult(**{**result.__dict__, "report": str(report)})


def write_report(folder: Path, result: RolloutResult, options: RolloutOptions) -> Path:
    folder = Path(folder)
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    data = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "repo": str(options.repo),
            "checks": list(options.checks), "latency_factor": options.latency_factor,
            "latency_requests": options.latency_requests, **result.to_dict()}
    return cfg.write_text_file(folder / f"{stamp}.json", json.dumps(data, indent=2, sort_keys=True) + "\n")


def k8s_patches(repo: Path, model: str, version: int, *, stable: int | None, name: str, namespace: str | None,
                public_key: Path | None, allow_unsigned: bool) -> dict[str, Any]:
    """The ConfigMap patches of ``tfship deploy kubernetes``'s models.config: canary, then promote or rollback."""
    from tfship.serving import gate
    from tfship.serving.deploy import MODELS_DIR, config_map_patch, dump, models_config_text

    repo = Path(repo)
    on_disk = _versions_on_disk(repo, model)
    excluded = gate.gate(repo, public_key=public_key, allow_unsigned=allow_unsigned, skip_invalid=False)
    verified = [v for v in on_disk if (model, v) not in excluded]
    if version not in verified:
        raise UsageError(f"--version {version}: {model} has no such version in {repo} (on disk: {', '.join(map(str, on_disk))})")
    if stable is None:
        older = [v for v in verified if v < version]
        if not older:
            raise UsageError(f"{model}: no version older than {version} to be stable; pass --stable N")
        stable = max(older)
    if stable == version or stable not in verified:
        raise UsageError(f"--stable {stable}: expected another version of {model} on disk (on disk: {', '.join(map(str, on_disk))})")

    def patch(versions: list[int], labels: dict[str, int]) -> dict[str, Any]:
        entries = cfg.build_entries(repo, base_root=MODELS_DIR, policy=cfg.VersionPolicy("specific", versions=tuple(sorted(versions))),
                                    labels={model: labels})
        return config_map_patch(name, models_config_text(entries), namespace)

    patches = {"canary": patch([stable, version], {STABLE: stable, CANARY: version}),
               "promote": patch([version], {STABLE: version}),
               "rollback": patch([stable], {STABLE: stable})}
    text = "".join(f"# {step}: kubectl patch configmap {name}-config --type merge --patch-file <this document>\n---\n{dump(p)}"
                   for step, p in patches.items())
    return {"model": model, "stable": stable, "canary": version, "patches": patches, "patch_text": text}


__all__ = ["CANARY", "EXIT_LATENCY", "STABLE", "RolloutOptions", "RolloutResult", "golden_tolerance", "k8s_patches",
           "rollout", "write_report"]

