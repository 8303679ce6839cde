"""`make bench`: run every benchmark in one command and rewrite BENCHMARKS.md.

Each benchmark compares against a baseline measured in the same run (ratios, not absolute times).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def run(script: str, *args: str) -> str:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out.md"
        subprocess.run([sys.executable, str(BENCH / script), *args, "--out", str(out)], check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
        return out.read_text() if out.exists() else ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    ap.add_argument("--sizes", default="100000,1000000", help="BM25 collection sizes")
    args = ap.parse_args()
    parts = [
        "# Benchmarks\n",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
        f"Date: {dt.date.today().isoformat()}. Command: `make bench`.\n",
        "## LLM client vs bare AsyncOpenAI (local server, 100 ms latency, concurrency 32)\n",
        run("bench_llm_client.py"),
        "## Hard-negative mining\n",
        run("bench_mining.py", "--sizes", args.sizes),
    ]
    args.out.write_text("\n".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
