"""validate, compare and probe judge with the tolerance the export proved: the version's manifest.json, else
the float32 default; --atol/--rtol always win, and every result says which tolerance it used and whence."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_repo, run_cli
from engine_helpers import start_engine

from tfship.core.tolerance import FLOAT32

# Every golden output is moved by this much: beyond the old 1e-5 default, within the export's 1e-4.
SHIFT = 5e-5


@pytest.fixture(scope="module")
def engine(signed_repo, tmp_path_factory):
    repo = copy_repo(signed_repo["repo"], tmp_path_factory.mktemp("tolerance") / "models")
    engine = start_engine(repo, models=["digits"])
    yield {"repo": repo, "target": f"127.0.0.1:{engine.grpc_port}"}
    engine.stop(grace=0)


def _golden_copy(engine: dict, folder: Path, *, tolerance: dict | None = None, manifest: bool = True) -> Path:
    """golden.npz of version 1 with every output moved by SHIFT, in ``folder``; beside it (``manifest``) version 1's
    manifest.json, its float32 SavedModel parity tolerance replaced by ``tolerance`` when given."""
    version = engine["repo"] / "digits" / "1"
    folder.mkdir(parents=True)
    arrays = dict(np.load(version / "golden.npz"))
    arrays["outputs/probabilities"] = (arrays["outputs/probabilities"].astype(np.float64) + SHIFT).astype(np.float32)
    np.savez(folder / "golden.npz", **arrays)
    if manifest:
        data = json.loads((version / "manifest.json").read_text())
        if tolerance is not None:
            (entry,) = [p for p in data["parity"] if p["format"] == "savedmodel" and p["variant"] == "float32"]
            entry["tolerance"] = tolerance
        (folder / "manifest.json").write_text(json.dumps(data))
    return folder / "golden.npz"


def _validate(engine: dict, golden: Path, *extra: object):
    return run_cli("validate", "--target", engine["target"], "--model", "digits", "--version", "1", "--golden", golden, *extra)


def _json(result) -> dict:
    return json.loads(result.stdout)["data"]


def test_help_shows_where_the_default_tolerance_comes_from():
    for name, where in (("validate", "--golden"), ("compare", "--inputs"), ("probe", "--golden")):
        text = " ".join(run_cli(name, "--help").stdout.split())
        for option in ("--atol", "--rtol"):
            assert f"{option} FLOAT" in text
        assert text.count(f"[default: (the manifest.json beside {where}, else {FLOAT32.atol:g})]") == 2, (name, text)
        assert "1e-05" not in text


def test_an_answer_within_the_exports_tolerance_passes_by_default_and_fails_with_tighter_flags(engine, tmp_path):
    golden = _golden_copy(engine, tmp_path / "v", tolerance={"atol": 1e-4, "rtol": 1e-4, "min_top1": None})
    manifest = tmp_path / "v" / "manifest.json"

    passed = _validate(engine, golden, "--json", "--report", tmp_path / "report", "--junit", tmp_path / "pass.xml")
    assert passed.exit_code == 0, passed.stderr
    data = _json(passed)
    # The premise: the served answers differ from these golden outputs by more than 1e-5 and less than 1e-4.
    assert 1e-5 < data["outputs"][0]["max_abs"] < 1e-4
    assert data["tolerance"] == {"atol": 1e-4, "rtol": 1e-4, "min_top1": None, "source": "manifest", "flags": [],
                                 "manifest": str(manifest),
                                 "description": f"atol=0.0001 rtol=0.0001 from {manifest} (the float32 SavedModel's parity)"}
    assert json.loads((tmp_path / "report" / "report.json").read_text())["tolerance"]["source"] == "manifest"
    import html

    assert f"tolerance: atol=0.0001 rtol=0.0001 from {manifest}" in html.unescape((tmp_path / "report" / "report.html").read_text())
    suite = ET.parse(tmp_path / "pass.xml").getroot().find("testsuite")
    assert suite.find("properties/property[@name='tolerance']").get("value").endswith(f"from {manifest} (the float32 SavedModel's parity)")
    case = ET.parse(tmp_path / "pass.xml").getroot().find("testsuite/testcase[@name='output probabilities']")
    assert "within atol=0.0001 rtol=0.0001" in case.find("system-out").text

    human = _validate(engine, golden)
    assert human.exit_code == 0
    assert f"tolerance: atol=0.0001 rtol=0.0001 from {manifest}" in " ".join(human.stdout.split())

    failed = _validate(engine, golden, "--atol", "1e-5", "--rtol", "1e-5", "--json", "--junit", tmp_path / "fail.xml")
    assert failed.exit_code == 3
    assert _json(failed)["tolerance"]["source"] == "flags" and _json(failed)["tolerance"]["atol"] == 1e-5
    assert "does not predict what the original predicts within atol=1e-05 rtol=1e-05 from --atol/--rtol: output 'probabilities'" in failed.stderr
    failure = ET.parse(tmp_path / "fail.xml").getroot().find("testsuite/testcase[@name='output probabilities']/failure")
    assert failure.get("message").endswith("(atol=1e-05 rtol=1e-05)")


def test_a_tighter_tolerance_in_the_manifest_is_used(engine, tmp_path):
    golden = _golden_copy(engine, tmp_path / "v", tolerance={"atol": 2e-5, "rtol": 2e-5, "min_top1": None})
    manifest = tmp_path / "v" / "manifest.json"

    failed = _validate(engine, golden, "--json")
    assert failed.exit_code == 3
    tolerance = _json(failed)["tolerance"]
    assert (tolerance["atol"], tolerance["rtol"], tolerance["source"], tolerance["manifest"]) == (2e-5, 2e-5, "manifest", str(manifest))
    assert f"within atol=2e-05 rtol=2e-05 from {manifest}" in failed.stderr

    # One flag given: it wins, the other value still comes from the manifest (an element fails only beyond both).
    one_flag = _validate(engine, golden, "--atol", "1e-4", "--json")
    assert one_flag.exit_code == 0, one_flag.stderr
    tolerance = _json(one_flag)["tolerance"]
    assert (tolerance["atol"], tolerance["rtol"], tolerance["source"], tolerance["flags"]) == (1e-4, 2e-5, "manifest", ["atol"])
    assert tolerance["description"] == f"atol=0.0001 rtol=2e-05: atol from --atol, the rest from {manifest} (the float32 SavedModel's parity)"


def test_a_golden_set_outside_any_version_uses_the_float32_default(engine, tmp_path):
    golden = _golden_copy(engine, tmp_path / "loose", manifest=False)
    result = _validate(engine, golden, "--json")
    assert result.exit_code == 0, result.stderr
    tolerance = _json(result)["tolerance"]
    assert (tolerance["atol"], tolerance["rtol"], tolerance["min_top1"]) == (FLOAT32.atol, FLOAT32.rtol, FLOAT32.min_top1)
    assert (tolerance["source"], tolerance["manifest"]) == ("default", None)
    assert tolerance["description"] == f"{FLOAT32.describe()} from tfship's float32 default"
    assert _validate(engine, golden, "--atol", "1e-5", "--rtol", "1e-5").exit_code == 3


def test_a_manifest_without_a_savedmodel_tolerance_falls_back_to_the_default_and_says_so(engine, tmp_path):
    golden = _golden_copy(engine, tmp_path / "v", tolerance={})
    result = _validate(engine, golden, "--json")
    assert result.exit_code == 0, result.stderr
    tolerance = _json(result)["tolerance"]
    assert tolerance["source"] == "default" and tolerance["atol"] == FLOAT32.atol
    assert f"({tmp_path / 'v' / 'manifest.json'} records no float32 SavedModel tolerance)" in tolerance["description"]


@pytest.mark.parametrize("recorded", [{"atol": float("nan"), "rtol": 1e-4}, {"atol": -1, "rtol": 1e-4}, {"atol": "1e-4", "rtol": 1e-4},
                                      {"atol": 1e-4, "rtol": 1e-4, "min_top1": 2}])
def test_a_manifest_tolerance_that_is_not_one_is_refused_in_one_line(engine, tmp_path, recorded):
    golden = _golden_copy(engine, tmp_path / "v", tolerance=recorded)
    result = _validate(engine, golden, "--report", tmp_path / "report")
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line and str(tmp_path / "v" / "manifest.json") in line and "pass --atol and --rtol" in line
    assert not (tmp_path / "report").exists()
    # Both flags given: the manifest's tolerance is not needed, nor read.
    assert _validate(engine, golden, "--atol", "1e-4", "--rtol", "1e-4").exit_code == 0


@pytest.mark.parametrize("flag", [("--atol", "nan"), ("--rtol", "-1e-4"), ("--atol", "inf")])
def test_flags_that_are_not_a_tolerance_are_refused(engine, tmp_path, flag):
    golden = _golden_copy(engine, tmp_path / "v")
    result = _validate(engine, golden, *flag)
    assert result.exit_code == 2
    assert f"{flag[0]} {float(flag[1])}: expected a finite number >= 0" in result.stderr


def test_compare_takes_the_tolerance_of_the_manifest_beside_its_inputs(engine, tmp_path):
    golden = _golden_copy(engine, tmp_path / "v", tolerance={"atol": 3e-5, "rtol": 3e-5, "min_top1": None})
    plain = tmp_path / "plain.npz"
    shutil.copy(golden, plain)

    def compare(inputs: Path, *extra: object) -> dict:
        result = run_cli("compare", "--target", engine["target"], "--model", "digits", "--a", "1", "--b", "2", "--inputs", inputs,
                         "--json", *extra)
        assert result.exit_code == 0, result.stderr
        return _json(result)

    beside = compare(golden)
    assert beside["agree"] is True
    assert (beside["tolerance"]["atol"], beside["tolerance"]["source"]) == (3e-5, "manifest")
    assert beside["outputs"][0]["tolerance"]["atol"] == 3e-5
    assert compare(plain)["tolerance"]["source"] == "default"
    assert compare(golden, "--atol", "1e-3", "--rtol", "1e-3")["outputs"][0]["tolerance"]["atol"] == 1e-3
    human = run_cli("compare", "--target", engine["target"], "--model", "digits", "--a", "1", "--b", "2", "--inputs", plain)
    assert f"tolerance: {FLOAT32.describe()} from tfship's float32 default" in human.stdout


def test_probe_judges_with_the_manifest_tolerance(engine, tmp_path):
    golden = _golden_copy(engine, tmp_path / "v", tolerance={"atol": 1e-4, "rtol": 1e-4, "min_top1": None})

    def probe(*extra: object):
        return run_cli("probe", "--target", engine["target"], "--model", "digits", "--golden", golden, "--rounds", "1", "--json", *extra)

    matched = probe()
    assert matched.exit_code == 0, matched.stderr
    assert _json(matched)["ok"] == 1 and _json(matched)["tolerance"]["source"] == "manifest"
    assert "tfship probe: tolerance atol=0.0001 rtol=0.0001 from" in matched.stderr
    tight = probe("--atol", "1e-5", "--rtol", "1e-5")
    assert tight.exit_code == 3 and _json(tight)["mismatches"] == 1


def test_rollout_falls_back_to_the_float32_default(signed_repo, tmp_path):
    from tfship.serving.rollout import golden_tolerance

    assert golden_tolerance(tmp_path) == FLOAT32  # no manifest.json here
    folder = tmp_path / "v"
    folder.mkdir()
    data = json.loads((signed_repo["repo"] / "digits" / "1" / "manifest.json").read_text())
    for entry in data["parity"]:
        if entry["format"] == "savedmodel":
            entry["tolerance"] = {"atol": 2e-5, "rtol": 3e-5, "min_top1": None}
    (folder / "manifest.json").write_text(json.dumps(data))
    assert (golden_tolerance(folder).atol, golden_tolerance(folder).rtol) == (2e-5, 3e-5)
