"""Report folder: report.json plus a self-contained report.html (inline SVG figures, no script, no plotting library).

What the validation report shows, per output, is the verdict next to its figure: the distribution (CDF)
of each element's error as a fraction of the error it is allowed, against the tolerance line at 1. An
element fails when it is beyond both atol and rtol*|expected| (client.compare), so its allowed error is
max(atol, rtol*|expected|): an element passes exactly when its point lies left of the line. Exact
matches are shown as such (a log axis has no place for 0), worst elements only where errors exist, and
latency percentiles only once enough requests lie beyond them.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tfship.client.compare import OutputComparison
from tfship.client.validate import ValidationReport

# A percentile is shown once at least this many requests lie beyond it (p50: 20, p90: 100, p99: 1000).
MIN_TAIL_SAMPLES = 10
PERCENTILES = ((50, "p50_ms"), (90, "p90_ms"), (99, "p99_ms"))


def min_requests_for(percentile: int) -> int:
    """Requests needed before ``percentile`` has MIN_TAIL_SAMPLES beyond it (integer arithmetic: no 100.00000000000001)."""
    return -(-MIN_TAIL_SAMPLES * 100 // (100 - percentile))


def _e(value: object) -> str:
    return html.escape(str(value))


def svg_histogram(values: Iterable[float], title: str, *, bins: int = 30, width: int = 520, height: int = 180) -> str:
    data = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if data.size == 0:
        return f"<p><em>{_e(title)}: no data</em></p>"
    counts, edges = np.histogram(data, bins=bins)
    top = max(int(counts.max()), 1)
    bar_w = (width - 60) / bins
    bars = []
    for i, count in enumerate(counts):
        h = (height - 50) * count / top
        x = 50 + i * bar_w
        bars.append(f'<rect x="{x:.1f}" y="{height - 30 - h:.1f}" width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" fill="#4477aa"><title>{count}</title></rect>')
    axis = (f'<text x="50" y="{height - 12}" font-size="11">{edges[0]:.3g}</text>'
            f'<text x="{width - 10}" y="{height - 12}" font-size="11" text-anchor="end">{edges[-1]:.3g}</text>'
            f'<text x="45" y="20" font-size="11" text-anchor="end">{top}</text>')
    return (f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{_e(title)}">'
            f'<text x="{width / 2}" y="14" font-size="12" text-anchor="middle">{_e(title)}</text>'
            f'<line x1="50" y1="{height - 30}" x2="{width - 10}" y2="{height - 30}" stroke="#333"/>'
            + "".join(bars) + axis + "</svg></figure>")


def _allowed_text(output: OutputComparison) -> str:
    t = output.tolerance
    if t.min_top1 is not None:
        return f"allowed error = atol = {t.atol:g} (top-1 rule: agreement >= {t.min_top1:g})"
    return f"allowed error = max(atol, rtol\u00b7|expected|), atol = {t.atol:g}, rtol = {t.rtol:g}"


def svg_error_cdf(output: OutputComparison, width: int = 560, height: int = 250) -> str:
    """The CDF of error / allowed error on a log axis, with the tolerance line at 1 (left passes, right fails)."""
    ratios = np.asarray(output.error_ratio_sample, dtype=np.float64)
    n = ratios.size
    nonzero = np.sort(ratios[ratios > 0])
    finite = nonzero[np.isfinite(nonzero)]
    lo_exp = math.floor(math.log10(finite.min())) if finite.size else -3
    lo_exp = max(min(lo_exp, -1), -12)
    hi_exp = max(math.ceil(math.log10(finite.max())) if finite.size else 1, 1)
    left, right, top, bottom = 60, width - 16, 28, height - 46

    def x_of(ratio: float) -> float:
        if ratio <= 0:
            return left
        value = min(max(math.log10(ratio), lo_exp), hi_exp) if math.isfinite(ratio) else hi_exp
        return left + (right - left) * (value - lo_exp) / (hi_exp - lo_exp)

    def y_of(fraction: float) -> float:
        return bottom - (bottom - top) * fraction

    exact = float(np.sum(ratios == 0)) / n if n else 0.0
    below_axis = float(np.sum((ratios > 0) & (ratios < 10.0 ** lo_exp))) / n if n else 0.0
    points: list[tuple[float, float]] = [(float(left), y_of(0.0)), (float(left), y_of(exact + below_axis))]
    for i, ratio in enumerate(nonzero):
        if ratio < 10.0 ** lo_exp:
            continue
        x = x_of(float(ratio))
        points.append((x, points[-1][1]))
        points.append((x, y_of((n - nonzero.size + i + 1) / n)))
    points.append((right, points[-1][1]))
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    line_x = x_of(1.0)
    ticks = []
    step = max(1, math.ceil((hi_exp - lo_exp) / 8))
    for exp in range(lo_exp, hi_exp + 1, step):
        x = x_of(10.0 ** exp)
        ticks.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#333"/>'
                     f'<text x="{x:.1f}" y="{bottom + 16}" font-size="10" text-anchor="middle">1e{exp}</text>')
    for fraction in (0.0, 0.5, 1.0):
        y = y_of(fraction)
        ticks.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{fraction:g}</text>'
                     f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#ddd"/>')
    notes = []
    if exact:
        notes.append(f'<text x="{left + 4}" y="{y_of(exact) - 4:.1f}" font-size="10" fill="#171">{exact:.1%} exact</text>')
    beyond = int(np.sum(ratios > 1))
    title = f"{output.name}: error / allowed error, fraction of elements at or below (CDF)"
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{_e(title)}">'
            f'<rect x="{line_x:.1f}" y="{top}" width="{max(right - line_x, 0):.1f}" height="{bottom - top}" fill="#fbe3e3"/>'
            + "".join(ticks)
            + f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>'
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/>'
            f'<polyline points="{path}" fill="none" stroke="#2255aa" stroke-width="2"/>'
            f'<line x1="{line_x:.1f}" y1="{top - 6}" x2="{line_x:.1f}" y2="{bottom}" stroke="#b11" stroke-width="2" stroke-dasharray="5,3"/>'
            f'<text x="{line_x + 4:.1f}" y="{top + 6}" font-size="11" fill="#b11">tolerance</text>'
            f'<text x="{right}" y="{top + 20}" font-size="10" fill="#b11" text-anchor="end">{beyond} beyond</text>'
            + "".join(notes)
            + f'<text x="{(left + right) / 2:.1f}" y="{height - 12}" font-size="11" text-anchor="middle">'
            f'|served \u2212 original| / allowed error (log scale; right of the line fails)</text>'
            f'<text x="{width / 2:.1f}" y="14" font-size="12" text-anchor="middle">{_e(output.name)}</text>'
            f'<text transform="translate(14 {(top + bottom) / 2:.1f}) rotate(-90)" font-size="11" text-anchor="middle">'
            f'fraction of elements</text></svg>')


def _verdict(passed: bool) -> str:
    return '<strong class="pass">PASS</strong>' if passed else '<strong class="fail">FAIL</strong>'


def output_figure(output: OutputComparison) -> str:
    """One figure per output: its verdict and numbers as the caption, the error CDF (or "exact match")."""
    sampled = (f" (plotted: {len(output.error_ratio_sample)} of {output.total_elements} elements, evenly spaced)"
               if 0 < len(output.error_ratio_sample) < output.total_elements else "")
    if output.passed:
        detail = (f"max abs error {output.max_abs:.3g}; {output.exact_elements} of {output.total_elements} elements exact; "
                  f"{_allowed_text(output)}")
    else:
        detail = f"{output.reason}; {_allowed_text(output)}"
    if output.top1_agreement is not None:
        detail += f"; top-1 agreement {output.top1_agreement:.4f}"
    caption = f'<figcaption>{_verdict(output.passed)} <code>{_e(output.name)}</code>: {_e(detail)}{_e(sampled)}</figcaption>'
    if output.total_elements and output.exact_elements == output.total_elements:
        body = (f'<div class="exact"><strong>Exact match</strong>: all {output.total_elements} served values equal the '
                f'original\u2019s bit for bit (error 0: nothing to plot).</div>')
    elif not output.error_ratio_sample:
        body = f'<div class="exact">No element-wise errors to plot: {_e(output.reason or "compared as a whole")}.</div>'
    else:
        body = svg_error_cdf(output)
    return f'<figure class="output" data-output="{_e(output.name)}" data-verdict="{"pass" if output.passed else "fail"}">{caption}{body}</figure>'


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:4px 8px;text-align:left}} .pass{{color:#171}} .fail{{color:#b11}}
figure{{display:inline-block;margin:0.5em;vertical-align:top}} figure.output{{display:block;border:1px solid #ddd;padding:0.5em;max-width:580px}}
figcaption{{margin-bottom:0.4em}} .exact{{padding:1.5em;background:#eef7ee;color:#171}} .note{{color:#555}}</style></head><body>{body}</body></html>"""


