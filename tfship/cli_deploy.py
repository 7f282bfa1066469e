"""``tfship deploy kubernetes|kserve`` (manifests) and ``tfship rollout`` (canary, promoted or rolled back on evidence)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tfship.command import command, split_list
from tfship.core.errors import UsageError


@click.group("deploy")
def deploy_group() -> None:
    """Kubernetes and KServe manifests for a verified repository."""


def _render_deploy(console: Any, data: dict[str, Any]) -> None:
    models = "; ".join(f"{name}: versions {', '.join(map(str, versions))}" for name, versions in data["models"].items())
    console.print(f"{data['target']} manifests for {models} (image {data['image']}, Kubernetes {data['kubernetes_version']}):")
    for path in data["files"]:
        console.print(f"  {path}")


def _deploy_options(fn: Any) -> Any:
    options = [
        click.option("--repo", type=click.Path(path_type=Path), default=Path("models"), show_default=True, help="Model repository."),
        click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the YAML files."),
        click.option("--public-key", type=click.Path(path_type=Path), envvar="TFSHIP_PUBLIC_KEY",
                     help="Public key (PEM) every version must verify with; shipped in a ConfigMap [env TFSHIP_PUBLIC_KEY]."),
        click.option("--image", help="Server image: tfship's (default tfship-model-server:<version>) or tensorflow/serving:<TF version>."),
        click.option("--verify-image", help="Image running 'tfship verify' (and the status probe for tensorflow/serving); default tfship's."),
        click.option("--storage", help="Where the pods find the repository: pvc:NAME (default pvc:<name>-models), s3://... or gs://..."),
        click.option("--name", default="tfship", show_default=True, help="Name (prefix) of the objects."),
        click.option("--namespace", help="metadata.namespace of every object (default: none, kubectl's context decides)."),
        click.option("--versions", default="latest:1", show_default=True, help="Versions served: latest:N, all, specific:1,2."),
        click.option("--replicas", type=click.IntRange(1), default=2, show_default=True, help="Minimum replicas."),
        click.option("--max-replicas", type=click.IntRange(1), default=10, show_default=True, help="Maximum replicas (autoscaler)."),
        click.option("--require-golden/--no-require-golden", default=True, show_default=True,
                     help="tfship's image: ready only once each version's golden set replays within tolerance."),
        click.option("--drain-seconds", type=click.IntRange(0), default=30, show_default=True, help="In-flight requests' time to finish on SIGTERM."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _deploy(target: str, **values: Any) -> dict[str, Any]:
    from tfship.serving.deploy import DeployOptions, default_image, generate, write

    out = values.pop("out")
    kustomize = values.pop("kustomize", False)
    values["image"] = values.get("image") or default_image()
    options = DeployOptions(target=target, kustomize=kustomize, **values)
    manifests = generate(options)
    paths = write(manifests, out, kustomize=kustomize)
    return {"target": target, "image": options.image, "models": manifests.models, "files": [str(p) for p in paths],
            "kubernetes_version": manifests.kubernetes_version}


@deploy_group.command("kubernetes")
@_deploy_options
@click.option("--kustomize", is_flag=True, help="Also write kustomization.yaml listing the files.")
@click.option("--autoscale", type=click.Choice(["hpa", "keda"]), default="hpa", show_default=True,
              help="hpa: CPU; keda: a KEDA ScaledObject on the tfship_batch_queue_depth gauge and CPU.")
@click.option("--prometheus", default="http://prometheus-operated.monitoring.svc:9090", show_default=True,
              help="Prometheus KEDA asks (--autoscale keda).")
@click.option("--queue-threshold", type=click.IntRange(1), default=8, show_default=True, help="Queued requests per replica KEDA aims at.")
@click.option("--fetch-image", help="Image of the init container that copies s3:// or gs:// storage.")
@command("deploy kubernetes", _render_deploy)
def deploy_kubernetes(**values: Any) -> dict[str, Any]:
    """Deployment (verify init container, probes, drain), Service, PDB, HPA or KEDA, ConfigMap, NetworkPolicy.

    Refuses (exit 5, nothing written) while any version fails verification.
    """
    return _deploy("kubernetes", **values)


@deploy_group.command("kserve")
@_deploy_options
@click.option("--kustomize", is_flag=True, help="Also write kustomization.yaml listing the files.")
@command("deploy kserve", _render_deploy)
def deploy_kserve(**values: Any) -> dict[str, Any]:
    """A ServingRuntime for tfship's image and one InferenceService per model.

    Refuses (exit 5, nothing written) while any version fails verification.
    """
    return _deploy("kserve", **values)


@deploy_group.command("probe", hidden=True)
@click.option("--target", required=True)
@click.option("--model", "models", multiple=True, required=True)
@click.option("--timeout", type=float, default=4.0)
def deploy_probe(target: str, models: tuple[str, ...], timeout: float) -> None:
    """Exec readiness probe for tensorflow/serving: exit 0 when every model has an AVAILABLE version."""
    from tfship.serving.deploy import probe

    problem = probe(target, list(models), timeout)
    if problem:
        click.echo(f"not ready: {problem}", err=True)
        raise SystemExit(1)


def _render_rollout(console: Any, data: dict[str, Any]) -> None:
    if data.get("patches") is not None:
        console.print(data["patch_text"], end="", markup=False, highlight=False)
        return
    console.print(f"{data['model']}: canary version {data['canary']} against stable version {data['stable']}: "
                  f"{data['decision'].replace('_', ' ').upper()} ({data['reason']})")
    for label in ("stable", "canary"):
        evidence = data["evidence"].get(label) or {}
        parity = evidence.get("parity")
        latency = evidence.get("latency") or {}
        timing = f"p50 {latency['p50_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms" if latency else "no latency sample"
        console.print(f"  {label} (version {evidence.get('version')}): parity "
                      f"{'-' if parity is None else ('pass' if parity['passed'] else 'FAIL')}, {timing}")
    if data.get("report"):
        console.print(f"report: {data['report']}")


@click.command("rollout")
@click.option("--repo", type=click.Path(path_type=Path), default=Path("models"), show_default=True, help="Served model repository.")
@click.option("--model", required=True, help="Model name.")
@click.option("--version", "version", type=click.IntRange(1), required=True, help="The candidate version (the canary).")
@click.option("--stable", "stable", type=click.IntRange(1), help="The stable version (default: the 'stable' label, else the served version).")
@click.option("--traffic-check", default="parity,latency", show_default=True, help="Checks: parity, latency (comma-separated).")
@click.option("--latency-factor", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Promote only if the canary's p99 <= F x stable's p99.")
@click.option("--latency-requests", type=click.IntRange(10), default=100, show_default=True, help="Requests per label in the latency sample.")
@click.option("--public-key", type=click.Path(path_type=Path), envvar="TFSHIP_PUBLIC_KEY", help="Public key (PEM) [env TFSHIP_PUBLIC_KEY].")
@click.option("--allow-unsigned", is_flag=True, help="Development only: serve unverified versions.")
@click.option("--report-dir", type=click.Path(path_type=Path), default=Path("reports/rollout"), show_default=True)
@click.option("--print-k8s", is_flag=True, help="Print the ConfigMap patches (models.config with canary and stable labels) instead.")
@click.option("--name", default="tfship", show_default=True, help="With --print-k8s: the --name given to 'tfship deploy'.")
@click.option("--namespace", help="With --print-k8s: the namespace of the ConfigMap.")
@command("rollout", _render_rollout)
def rollout_cmd(repo, model, version, stable, traffic_check, latency_factor, latency_requests, public_key, allow_unsigned,
                report_dir, print_k8s, name, namespace):
    """Serve VERSION as 'canary' beside 'stable', check parity (its golden set) and p99 latency against stable,
    then promote (stable -> VERSION) or remove the canary.

    Exit 0 promoted, 3 rolled back on parity, 6 rolled back on latency, 4 no engine serving the repository.
    """
    from tfship.serving import rollout

    checks = split_list(traffic_check)
    unknown = sorted(set(checks) - {"parity", "latency"})
    if unknown:
        raise UsageError(f"--traffic-check {','.join(unknown)}: choose parity, latency")
    if print_k8s:
        return rollout.k8s_patches(repo, model, version, stable=stable, name=name, namespace=namespace,
                                   public_key=public_key, allow_unsigned=allow_unsigned)
    result = rollout.rollout(rollout.RolloutOptions(
        repo=repo, model=model, version=version, stable=stable, checks=tuple(checks), latency_factor=latency_factor,
        latency_requests=latency_requests, public_key=public_key, allow_unsigned=allow_unsigned, report_dir=report_dir))
    return result.to_dict(), result.exit_code


COMMANDS = [deploy_group, rollout_cmd]
