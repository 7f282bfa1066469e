"""JUnit XML for ``tfship validate --junit``: the format CI systems show natively.

One ``<testsuite>`` per validated model and served version(s), one ``<testcase>`` per output (plus one
for the signature check, which runs first). A failing output carries a ``<failure>`` whose message is
the verdict in one line and whose text lists the tolerance and the worst elements.

The element and attribute names are those of the schema CI tools read (Jenkins' ``junit-10.xsd``, which
GitHub's test reporters and GitLab's ``artifacts:reports:junit`` also accept): ``testsuites`` >
``testsuite`` (name, tests, failures, errors, skipped, time, timestamp) > ``properties`` and
``testcase`` (name, classname, time) > ``failure`` (message, type).
"""

from __future__ import annotations

import datetime
import socket
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from tfship.client.compare import OutputComparison
from tfship.client.validate import ValidationReport


def _versions(report: ValidationReport) -> str:
    return "+".join(map(str, report.served_versions)) or "none"


def _failure_text(output: OutputComparison) -> str:
    lines = [f"output '{output.name}': {output.reason}",
             f"tolerance: {output.tolerance.describe()} (an element fails when beyond both atol and rtol*|expected|)",
             f"max abs error {output.max_abs:.6g}, p99 abs {output.p99_abs:.6g}, max rel {output.max_rel:.6g}, "
             f"{output.failed_elements} of {output.total_elements} elements beyond tolerance, "
             f"NaN {output.nan_count}, Inf {output.inf_count}"]
    if output.top1_agreement is not None:
        lines.append(f"top-1 agreement {output.top1_agreement:.4f}")
    if output.worst_cases and output.max_abs > 0:
        lines.append("worst elements (index: expected -> served, abs error):")
        lines += [f"  {list(index)}: {ref:.9g} -> {act:.9g}, {err:.3g}" for index, ref, act, err in output.worst_cases]
    return "\n".join(lines)


def _suite(report: ValidationReport, timestamp: str) -> ET.Element:
    classname = f"{report.model}.v{_versions(report)}"
    suite = ET.Element("testsuite", name=f"tfship validate {report.model} version {_versions(report)}",
                       timestamp=timestamp, hostname=socket.gethostname(), time=f"{report.seconds:.3f}")
    properties = ET.SubElement(suite, "properties")
    for name, value in (("target", report.target), ("model", report.model), ("requested", report.requested),
                        ("served_versions", _versions(report)), ("samples", str(report.samples)),
                        ("tolerance", report.tolerance.describe() if report.tolerance else "")):
        ET.SubElement(properties, "property", name=name, value=value)
    cases = []
    signature = ET.Element("testcase", name="signature", classname=classname, time="0")
    if report.signature_problems:
        failure = ET.SubElement(signature, "failure", type="SignatureMismatch",
                                message="the served signature differs from the manifest: " + "; ".join(report.signature_problems))
        failure.text = "\n".join(report.signature_problems)
    cases.append(signature)
    outputs = report.comparison.outputs if report.comparison else ()
    # Each output was checked over the whole run: its time is the run's, shared.
    for output in outputs:
        case = ET.Element("testcase", name=f"output {output.name}", classname=classname, time=f"{report.seconds:.3f}")
        if not output.passed:
            message = f"{output.reason} ({output.tolerance.describe()})"
            ET.SubElement(case, "failure", type="PredictionMismatch", message=message).text = _failure_text(output)
        else:
            ET.SubElement(case, "system-out").text = (
                f"max abs error {output.max_abs:.6g} within {output.tolerance.describe()}; "
                f"{output.exact_elements} of {output.total_elements} elements exact")
        cases.append(case)
    failures = sum(1 for c in cases if c.find("failure") is not None)
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", "0")
    # properties first, then the test cases (the schema's sequence)
    suite.extend(cases)
    return suite


def junit_xml(reports: Sequence[ValidationReport]) -> bytes:
    """The JUnit XML document (UTF-8) for one or more validation runs."""
    timestamp = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    root = ET.Element("testsuites", name="tfship validate")
    suites = [_suite(r, timestamp) for r in reports]
    root.extend(suites)
    for key in ("tests", "failures", "errors"):
        root.set(key, str(sum(int(s.get(key, "0")) for s in suites)))
    root.set("time", f"{sum(r.seconds for r in reports):.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def write_junit(path: Path, reports: Sequence[ValidationReport]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(junit_xml(reports))
    return path
