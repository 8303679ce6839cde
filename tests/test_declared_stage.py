"""A stage added the way docs/ARCHITECTURE.md says (its module in pipeline/stages/ and one line in
pipeline/declaration.py, nothing else edited) reaches the CLI (`infir --help`, its own subcommand),
Make (`make help`, its target), `build`, `status` and the dry run (which estimates the judge's
input through it before it has run).

The stage is declared in a copy of the package (the checkout's declaration is not edited): a tiny
RowStage, `tag`, between the filters and the judge, run through the copy's real CLI and Makefile."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import REPO, SAMPLE, run_infir

TAG_STAGE = '''"""`infir tag`: a test's stage: tags each query short or long (no LLM, no settings)."""

from collections import Counter

import pyarrow as pa

from pipeline.runner.shape import Context, RowStage


class Tag(RowStage):
    name = "tag"
    adds = ("query_tag",)
    make_help = "tag queries short or long"
    doc = """Tag every row's query short or long (a test's stage).

    Input: the upstream stage's rows. Output: runs/<run>/tag/ with query_tag.
    """

    def shard_rows(self, cfg) -> int:
        return 64  # no config section of its own

    def process(self, ctx: Context, rows: list[dict], prepared) -> list[dict]:
        return [{**r, "query_tag": "short" if len(r["query_positive"].split()) < 6 else "long"} for r in rows]

    def tally(self, ctx: Context, counts: Counter, table: pa.Table) -> None:
        counts["rows"] += table.num_rows
        for t in table.column("query_tag").to_pylist():
            counts[f"tagged {t}"] += 1


STAGE = Tag()
'''


def declared_copy(root: Path) -> Path:
    """The package, Makefile and build files copied to `root`, with `tag` declared after `filter`."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=ignore, symlinks=True)
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy2(REPO / name, root / name)
    (root / "pipeline/stages/tag.py").write_text(TAG_STAGE)
    decl = root / "pipeline/declaration.py"
    text = decl.read_text()
    assert "        filter.STAGE,\n" in text and "from pipeline.stages import " in text
    text = text.replace("from pipeline.stages import ", "from pipeline.stages import tag, ", 1)
    decl.write_text(text.replace("        filter.STAGE,\n", "        filter.STAGE,\n        tag.STAGE,\n", 1))
    return root


def test_a_declared_stage_reaches_the_cli_make_build_status_and_the_dry_run(tmp_path):
    copy = declared_copy(tmp_path / "checkout")
    env = {"PYTHONPATH": str(copy)}
    config = ["--config", str(copy / "pipeline/configs/sample.toml"), "--set", f'source.path="{SAMPLE}"',
              "--set", "source.sample_queries=12"]

    def infir(*args: str) -> str:
        code, out, err = run_infir(*args, cwd=tmp_path, env=env)
        assert code == 0, (args, err[-2000:])
        return out + err

    # The CLI: a subcommand with the stage's help, in pipeline order (the copy's package is the one run).
    listing = infir("--help")
    assert "tag" in listing.split() and "Tag every row's query short or long" in listing
    assert "Output: runs/<run>/tag/ with query_tag" in " ".join(infir("tag", "--help").split())
    # Make: `make help` lists its target, and the target runs `infir tag`.
    make_help = subprocess.run(["make", "-s", "-C", str(copy), "help"], capture_output=True, text=True, check=True).stdout
    assert any(line.split()[:4] == ["tag", "stage:", "infir", "tag"] for line in make_help.splitlines()), make_help
    planned = subprocess.run(["make", "-n", "-C", str(copy), "tag"], capture_output=True, text=True, check=True).stdout
    assert ".venv/bin/infir tag --config configs/sample.toml" in planned, planned

    # The dry run before the stage has run: the judge's input is estimated through it, and it says so.
    infir("build", *config, "--until", "filter")
    dry = " ".join(infir("verify", *config, "--backend", "openai", "--dry-run").split())
    assert "estimated: tag has not run" in dry, dry[-2000:]
    # `build` runs it between the filters and the judge; `status` shows it with its rows.
    built = infir("build", *config, "--until", "verify")
    assert "tagged short" in built or "tagged long" in built
    status = infir("status", "runs/sample")
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.split("│")[1:-1]] for line in status.splitlines()) if cells}
    assert [n for n in rows if n in ("filter", "tag", "verify")] == ["filter", "tag", "verify"], status
    assert rows["tag"][1] == "done" and rows["tag"][2] == rows["tag"][3] == rows["filter"][2], status
