"""The validation report as a person sees it: rendered by a real browser (Debian's headless chromium).

A model with two outputs is served by the local engine; ``tfship validate --report`` runs against it
with golden sets that match (within tolerance, or exactly) and one that does not. The browser shows the
verdict, one figure per output with its own verdict, exact matches as such, worst elements only where
errors exist, latency percentiles only with enough requests, the manifest and attestation links, and
no script or console errors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from browser import find_or_install_chromium, open_page
from conftest import run_cli
from engine_helpers import start_engine


@pytest.fixture(scope="session")
def chromium(tmp_path_factory):
    path, reason = find_or_install_chromium(tmp_path_factory.mktemp("chromium") / "apt-install.log")
    if path is None:
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def two_outputs(keys, tmp_path_factory):
    """A signed and attested version of a model with two outputs (class scores and an embedding), served by the local engine."""
    import keras

    from tfship.exporter import ExportOptions, export

    keras.utils.set_random_seed(7)
    features = keras.Input((6,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(features)
    model = keras.Model(features, {"scores": keras.layers.Dense(4, activation="softmax")(hidden),
                                   "embedding": keras.layers.Dense(3)(hidden)})
    folder = tmp_path_factory.mktemp("two")
    model.save(folder / "two.keras")
    np.savez(folder / "samples.npz", features=np.random.default_rng(0).normal(size=(64, 6)).astype("float32"))
    repo = folder / "models"
    export(ExportOptions(source=folder / "two.keras", name="two", repo=repo, formats=("savedmodel",), samples=folder / "samples.npz"))
    signed = run_cli("sign", repo / "two" / "1", "--key", keys["private"])  # writes the attestation, then model.sig
    assert signed.exit_code == 0, signed.stderr
    engine = start_engine(repo, public_key=keys["public"], models=["two"])
    yield {"version": repo / "two" / "1", "target": f"127.0.0.1:{engine.grpc_port}"}
    engine.stop(grace=0)


def _golden_variant(version: Path, destination: Path, change) -> Path:
    """A copy of the version's golden set and manifest whose outputs are changed by ``change(outputs)``."""
    destination.mkdir(parents=True)
    shutil.copy(version / "manifest.json", destination / "manifest.json")
    arrays = dict(np.load(version / "golden.npz"))
    outputs = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("outputs/")}
    change(outputs)
    arrays.update({f"outputs/{k}": v for k, v in outputs.items()})
    np.savez(destination / "golden.npz", **arrays)
    return destination


def _served(two_outputs) -> dict[str, np.ndarray]:
    """What the server answers for the golden inputs sent as one request, as ``_validate(..., *ONE_REQUEST)`` sends them.

    A row's float32 result can depend on how many rows the model computes at once (the matrix kernels TensorFlow
    picks for the CPU): the exported golden set, computed in-process at export, need not equal the served
    answer bit for bit on every machine. A golden set that must match exactly is made from this answer."""
    from tfship.client.grpc_client import ServingClient

    features = np.load(two_outputs["version"] / "golden.npz")["inputs/features"]
    with ServingClient(two_outputs["target"]) as client:
        return client.predict({"features": features}, "two")


ONE_REQUEST = ("--batch-size", "64")  # the golden set's 64 samples in one request, as _served sends them


def _validate(two_outputs, golden: Path, report: Path, *extra: object):
    return run_cli("validate", "--target", two_outputs["target"], "--model", "two", "--golden", golden, "--report", report,
                   "--atol", "1e-5", "--rtol", "1e-5", *extra)


def _figures(view) -> dict[str, dict]:
    return {f["attrs"]["data-output"]: f for f in view.elements if "output" in f["attrs"].get("class", "")}


