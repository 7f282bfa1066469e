"""What CI pipelines get from tfship validate: JUnit XML in the shape CI tools read, and the example
GitHub Actions workflow and GitLab CI job, valid against their published schemas and calling the CLI
with the options it has."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, copy_repo, run_cli
from engine_helpers import start_engine

EXAMPLES = ROOT / "examples" / "ci"

# --- JUnit XML ------------------------------------------------------------------------------------
# The shape CI tools read is the JUnit schema of Jenkins' xunit plugin, junit-10.xsd (pytest validates
# its own --junitxml output against it; GitLab and GitHub test reporters read the same elements). No
# copy of it ships in an installed package here, so its rules are checked as written there:
#   testsuites: attributes name, time, tests, failures, errors; children: testsuite only.
#   testsuite: name, tests, failures, errors required; time (digits, at most 3 decimals), skipped,
#              timestamp, hostname, ... optional; children: testsuite, properties, testcase, system-out/err.
#   properties > property: name and value required.
#   testcase: name required; time, classname, group; children: skipped, error(s), failure, system-out/err.
#   failure / skipped: attributes type and message; text allowed.
SCHEMA = {
    "testsuites": ({"name", "time", "tests", "failures", "errors"}, set(), {"testsuite"}),
    "testsuite": ({"name", "tests", "failures", "errors", "group", "time", "skipped", "timestamp", "hostname", "id",
                   "package", "file", "log", "url", "version"}, {"name", "tests", "failures", "errors"},
                  {"testsuite", "properties", "testcase", "system-out", "system-err"}),
    "properties": (set(), set(), {"property"}),
    "property": ({"name", "value"}, {"name", "value"}, set()),
    "testcase": ({"name", "time", "classname", "group", "file", "line"}, {"name"},
                 {"skipped", "error", "errors", "failure", "system-out", "system-err", "properties"}),
    "failure": ({"type", "message"}, set(), set()),
    "error": ({"type", "message"}, set(), set()),
    "skipped": ({"type", "message"}, set(), set()),
    "system-out": (set(), set(), set()),
    "system-err": (set(), set(), set()),
}
SUREFIRE_TIME = re.compile(r"^(([0-9]{0,3},)*[0-9]{3}|[0-9]{0,3})*(\.[0-9]{0,3})?$")


def junit_problems(document: bytes) -> list[str]:
    """Where ``document`` breaks the JUnit schema's rules above (empty when it follows them)."""
    root = ET.fromstring(document)
    problems = [] if root.tag in ("testsuites", "testsuite") else [f"root element <{root.tag}>"]

    def walk(element: ET.Element, path: str) -> None:
        allowed, required, children = SCHEMA.get(element.tag, (None, set(), set()))
        if allowed is None:
            problems.append(f"{path}: unknown element")
            return
        problems.extend(f"{path}: attribute {a!r} not allowed" for a in set(element.attrib) - allowed)
        problems.extend(f"{path}: attribute {a!r} missing" for a in required - set(element.attrib))
        if "time" in element.attrib and element.tag in ("testsuites", "testsuite") and not SUREFIRE_TIME.match(element.attrib["time"]):
            problems.append(f"{path}: time {element.attrib['time']!r} is not digits with at most 3 decimals")
        if element.tag == "testsuite":
            cases = element.findall("testcase")
            counted = {"tests": len(cases), "failures": sum(c.find("failure") is not None for c in cases)}
            problems.extend(f"{path}: {k}={element.get(k)} but {v} found" for k, v in counted.items() if element.get(k) != str(v))
        for child in element:
            if child.tag not in children:
                problems.append(f"{path}: <{child.tag}> not allowed inside")
            else:
                walk(child, f"{path}/{child.tag}")

    walk(root, root.tag)
    return problems


def test_the_junit_check_accepts_pytests_own_junit_and_refuses_broken_documents(tmp_path):
    (tmp_path / "test_sample.py").write_text("def test_ok():\n    pass\n\ndef test_bad():\n    assert 1 == 2\n")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={tmp_path / 'pytest.xml'}",
                    str(tmp_path / "test_sample.py")], capture_output=True, cwd=tmp_path, timeout=120)
    assert junit_problems((tmp_path / "pytest.xml").read_bytes()) == []
    broken = b'<testsuites><testsuite name="x" tests="2" failures="0"><testcase classname="c"/></testsuite></testsuites>'
    assert junit_problems(broken) == ["testsuites/testsuite: attribute 'errors' missing", "testsuites/testsuite: tests=2 but 1 found",
                                      "testsuites/testsuite/testcase: attribute 'name' missing"]


@pytest.fixture(scope="module")
def engine(signed_repo, tmp_path_factory):
    repo = copy_repo(signed_repo["repo"], tmp_path_factory.mktemp("junit") / "models")
    engine = start_engine(repo, models=["digits"])
    yield {"repo": repo, "target": f"127.0.0.1:{engine.grpc_port}"}
    engine.stop(grace=0)


