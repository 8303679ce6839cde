"""`infir report`: one self-contained HTML page (and report.json) to look at a run's corpus.

    write_report(run_dir)            -> runs/<run>/report.html, runs/<run>/report.json
    write_comparison(run_a, run_b)   -> runs/<a>/compare-<b>.html / .json (side by side, with deltas)
    release_files(run_dir)           -> the report files `infir write` copies beside the card
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.report.build import ReportOptions, build
from pipeline.store import write_json_atomic

__all__ = ["ReportOptions", "build", "write_report", "write_comparison", "release_files"]


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_report(run: Path, options: ReportOptions | None = None, out_dir: Path | None = None, model=None) -> tuple[Path, dict]:
    from pipeline.report.html import render_report

    report, rows = build(Path(run), options, model)
    out_dir = Path(out_dir or run)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = out_dir / "report.html"
    _write_text(html_path, render_report(report, rows))
    write_json_atomic(report, out_dir / "report.json")
    return html_path, report


def write_comparison(run_a: Path, run_b: Path, options: ReportOptions | None = None, out: Path | None = None,
                     model=None) -> tuple[Path, dict]:
    from pipeline.report.compare import compare, render_compare

    a, _ = build(Path(run_a), options, model)
    b, _ = build(Path(run_b), options, model)
    figures = compare(a, b)
    out = Path(out) if out else Path(run_a) / f"compare-{Path(run_b).resolve().name}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_text(out, render_compare(a, b, figures))
    write_json_atomic({"a": a, "b": b, "deltas": figures}, out.with_suffix(".json"))
    return out, figures


def release_files(run_dir: Path) -> dict[str, Path]:
    """report.html and report.json of the run, if written and still describing its verify output.

    `infir write` does not make the report itself (embedding for the hardness measures takes
    minutes on a large run); it copies one made by `infir report` beforehand. A report older than
    the verify output it describes is left out, with a warning, rather than published stale."""
    from pipeline.progress import console
    from pipeline.store import read_success, stage_fingerprint

    html, js = Path(run_dir) / "report.html", Path(run_dir) / "report.json"
    if not (html.is_file() and js.is_file()):
        return {}
    try:
        recorded = json.loads(js.read_text(encoding="utf-8")).get("verify_fingerprint")
    except (OSError, ValueError):
        recorded = None
    verify = read_success(Path(run_dir) / "verify")
    if verify is None or recorded != stage_fingerprint(verify):
        console.print(f"[yellow]warning[/]: {html} describes an older verify output; not copied into the "
                      "release (rerun `infir report` first)")
        return {}
    return {"report.html": html, "report.json": js}
