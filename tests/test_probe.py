"""``tfship probe`` against a real local engine: a rollout to a version that disagrees with the golden
set turns ``tfship_probe_parity_ok`` to 0; SIGTERM ends the prober cleanly (exit 0)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from conftest import ROOT, copy_repo, free_port, run_cli
from engine_helpers import start_engine, wait_until


@pytest.fixture(scope="module")
def drifted_version(digits_model, keys, tmp_path_factory):
    """Version 4 of digits, signed, exported from the same architecture with other weights: what a bad rollout ships."""
    import keras

    from tfship.exporter import ExportOptions, export

    other = keras.models.clone_model(digits_model["model"])
    other.set_weights([w * 0.5 for w in digits_model["model"].get_weights()])
    path = tmp_path_factory.mktemp("drift") / "drifted.keras"
    other.save(path)
    staging = tmp_path_factory.mktemp("staging") / "models"
    export(ExportOptions(source=path, name="digits", repo=staging, version=4, formats=("savedmodel",), sign_key=keys["private"],
                         samples=digits_model["samples"]))
    return staging / "digits" / "4"


@pytest.fixture()
def latest_engine(signed_repo, keys, tmp_path):
    from tfship.serving.config import VersionPolicy

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    engine = start_engine(repo, public_key=keys["public"], policy=VersionPolicy("latest", 1), models=["digits"])
    yield {"engine": engine, "repo": repo, "target": f"127.0.0.1:{engine.grpc_port}"}
    engine.stop(grace=0)


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of the metrics endpoint, parsed by prometheus_client's own text parser."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _scrape_or_empty(port: int) -> dict:
    try:
        return _scrape(port)
    except OSError:  # not listening yet
        return {}


def test_probe_flips_parity_to_0_when_a_drifted_version_rolls_out_and_exits_0_on_sigterm(latest_engine, drifted_version):
    repo, metrics_port = latest_engine["repo"], free_port()
    golden = repo / "digits" / "2" / "golden.npz"  # 128 samples; 10 per round in requests of 4: 3 requests a round
    command = [sys.executable, "-m", "tfship", "probe", "--target", latest_engine["target"], "--model", "digits", "--golden", str(golden),
               "--every", "200ms", "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1", "--max-samples", "10",
               "--batch-size", "4", "--atol", "1e-4", "--rtol", "1e-4", "--json"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        healthy = wait_until(lambda: (s := _scrape_or_empty(metrics_port)) and _value(s, "tfship_probe_parity_ok", model="digits", version="2") == 1 and s,
                             60, "the probe reporting version 2 as matching")
        assert _value(healthy, "tfship_probe_last_success_timestamp_seconds", model="digits") > 0
        assert _value(healthy, "tfship_probe_max_abs_error", model="digits", version="2", output="probabilities") < 1e-4
        # The rollout: version 4 appears in the repository; the engine (latest:1) swaps it in.
        os.rename(drifted_version, repo / "digits" / "4")
        drifted = wait_until(lambda: (s := _scrape_or_empty(metrics_port)) and _value(s, "tfship_probe_parity_ok", model="digits", version="4") == 0 and s,
                             60, "the probe reporting version 4 as not matching")
        assert _value(drifted, "tfship_probe_parity_ok", model="digits", version="2") is None  # no stale verdict for version 2
        assert _value(drifted, "tfship_probe_max_abs_error", model="digits", version="4", output="probabilities") > 1e-3
        assert _value(drifted, "tfship_probe_rounds_total", model="digits", result="mismatch") >= 1
        # Bounded work: every round sent exactly 3 requests (10 samples in batches of 4).
        rounds = sum(_value(drifted, "tfship_probe_rounds_total", model="digits", result=r) or 0 for r in ("ok", "mismatch", "error"))
        requests = _value(drifted, "tfship_probe_request_latency_seconds_count", model="digits")
        assert 3 * rounds <= requests <= 3 * rounds + 3
        success = _value(drifted, "tfship_probe_last_success_timestamp_seconds", model="digits")
        wait_until(lambda: (_value(_scrape(metrics_port), "tfship_probe_rounds_total", model="digits", result="mismatch") or 0) >= 3,
                   30, "more mismatched rounds")
        assert _value(_scrape(metrics_port), "tfship_probe_last_success_timestamp_seconds", model="digits") == success
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err[-2000:]
    import json

    summary = json.loads(out)["data"]
    assert summary["versions_seen"] == [2, 4] and summary["mismatches"] >= 3 and summary["ok"] >= 1
    assert "version 4: output 'probabilities'" in summary["last_problem"]
    assert "round 1: ok (version 2)" in err and "MISMATCH (version 4)" in err


def test_probe_with_rounds_exits_3_on_a_mismatch_and_4_when_nothing_answers(latest_engine):
    repo = latest_engine["repo"]
    golden = repo / "digits" / "2" / "golden.npz"
    ok = run_cli("probe", "--target", latest_engine["target"], "--model", "digits", "--golden", golden, "--every", "10ms",
                 "--rounds", "2", "--atol", "1e-4", "--rtol", "1e-4", "--json")
    assert ok.exit_code == 0, ok.stderr
    import json

    import numpy as np

    assert json.loads(ok.stdout)["data"]["ok"] == 2
    # A golden set whose outputs are not what the model computes (doubled): every round mismatches.
    data = dict(np.load(golden))
    data["outputs/probabilities"] = data["outputs/probabilities"] * 2
    altered = repo.parent / "altered" / "golden.npz"
    altered.parent.mkdir()
    np.savez(altered, **data)
    bad = run_cli("probe", "--target", latest_engine["target"], "--model", "digits", "--golden", altered, "--every", "10ms", "--rounds", "2")
    assert bad.exit_code == 3 and "2 mismatched" in bad.stdout
    nobody = run_cli("probe", "--target", f"127.0.0.1:{free_port()}", "--model", "digits", "--golden", golden, "--rounds", "1",
                     "--timeout", "1")
    assert nobody.exit_code == 4 and "1 failed" in nobody.stdout and "not reachable" in nobody.stdout


def test_probe_refuses_a_bad_schedule(signed_repo):
    golden = signed_repo["repo"] / "digits" / "1" / "golden.npz"
    result = run_cli("probe", "--target", "127.0.0.1:1", "--model", "digits", "--golden", golden, "--every", "soon")
    assert result.exit_code == 2 and "--every 'soon': expected a duration like 30s, 5m, 500ms" in result.stderr
