"""Report folder: report.json plus a self-contained report.html (inline SVG charts, no plotting library)."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tfship.client.validate import ValidationReport


def svg_histogram(values: Iterable[float], title: str, *, log_x: bool = False, bins: int = 30, width: int = 520, height: int = 180) -> str:
    data = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if data.size == 0:
        return f"<p><em>{html.escape(title)}: no data</em></p>"
    if log_x:
        data = np.log10(np.maximum(data, 1e-12))
    counts, edges = np.histogram(data, bins=bins)
    top = max(int(counts.max()), 1)
    bar_w = (width - 60) / bins
    bars = []
    for i, count in enumerate(counts):
        h = (height - 50) * count / top
        x = 50 + i * bar_w
        bars.append(f'<rect x="{x:.1f}" y="{height - 30 - h:.1f}" width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" fill="#4477aa"><title>{count}</title></rect>')
    label = (lambda v: f"1e{v:.1f}") if log_x else (lambda v: f"{v:.3g}")
    axis = (f'<text x="50" y="{height - 12}" font-size="11">{label(edges[0])}</text>'
            f'<text x="{width - 10}" y="{height - 12}" font-size="11" text-anchor="end">{label(edges[-1])}</text>'
            f'<text x="45" y="20" font-size="11" text-anchor="end">{top}</text>')
    return (f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
            f'<text x="{width / 2}" y="14" font-size="12" text-anchor="middle">{html.escape(title)}</text>'
            f'<line x1="50" y1="{height - 30}" x2="{width - 10}" y2="{height - 30}" stroke="#333"/>'
            + "".join(bars) + axis + "</svg></figure>")


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:4px 8px;text-align:left}} .pass{{color:#171}} .fail{{color:#b11}}
figure{{display:inline-block;margin:0.5em}}</style></head><body>{body}</body></html>"""


def write_validation_report(directory: Path, report: ValidationReport) -> dict[str, Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = report.to_dict()
    json_path = directory / "report.json"
    json_path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    verdict = '<span class="pass">PASS</span>' if report.passed else '<span class="fail">FAIL</span>'
    parts = [f"<h1>tfship validate: {html.escape(report.model)} {verdict}</h1>",
             f"<p>target {html.escape(report.target)}, {html.escape(report.requested)}, served version(s) "
             f"{', '.join(map(str, report.served_versions)) or '-'}, {report.samples} samples, "
             f"{report.throughput:.1f} samples/s</p>"]
    if report.signature_problems:
        parts.append("<h2>Signature</h2><ul>" + "".join(f"<li>{html.escape(p)}</li>" for p in report.signature_problems) + "</ul>")
    if report.comparison is not None:
        rows = [[o.name, "pass" if o.passed else "FAIL", f"{o.max_abs:.3g}", f"{o.p99_abs:.3g}", f"{o.max_rel:.3g}",
                 list(o.worst_index), f"{o.worst_reference:.6g}", f"{o.worst_actual:.6g}", o.nan_count, o.inf_count,
                 "-" if o.top1_agreement is None else f"{o.top1_agreement:.4f}", o.tolerance.describe()]
                for o in report.comparison.outputs]
        parts.append("<h2>Outputs</h2>" + _table(["output", "result", "max abs", "p99 abs", "max rel", "worst index",
                                                    "expected there", "served there", "NaN", "Inf", "top-1", "tolerance"], rows))
        parts.append("<h2>Absolute error per output</h2>")
        for o in report.comparison.outputs:
            parts.append(svg_histogram(o.abs_errors_sample, f"{o.name}: |served - original| (log10)", log_x=True))
        parts.append("<h2>Worst elements</h2>")
        for o in report.comparison.outputs:
            parts.append(f"<h3>{html.escape(o.name)}</h3>" + _table(
                ["index", "original", "served", "abs error"],
                [[list(i), f"{r:.6g}", f"{a:.6g}", f"{e:.3g}"] for i, r, a, e in o.worst_cases]))
    parts.append("<h2>Latency per request</h2>")
    parts.append(_table(["requests", "p50 ms", "p90 ms", "p99 ms", "mean ms", "max ms"],
                        [[report.latency.count, f"{report.latency.p50_ms:.2f}", f"{report.latency.p90_ms:.2f}",
                          f"{report.latency.p99_ms:.2f}", f"{report.latency.mean_ms:.2f}", f"{report.latency.max_ms:.2f}"]]))
    parts.append(svg_histogram(report.latency.samples_ms, "request latency (ms)"))
    html_path = directory / "report.html"
    html_path.write_text(PAGE.format(title=f"tfship validate {html.escape(report.model)}", body="\n".join(parts)), encoding="utf-8")
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