def test_a_failing_output_is_shown_failing_next_to_its_figure(two_outputs, chromium, tmp_path):
    served = _served(two_outputs)

    def drift(outputs):
        outputs.update({k: served[k].copy() for k in outputs})
        outputs["embedding"][::4] += 0.01  # a quarter of the samples off by 0.01: beyond 1e-5
        outputs["scores"][1::2] += 3e-6  # half of the samples off by 3e-6: within 1e-5

    golden = _golden_variant(two_outputs["version"], tmp_path / "drifted", drift)
    result = _validate(two_outputs, golden, tmp_path / "report", *ONE_REQUEST)
    assert result.exit_code == 3, result.stderr
    view = open_page(chromium, tmp_path / "report" / "report.html", selector="figure, a")
    (tmp_path / "report.png").write_bytes(view.screenshot)  # for a person reading a failed run
    assert view.errors == []
    assert view.title == "tfship validate two: FAIL"
    assert view.text.splitlines()[0] == "tfship validate: two FAIL"
    figures = _figures(view)
    assert sorted(figures) == ["embedding", "scores"]
    for figure in figures.values():
        assert figure["visible"] and figure["width"] > 300 and figure["height"] > 200, figure
        assert len(figure["svgs"]) == 1 and figure["svgs"][0]["width"] > 300, figure  # the CDF, drawn
        assert "tolerance" in figure["text"]
    assert figures["embedding"]["text"].startswith("FAIL embedding: 48 of 192 elements beyond atol=1e-05 rtol=1e-05")
    assert figures["scores"]["text"].startswith("PASS scores: max abs error 3")  # 3e-6 in float32
    assert "; 128 of 256 elements exact;" in figures["scores"]["text"]
    assert "50.0% exact" in figures["scores"]["text"]  # the exact half, named on the plot (not a bar at 1e-12)
    assert "48 beyond" in figures["embedding"]["text"]  # counted on the plot, right of the tolerance line
    # Worst elements: for the output with errors, the drifted samples (every 4th row) by 0.01.
    worst = view.text.split("Worst elements", 1)[1]
    assert "embedding" in worst and "0.01" in worst
    assert "log10" not in view.text and "1e-12" not in view.text


def test_exact_matches_are_shown_as_such(two_outputs, chromium, tmp_path):
    served = _served(two_outputs)

    def exactly_served(outputs):
        outputs.update({k: served[k] for k in outputs})

    golden = _golden_variant(two_outputs["version"], tmp_path / "exact", exactly_served)
    result = _validate(two_outputs, golden, tmp_path / "report", *ONE_REQUEST)
    assert result.exit_code == 0, result.stderr
    view = open_page(chromium, tmp_path / "report" / "report.html")
    assert view.errors == []
    figures = _figures(view)
    assert sorted(figures) == ["embedding", "scores"]
    for name, figure in figures.items():
        assert figure["text"].startswith(f"PASS {name}: max abs error 0;"), figure["text"]
        assert "Exact match: all" in figure["text"] and figure["svgs"] == [] and figure["visible"]
    assert "Worst elements" not in view.text  # nothing is worst when nothing differs


def test_latency_percentiles_only_with_enough_requests_and_the_provenance_links(two_outputs, chromium, tmp_path):
    version = two_outputs["version"]
    few = _validate(two_outputs, version, tmp_path / "few")  # 64 samples in batches of 32: 2 requests
    many = _validate(two_outputs, version, tmp_path / "many", "--batch-size", "1", "--concurrency", "8")  # 64 requests
    assert few.exit_code == many.exit_code == 0, few.stderr + many.stderr
    few_view = open_page(chromium, tmp_path / "few" / "report.html", selector="a")
    many_view = open_page(chromium, tmp_path / "many" / "report.html", selector="figure")
    assert few_view.errors == many_view.errors == []
    few_latency = few_view.text.split("Latency per request", 1)[1]
    assert "2 requests: too few for p50, p90, p99 to mean something (p50 needs 20, p90 needs 100, p99 needs 1000" in few_latency
    assert "p50 ms" not in few_latency
    many_latency = many_view.text.split("Latency per request", 1)[1]
    assert "p50 ms" in many_latency and "p90 ms" not in many_latency and "64 requests: too few for p90, p99" in many_latency
    assert any("request latency (ms)" in (f["attrs"].get("aria-label", "") + f["text"]) or f["svgs"] for f in many_view.elements)
    # The links lead to this version's manifest and its attestation (written when the version was signed).
    links = {a["text"]: Path(unquote(urlparse(a["attrs"]["href"]).path)) for a in few_view.elements}
    assert (tmp_path / "few" / links["manifest.json"]).resolve() == (version / "manifest.json").resolve()
    assert (tmp_path / "few" / links["attestation.intoto.jsonl"]).resolve() == (version / "attestation.intoto.jsonl").resolve()
    assert json.loads((tmp_path / "few" / links["manifest.json"]).read_text())["name"] == "two"


def test_the_browser_harness_sees_script_errors(chromium, tmp_path):
    """The checks above rely on the harness reporting errors: a page that throws must be reported."""
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><html><body><figure>x</figure><script>console.error('drawn wrong'); undefinedCall();</script></body></html>")
    view = open_page(chromium, page)
    assert any("drawn wrong" in e for e in view.errors) and any("undefinedCall is not defined" in e for e in view.errors), view.errors
    assert len(view.elements) == 1