def _link(target: Path, directory: Path) -> str:
    try:
        return Path(os.path.relpath(target.resolve(), directory.resolve())).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return target.resolve().as_uri()


def _provenance(version_dir: Path | None, directory: Path) -> str:
    if version_dir is None:
        return '<p class="note">No manifest: the expected outputs were computed with --original.</p>'
    manifest = version_dir / "manifest.json"
    if not manifest.exists():
        return f'<p class="note">No manifest.json beside the golden set in {_e(version_dir)}.</p>'
    links = [f'<a id="manifest" href="{_e(_link(manifest, directory))}">manifest.json</a>']
    attestation = version_dir / "attestation.intoto.jsonl"
    if attestation.exists():
        links.append(f'<a id="attestation" href="{_e(_link(attestation, directory))}">attestation.intoto.jsonl</a>')
    return f"<p>Expected version: {' and '.join(links)} ({_e(version_dir)})</p>"


def _latency(report: ValidationReport) -> list[str]:
    lat = report.latency
    parts = ["<h2>Latency per request</h2>"]
    if not lat.count:
        return parts + ["<p>No requests were made.</p>"]
    low = min(lat.samples_ms) if lat.samples_ms else lat.mean_ms
    shown = [(q, getattr(lat, key)) for q, key in PERCENTILES if lat.count >= min_requests_for(q)]
    parts.append(_table(["requests", "mean ms", "min ms", "max ms"] + [f"p{q} ms" for q, _ in shown],
                        [[lat.count, f"{lat.mean_ms:.2f}", f"{low:.2f}", f"{lat.max_ms:.2f}"] + [f"{v:.2f}" for _, v in shown]]))
    missing = [q for q, _ in PERCENTILES if lat.count < min_requests_for(q)]
    if missing:
        needs = ", ".join(f"p{q} needs {min_requests_for(q)}" for q in missing)
        parts.append(f'<p class="note" id="latency-note">{lat.count} requests: too few for '
                     f'{", ".join(f"p{q}" for q in missing)} to mean something ({needs}: at least {MIN_TAIL_SAMPLES} requests '
                     f'beyond a percentile). Use <code>tfship bench</code> to measure latency.</p>')
    if lat.count >= min_requests_for(50):
        parts.append(svg_histogram(lat.samples_ms, "request latency (ms)"))
    return parts


