"""`infir report` on a finished run: wall time, peak RSS and the size of the page it writes.

The acceptance bar (issue 19): on the 100k-candidate run of bench_memory.py, under 2 minutes on the
2-core machine and an HTML file under 20 MB. Make that run once (it is kept under its work dir):

    python bench/bench_memory.py --sizes 100000
    python bench/bench_report.py /tmp/infir-bench-pipeline/memory/runs/mem-100000 [--out FILE]

The report runs as its own `infir` process (cold start, model load and all), as a user would run it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("args", nargs="*", help="extra `infir report` flags, after --")
    a = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, "-m", "pipeline.cli", "report", str(a.run), *a.args], cwd=REPO, env=env).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"infir report failed (exit {rc})")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    html, js = a.run / "report.html", a.run / "report.json"
    rep = json.loads(js.read_text())
    h = rep.get("hardness") or {}
    load = os.getloadavg()[0]
    text = (
        f"`infir report` on the {rep['rows']:,}-candidate run of bench_memory.py ({rep['funnel']['status']['accepted']:,} "
        f"accepted): **{wall:.1f} s** wall (one cold `infir` process; the report's own count {rep['seconds']:.1f} s), "
        f"peak RSS {peak:,.0f} MiB, report.html **{html.stat().st_size / 1e6:.1f} MB**, report.json "
        f"{js.stat().st_size / 1e3:.0f} kB. Measures over all {rep['quality'].get('rows', 0):,} rows; hardness over a "
        f"seeded sample of {h.get('rows', 0):,} rows; the browser holds {rep['browser']['rows']:,} rows. "
        f"Load average at the end: {load:.1f} on {os.cpu_count()} cores (the machine is shared)."
    )
    print(text)
    if a.out:
        with a.out.open("a", encoding="utf-8") as f:
            f.write(text + "\n\n")


if __name__ == "__main__":
    main()