def test_junit_of_a_passing_validation(engine, tmp_path):
    golden = engine["repo"] / "digits" / "1" / "golden.npz"
    result = run_cli("validate", "--target", engine["target"], "--model", "digits", "--version", "1", "--golden", golden,
                     "--junit", tmp_path / "ci" / "junit.xml")
    assert result.exit_code == 0, result.stderr
    document = (tmp_path / "ci" / "junit.xml").read_bytes()
    assert junit_problems(document) == []
    suite = ET.fromstring(document).find("testsuite")
    assert suite.get("name") == "tfship validate digits version 1" and suite.get("failures") == "0"
    assert [(c.get("classname"), c.get("name")) for c in suite.findall("testcase")] == [("digits.v1", "signature"),
                                                                                          ("digits.v1", "output probabilities")]
    assert {p.get("name"): p.get("value") for p in suite.find("properties")}["target"] == engine["target"]
    assert f"junit: {tmp_path / 'ci' / 'junit.xml'}" in result.stdout


def test_junit_of_a_failing_validation_carries_the_worst_elements_and_the_tolerance(engine, tmp_path):
    version = engine["repo"] / "digits" / "1"
    folder = tmp_path / "altered"
    folder.mkdir()
    shutil.copy(version / "manifest.json", folder)
    arrays = dict(np.load(version / "golden.npz"))
    arrays["outputs/probabilities"][5, 3] += 0.25  # one element off: the served model no longer "matches" it
    np.savez(folder / "golden.npz", **arrays)
    result = run_cli("validate", "--target", engine["target"], "--model", "digits", "--version", "1", "--golden", folder / "golden.npz",
                     "--junit", tmp_path / "junit.xml", "--atol", "1e-4", "--rtol", "1e-4")
    assert result.exit_code == 3
    document = (tmp_path / "junit.xml").read_bytes()
    assert junit_problems(document) == []
    root = ET.fromstring(document)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "1", "0")
    case = root.find("testsuite/testcase[@name='output probabilities']")
    failure = case.find("failure")
    assert failure.get("type") == "PredictionMismatch"
    assert failure.get("message") == "1 of 1280 elements beyond atol=0.0001 rtol=0.0001; max abs error 0.25 (atol=0.0001 rtol=0.0001)"
    assert "tolerance: atol=0.0001 rtol=0.0001" in failure.text
    worst = failure.text.split("worst elements", 1)[1].splitlines()[1]
    assert worst.startswith("  [5, 3]: ") and worst.endswith(", 0.25")
    assert root.find("testsuite/testcase[@name='signature']/failure") is None


