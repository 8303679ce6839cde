"""`make bench`: run every benchmark in one command and rewrite BENCHMARKS.md.

Each benchmark compares against a baseline or limit measured in the same run (ratios, not absolute
times). Sections of the existing BENCHMARKS.md that no benchmark here produces (training, the
before/after record of speed fixes) are carried over unchanged, after the generated ones.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def run(script: str, *args: str) -> tuple[str, float]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out.md"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(BENCH / script), *args, "--out", str(out)], check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
        return (out.read_text() if out.exists() else ""), time.perf_counter() - t0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
        mem_s = f", {mem / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        mem_s = ""
    return f"{cpu}, {os.cpu_count()} cores{mem_s}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


# Older hand-written titles of what these benchmarks now produce: never carried over next to them.
REPLACED = {"client": ("LLM client",), "mining": ("BM25 mining", "Dense mining", "Hard-negative mining"),
            "pipeline": ("End-to-end",), "memory": ("Memory",), "ray": ("Local vs Ray",),
            "scale": ("The paper's run",), "stream": ("Streamed vs stage-by-stage",)}


def kept_sections(path: Path, produced: set[str], replaced: tuple[str, ...] = ()) -> list[str]:
    """`## ` sections of the old file whose titles are not produced by this run."""
    if not path.exists():
        return []
    parts = re.split(r"(?m)^(?=## )", path.read_text())
    out = []
    for p in parts[1:]:
        title = p.splitlines()[0][3:].strip()
        if title not in produced and not title.startswith(replaced):
            out.append(p.rstrip() + "\n")
    return out


def _old_header(path: Path) -> str | None:
    """The first paragraph after the title of the existing file, without any earlier partial-run note."""
    if not path.exists():
        return None
    m = re.search(r"(?m)^(Machine: .*)$", path.read_text())
    return m.group(1) + "\n" if m else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    ap.add_argument("--sizes", default="100000,1000000", help="BM25 collection sizes")
    ap.add_argument("--memory-sizes", default="10000,100000", help="rows for the memory benchmark")
    ap.add_argument("--mining-rounds", default="1", help="dense mining: alternating rounds ours/theirs")
    ap.add_argument("--ray-passages", default="100000", help="Ray benchmark: passages to encode")
    ap.add_argument("--scale-candidates", default="100000", help="the rehearsal of the paper's run: candidates")
    ap.add_argument("--skip", default="", help="comma-separated: pipeline,stream,memory,client,mining,ray,scale")
    args = ap.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    t0 = time.perf_counter()
    sections: list[tuple[str, str, str]] = []  # (title, command, body)
    plan = [
        ("pipeline", "End-to-end throughput, pipeline overhead, rerun and cost", "bench_pipeline.py", ()),
        ("stream", "Streamed vs stage-by-stage build against per-model rate limits", "bench_stream.py", ()),
        ("memory", "Memory: peak RSS at 10k and 100k rows over 1M passages", "bench_memory.py",
         ("--sizes", args.memory_sizes)),
        ("client", "LLM client vs bare AsyncOpenAI (local server, 100 ms latency, concurrency 32)",
         "bench_llm_client.py", ()),
        ("mining", "Hard-negative mining", "bench_mining.py", ("--sizes", args.sizes, "--rounds", args.mining_rounds)),
        ("ray", "Local vs Ray executor", "bench_ray.py", ("--passages", args.ray_passages)),
        ("scale", "The paper's run, rehearsed: 100,000 candidates against OpenAI's limits", "bench_scale.py",
         ("--candidates", args.scale_candidates)),
    ]
    for key, title, script, extra in plan:
        if key in skip:
            continue
        body, secs = run(script, *extra)
        cmd = " ".join(["python", f"bench/{script}", *extra])
        sections.append((title, cmd, body.rstrip() + f"\n\n_`{cmd}`: {secs:.0f} s._\n"))
        print(f"[bench] {script}: {secs:.0f} s", flush=True)
    total = time.perf_counter() - t0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (f"Machine: {machine()}. Date: {dt.date.today().isoformat()}. Command: `make bench` "
              f"(bench/run_all.py, {total / 60:.1f} min; load average at the end {load:.1f}: the machine is shared, "
              f"so absolute times are noisy and every comparison's baseline runs in the same command).\n")
    if skip:
        # A partial run: the old header stays (it dates the carried-over sections) and says what was redone.
        header = (_old_header(args.out) or header) + (
            f"\nRegenerated on {dt.date.today().isoformat()} by `python bench/run_all.py --skip {args.skip}` "
            f"({total / 60:.1f} min, load average at the end {load:.1f}, {machine()}): "
            + "; ".join(f"\"{t}\"" for t, _, _ in sections) + ". Every other section is carried over.\n")
    parts = ["# Benchmarks\n", header]
    # A benchmark whose output already opens with its own `## ` title keeps it (no empty duplicate).
    parts += [body if body.startswith("## ") else f"## {title}\n\n{body}" for title, _, body in sections]
    ran = {key for key, *_ in plan if key not in skip}
    replaced = tuple(x for key in ran for x in REPLACED[key])
    parts += kept_sections(args.out, {t for t, _, _ in sections}, replaced)
    args.out.write_text("\n".join(parts))
    print(f"wrote {args.out} in {total:.0f} s")


if __name__ == "__main__":
    main()
