"""`infir eval` reports: the result as JSON and as a Markdown table, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["write_report", "markdown_report"]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def markdown_report(result: dict[str, Any], title: str) -> str:
    """Scalar figures as a two-column table; nested figures (pool, per-query values) stay in the JSON."""
    lines = [f"# {title}", "", "| figure | value |", "|---|---:|"]
    for k, v in result.items():
        if isinstance(v, (dict, list)):
            continue
        lines.append(f"| {k} | {_fmt(v).replace('|', chr(92) + '|')} |")
    pool = result.get("pool")
    if isinstance(pool, dict):
        lines += ["", "Pool: " + ", ".join(f"{k} {_fmt(v)}" for k, v in pool.items())]
    return "\n".join(lines) + "\n"


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(result: dict[str, Any], out_dir: str | Path, name: str, title: str) -> dict[str, str]:
    """Write ``out_dir/<name>.json`` and ``out_dir/<name>.md``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / f"{name}.json", out / f"{name}.md"
    _atomic(js, json.dumps(result, indent=2, default=str) + "\n")
    _atomic(md, markdown_report(result, title))
    return {"json": str(js), "markdown": str(md)}