def test_junit_when_the_signature_differs(engine, tmp_path):
    import json

    folder = tmp_path / "v"
    shutil.copytree(engine["repo"] / "digits" / "1", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["signature"]["outputs"][0]["name"] = "logits"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("validate", "--target", engine["target"], "--model", "digits", "--golden", folder / "golden.npz", "--junit",
                     tmp_path / "junit.xml")
    assert result.exit_code == 3
    document = (tmp_path / "junit.xml").read_bytes()
    assert junit_problems(document) == []
    failure = ET.fromstring(document).find("testsuite/testcase[@name='signature']/failure")
    assert "output 'logits' is missing from the served signature" in failure.get("message")


# --- CI examples ----------------------------------------------------------------------------------

def _check_jsonschema(schema: str, path: Path) -> tuple[int, str]:
    """check-jsonschema's own command, in-process (its import takes seconds): (exit code, output)."""
    pytest.importorskip("check_jsonschema", reason="check-jsonschema (dev extra) validates the CI files against their schemas")
    from check_jsonschema.cli.main_command import main
    from click.testing import CliRunner

    # --builtin-schema: the copy vendored in check-jsonschema's wheel (from SchemaStore), never downloaded.
    result = CliRunner().invoke(main, ["--builtin-schema", f"vendor.{schema}", str(path)])
    return result.exit_code, result.output


@pytest.mark.parametrize(("schema", "name"), [("github-workflows", "github-actions.yml"), ("gitlab-ci", "gitlab-ci.yml")])
def test_ci_examples_are_valid_against_their_published_schemas(schema, name, tmp_path):
    code, output = _check_jsonschema(schema, EXAMPLES / name)
    assert code == 0, output
    # The check can fail: a misspelt key is refused.
    broken = tmp_path / name
    text = (EXAMPLES / name).read_text()
    broken.write_text(text.replace("runs-on:", "run-on:") if schema == "github-workflows" else text.replace("  script:", "  scripts:"))
    code, output = _check_jsonschema(schema, broken)
    assert code == 1 and "Schema validation errors were encountered" in output, output


def _tfship_calls(name: str) -> list[str]:
    data = yaml.safe_load((EXAMPLES / name).read_text())
    if name.startswith("github"):
        lines = [line for job in data["jobs"].values() for step in job["steps"] for line in step.get("run", "").splitlines()]
    else:
        job = data["tfship-release"]
        lines = job["before_script"] + job["script"] + job["after_script"]
    return [line.strip() for line in lines if line.strip().startswith("tfship ")]


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_ci_examples_export_sign_serve_validate_with_options_tfship_has(name):
    import click

    from tfship.cli import cli

    calls = [_expand(c, name) for c in _tfship_calls(name)]
    assert [" ".join(c.split()[1:3]) if c.split()[1] == "serve" else c.split()[1] for c in calls] == \
        ["export", "sign", "serve up", "validate", "serve down"]
    for call in calls:
        args = shlex.split(call)[1:]
        # Parse exactly as the CLI will (unknown options and bad values raise), without running anything.
        context = cli.make_context("tfship", list(args))
        name_, command, rest = cli.resolve_command(context, _remaining(context))
        while isinstance(command, click.Group):
            context = command.make_context(name_, rest, parent=context)
            name_, command, rest = command.resolve_command(context, _remaining(context))
        params = command.make_context(name_, rest, parent=context).params
        if name_ == "validate":
            assert params["junit_path"] == Path("reports/junit.xml") and params["report_dir"] == Path("reports/validate")
        if name_ == "up":
            assert params["engine"] == "local" and params["detach"] is True


def _remaining(context) -> list[str]:
    """The tokens after a group's own options (Click 8.2 deprecates protected_args; 9.0 keeps them all in args)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return [*context.protected_args, *context.args]


def _expand(call: str, name: str) -> str:
    """The command line with the file's variables filled in (and the runner's own, by example)."""
    data = yaml.safe_load((EXAMPLES / name).read_text())
    variables = {k: str(v) for k, v in (data.get("env") or data.get("variables") or {}).items()}
    variables.update(RUNNER_TEMP="/tmp/runner", TFSHIP_SIGNING_KEY="/tmp/signing.key", CI_PROJECT_DIR="/builds/project")
    return re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: variables[m.group(1) or m.group(2)], call)


def test_ci_examples_upload_the_report_and_the_junit_xml():
    github = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    upload = next(s for s in github["jobs"]["export-sign-validate"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "reports/"
    gitlab = yaml.safe_load((EXAMPLES / "gitlab-ci.yml").read_text())["tfship-release"]["artifacts"]
    assert gitlab["when"] == "always" and gitlab["reports"]["junit"] == "reports/junit.xml" and "reports/" in gitlab["paths"]


def _job_script(name: str, env: dict[str, str]) -> tuple[list[str], list[str]]:
    """(the job's commands, the commands that run even after a failure), as the CI system would run them."""
    data = yaml.safe_load((EXAMPLES / name).read_text())
    if name.startswith("github"):
        env.update({k: str(v) for k, v in data["env"].items()})
        steps = [s for s in data["jobs"]["export-sign-validate"]["steps"] if "run" in s and s.get("name") != "Install tfship"]
        for step in steps:
            env.update({k: v for k, v in (step.get("env") or {}).items() if "${{" not in v})
        return [s["run"] for s in steps if "if" not in s], [s["run"] for s in steps if s.get("if") == "always()"]
    env.update({k: str(v) for k, v in data["variables"].items()})
    job = data["tfship-release"]
    return job["script"], job["after_script"]


@pytest.mark.slow  # about 30 s each: export, sign, start an engine, validate
@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_the_ci_job_runs_here(name, digits_model, keys, tmp_path):
    """The job's own commands in bash, on a real model in a project laid out as the file expects."""
    project = tmp_path / "project"
    (project / "model").mkdir(parents=True)
    (project / "keys").mkdir()
    shutil.copy(digits_model["keras"], project / "model" / "digits.keras")
    shutil.copy(digits_model["samples"], project / "model" / "samples.npz")
    shutil.copy(keys["public"], project / "keys" / "tfship.pub")
    grpc_port, rest_port = _free_ports()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "CI_PROJECT_DIR": str(project),
           "RUNNER_TEMP": str(tmp_path), "SIGNING_KEY_PEM": keys["private"].read_text(),  # the GitHub secret's text
           "TFSHIP_SIGNING_KEY": str(keys["private"])}  # GitLab's File variable: a path
    script, always = _job_script(name, env)

    def local(lines: list[str]) -> str:  # free ports here; only the SavedModel, to keep the test short
        text = "\n".join(lines).replace("8500", str(grpc_port)).replace("8501", str(rest_port))
        return text.replace("--formats savedmodel,tflite,onnx --strict", "--formats savedmodel")

    try:
        done = subprocess.run(["bash", "-e", "-c", local(script)], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    finally:
        subprocess.run(["bash", "-c", local(always)], cwd=project, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert junit_problems((project / "reports" / "junit.xml").read_bytes()) == []
    assert 'failures="0"' in (project / "reports" / "junit.xml").read_text()
    assert "PASS" in (project / "reports" / "validate" / "report.html").read_text()
    assert (project / "models" / "digits" / "1" / "attestation.intoto.jsonl").exists()  # signed by the job


def _free_ports() -> tuple[int, int]:
    from conftest import free_port

    return free_port(), free_port()