def write_validation_report(directory: Path, report: ValidationReport, *, version_dir: Path | None = None) -> dict[str, Path]:
    """Write report.json and report.html into ``directory``; ``version_dir`` is the expected version's folder
    (its manifest and attestation are linked)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = report.to_dict()
    json_path = directory / "report.json"
    json_path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    parts = [f'<h1>tfship validate: {_e(report.model)} <span id="verdict">{_verdict(report.passed)}</span></h1>',
             f"<p>target {_e(report.target)}, {_e(report.requested)}, served version(s) "
             f"{', '.join(map(str, report.served_versions)) or '-'}, {report.samples} samples, "
             f"{report.throughput:.1f} samples/s</p>", _provenance(version_dir, directory)]
    if report.tolerance is not None:
        parts.append(f'<p id="tolerance">tolerance: {_e(report.tolerance.describe())}</p>')
    if report.signature_problems:
        parts.append(f"<h2>Signature {_verdict(False)}</h2><ul>" + "".join(f"<li>{_e(p)}</li>" for p in report.signature_problems)
                     + "</ul><p>No predictions were compared: the served signature differs from the manifest.</p>")
    if report.comparison is not None:
        outputs = report.comparison.outputs
        rows = [[o.name, "pass" if o.passed else "FAIL", f"{o.exact_elements}/{o.total_elements}", f"{o.max_abs:.3g}",
                 f"{o.p99_abs:.3g}", f"{o.max_rel:.3g}", o.failed_elements, o.nan_count, o.inf_count,
                 "-" if o.top1_agreement is None else f"{o.top1_agreement:.4f}", o.tolerance.describe()] for o in outputs]
        parts.append("<h2>Outputs</h2>" + _table(["output", "result", "exact", "max abs", "p99 abs", "max rel", "beyond tolerance",
                                                    "NaN", "Inf", "top-1", "tolerance"], rows))
        parts.append("<h2>Error against tolerance</h2>")
        parts += [output_figure(o) for o in outputs]
        with_errors = [o for o in outputs if o.max_abs > 0 and o.worst_cases]
        if with_errors:
            parts.append("<h2>Worst elements</h2>")
            for o in with_errors:
                parts.append(f"<h3>{_e(o.name)}</h3>" + _table(
                    ["index", "original", "served", "abs error"],
                    [[list(i), f"{r:.9g}", f"{a:.9g}", f"{e:.3g}"] for i, r, a, e in o.worst_cases if e > 0]))
    parts += _latency(report)
    html_path = directory / "report.html"
    html_path.write_text(PAGE.format(title=f"tfship validate {_e(report.model)}: {'PASS' if report.passed else 'FAIL'}",
                                     body="\n".join(parts)), encoding="utf-8")
    return {"json": json_path, "html": html_path}


def write_bench_report(directory: Path, result: dict[str, Any]) -> dict[str, Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "bench.json"
    json_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    rows = [[r["mode"], r["concurrency"], r["batch_size"], r["requests"], r["errors"], f"{r['throughput_rps']:.1f}",
             f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}"] for r in result["runs"]]
    chart = _throughput_chart(result["runs"])
    body = (f"<h1>tfship bench: {html.escape(result['model'])} at {html.escape(result['target'])}</h1>"
            + _table(["mode", "concurrency", "batch", "requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms"], rows) + chart)
    html_path = directory / "bench.html"
    html_path.write_text(PAGE.format(title="tfship bench", body=body), encoding="utf-8")
    return {"json": json_path, "html": html_path}


def _throughput_chart(runs: list[dict[str, Any]], width: int = 520, height: int = 220) -> str:
    if not runs:
        return ""
    top = max(r["throughput_rps"] for r in runs) or 1.0
    bar_w = (width - 60) / len(runs)
    bars = []
    for i, r in enumerate(runs):
        h = (height - 60) * r["throughput_rps"] / top
        x = 50 + i * bar_w
        bars.append(f'<rect x="{x:.1f}" y="{height - 40 - h:.1f}" width="{bar_w - 4:.1f}" height="{h:.1f}" fill="#228833">'
                    f'<title>{r["throughput_rps"]:.1f} req/s, p99 {r["p99_ms"]:.2f} ms</title></rect>'
                    f'<text x="{x + bar_w / 2:.1f}" y="{height - 25}" font-size="10" text-anchor="middle">c{r["concurrency"]}/b{r["batch_size"]}</text>')
    return (f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
            f'<text x="{width / 2}" y="14" font-size="12" text-anchor="middle">throughput (requests/s)</text>'
            + "".join(bars) + "</svg></figure>")
