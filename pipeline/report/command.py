"""`infir report`: one run's page, or two runs side by side (the CLI only parses the flags)."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import InfirError
from pipeline.progress import console
from pipeline.report import ReportOptions, write_comparison, write_report


def run_report(runs: list[Path], out: Path | None, *, browse_rows: int, hardness_rows: int, hardness_seconds: float,
               seed: int, hardness: bool) -> Path:
    if len(runs) > 2:
        raise InfirError("give one run directory, or two to compare")
    for o, name in ((browse_rows, "--browse-rows"), (hardness_rows, "--hardness-rows")):
        if o < 0:
            raise InfirError(f"{name} {o}: expected a number >= 0")
    opts = ReportOptions(browse_rows=browse_rows, hardness_rows=hardness_rows, hardness_seconds=hardness_seconds,
                         seed=seed, hardness=hardness)
    if len(runs) == 2:
        path, _ = write_comparison(runs[0], runs[1], opts, out)
    else:
        path, rep = write_report(runs[0], opts)
        console.print(f"{rep['rows']:,} rows, {rep['funnel']['status']['accepted']:,} accepted; {rep['seconds']:.1f} s")
    console.print(f"[green]report[/]: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return path
