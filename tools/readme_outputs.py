"""`make docs`: the command outputs README.md shows, made by the commands themselves.

Each generated part of README.md sits between `<!-- docs:begin NAME -->` and `<!-- docs:end -->`,
either a whole fenced block or a few words inside a sentence. This script runs the commands behind
every NAME and rewrites only those parts; the prose around them is never touched, so README prose
can be edited freely, and a new example is a new NAME here and a marked place there.

How the commands run: the real CLI (`python -m pipeline.cli`, the same as `infir`) in a subprocess,
in a temporary folder laid out like a checkout (`data/sample` and `configs` linked to this one's),
with `--backend openai` against the project's local OpenAI-compatible server
(tests/run_helpers.py: it answers and bills like the real API, deterministically). The runs' seed
is the sample config's (`run.seed = 13`), so the same code prints the same figures.

    python tools/readme_outputs.py            # rewrite the marked parts of README.md
    python tools/readme_outputs.py --check    # rewrite nothing; exit 1 with a diff where README.md differs

What is not deterministic is normalized in one place, NORMALIZE below (timings, the temp folder).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
BLOCK = re.compile(r"(<!-- docs:begin (?P<name>[a-z0-9-]+) -->)(?P<body>.*?)(<!-- docs:end -->)", re.DOTALL)

#: Everything a run prints that differs between two runs of the same code, each with what it
#: becomes. Applied to every line shown. `{work}` is the temporary folder the commands ran in.
NORMALIZE: list[tuple[str, str]] = [
    (r"elapsed \d+(?:m\d+)?(?:\.\d+)?s", "elapsed <t>"),  # wall time of the stage
    (r"{work}/?", ""),  # absolute paths of the temporary folder
]


class DocsError(Exception):
    """A command behaved other than the README says, or a marked part has no generator."""


def normalize(text: str, work: Path) -> str:
    for pattern, replacement in NORMALIZE:
        text = re.sub(pattern.replace("{work}", re.escape(str(work))), replacement, text)
    return text


class Checkout:
    """A temporary folder laid out like a checkout, and the `infir` commands run in it."""

    def __init__(self, base_url: str, work: Path):
        self.work = work
        (work / "data").mkdir()
        (work / "data" / "sample").symlink_to(REPO / "data" / "sample")
        (work / "configs").symlink_to(REPO / "configs")
        drop = ("OPENAI_", "HF_TOKEN", "INFIR_", "CI")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        self.env.update({
            # The local server's key: not a secret (the server accepts any key).
            "OPENAI_API_KEY": "sk-readme-outputs", "OPENAI_BASE_URL": base_url,
            "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            # Plain text at a fixed width: tables lay out the same on every terminal.
            "COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb",
        })

    def run(self, command: str, expect: int = 0) -> subprocess.CompletedProcess:
        """`command` as the README shows it (`infir ...`), run as written; its exit status checked."""
        args = shlex.split(command)
        assert args[0] == "infir", command
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args[1:]], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=600)
        if done.returncode != expect:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise DocsError(f"`{command}` exited {done.returncode}, expected {expect}: " + " | ".join(tail))
        done.stdout, done.stderr = normalize(done.stdout, self.work), normalize(done.stderr, self.work)
        return done


def _lines(text: str, keep: Callable[[str], bool], command: str) -> list[str]:
    found = [line.rstrip() for line in text.splitlines() if keep(line)]
    if not found:
        raise DocsError(f"`{command}` printed none of the lines the README shows")
    return found


def _fence(*lines: str) -> str:
    return "\n```\n" + "\n".join(lines) + "\n```\n"


def _budget_line(text: str, command: str) -> str:
    return _lines(text, lambda s: s.startswith("run budget:"), command)[-1]


def cost_examples(server) -> dict[str, str]:
    """The dry run, then a build stopped by a $0.50 cap, its status, the resumed build and its
    status (README, "A real run: estimate, plan, budget, progress")."""
    with tempfile.TemporaryDirectory(prefix="infir-docs-") as tmp:
        co = Checkout(server.base_url, Path(tmp))
        dry = "infir build --backend openai --dry-run"
        table = _lines(co.run(dry).stdout, lambda s: s.startswith(("┃", "│")), dry)
        capped, cap = "infir build --backend openai --max-cost-usd 0.5 --until verify", 0.5
        stopped = _lines(co.run(capped, expect=2).stderr, lambda s: s.startswith("error:"), capped)[-1]
        status = "infir status runs/sample"
        spent_capped = _budget_line(co.run(status).stdout, status)
        resume = "infir build --backend openai --max-cost-usd 3 --until verify"
        progress = _lines(co.run(resume).stderr, lambda s: s.startswith("[progress] verify:"), resume)[-1]
        spent = _budget_line(co.run(status).stdout, status)
    over = float(re.search(r"spent \$([0-9.]+)", spent_capped).group(1)) - cap
    return {
        "dry-run": _fence(f"$ {dry}", *table),
        "budget": _fence(f"$ {capped}", stopped, f"$ {status}", spent_capped,
                         f"$ {resume}          # resumes: every paid answer is reused", f"$ {status}", spent),
        "progress": _fence(progress),
        "bill": spent.split("budget (", 1)[1].split(": ", 1)[1],  # generate $x, mine $y, verify $z
        "over-cap": f"${over:.3f}",
    }


def plan_example(server) -> dict[str, str]:
    """`infir plan` on the sample (README, "How big a run for N accepted rows")."""
    with tempfile.TemporaryDirectory(prefix="infir-docs-") as tmp:
        co = Checkout(server.base_url, Path(tmp))
        plan = "infir plan --backend openai --target-accepted 100 --pilot 40"
        out = _lines(co.run(plan).stdout, lambda s: bool(s.strip()), plan)
    return {"plan": _fence(f"$ {plan}", *out)}


def audit_example(server) -> dict[str, str]:
    """The sample run audited by the offline rules standing in for a person (README, "Check the judge")."""
    with tempfile.TemporaryDirectory(prefix="infir-docs-") as tmp:
        co = Checkout(server.base_url, Path(tmp))

        def labels(run: str) -> tuple[str, list[str]]:
            label = f"python tests/audit_rules.py runs/{run} --rows 100 --seed 13 --name offline-rules"
            done = subprocess.run([sys.executable, str(REPO / "tests" / "audit_rules.py"), *shlex.split(label)[2:]],
                                  cwd=co.work, env=co.env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise DocsError(f"`{label}` exited {done.returncode}: {done.stderr.strip()[-300:]}")
            drew = normalize(done.stdout + done.stderr, co.work).splitlines()
            return f"$ {label}   # draws as `infir audit` would, then labels", [ln.rstrip() for ln in drew if ln.strip()]

        def shown(command: str) -> list[str]:
            done = co.run(command)
            return [f"$ {command}", *_lines(done.stdout + done.stderr, lambda s: bool(s.strip()), command)]

        build = "infir build --until verify --set source.path=data/sample"
        co.run(build)
        label, drew = labels("sample")
        plain = _fence(f"$ {build}", label, *drew, *shown("infir audit score runs/sample/audit/offline-rules"))
        build = ("infir build --run cascade --until verify --set source.path=data/sample --set verify.cascade=true "
                 "--set verify.cascade_threshold=0.9")
        co.run(build)
        label, drew = labels("cascade")
        calibrate = "infir calibrate-judge --run cascade --labels runs/cascade/audit/offline-rules --set verify.cascade=true"
        cascade = _fence(f"$ {build}", label, *drew, *shown(calibrate))
    return {"audit": plain, "audit-cascade": cascade}


#: Each function runs its commands in a fresh folder against a fresh server and returns the text of
#: the marked parts it makes.
EXAMPLES: list[Callable] = [cost_examples, plan_example, audit_example]


def generate() -> dict[str, str]:
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    from run_helpers import billing_server

    blocks: dict[str, str] = {}
    for example in EXAMPLES:
        with billing_server() as server:
            blocks.update(example(server))
    return blocks


def render(readme: str, blocks: dict[str, str]) -> str:
    """`readme` with each marked part replaced by its block; every marked part must have one, and
    every block a marked part."""
    seen = [m.group("name") for m in BLOCK.finditer(readme)]
    missing = sorted(set(seen) - set(blocks))
    unused = sorted(set(blocks) - set(seen))
    twice = sorted({n for n in seen if seen.count(n) > 1})
    problems = [f"{what}: {', '.join(names)}" for what, names in (
        ("marked in README.md but no generator makes them", missing),
        ("generated but not marked in README.md", unused), ("marked twice", twice)) if names]
    if problems:
        raise DocsError("README.md's marked parts and the generated ones differ: " + "; ".join(problems))
    if readme.count("<!-- docs:begin") != len(seen) or readme.count("<!-- docs:end -->") != len(seen):
        raise DocsError("README.md has a docs:begin without its docs:end (or the reverse), or a malformed name")
    return BLOCK.sub(lambda m: m.group(1) + blocks[m.group("name")] + m.group(4), readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 with a diff where README.md differs")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    try:
        current = args.readme.read_text(encoding="utf-8")
        new = render(current, generate())
    except DocsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        diff = list(difflib.unified_diff(current.splitlines(), new.splitlines(), str(args.readme), "generated",
                                         lineterm=""))
        print("\n".join(diff))
        return 1 if diff else 0
    if new != current:
        args.readme.write_text(new, encoding="utf-8")
    state = "rewritten" if new != current else "unchanged"
    print(f"{args.readme}: {state} ({len(BLOCK.findall(new))} generated parts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
