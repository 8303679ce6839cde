"""`infir audit`: draw (or reuse) a sample and serve its labelling page; `infir audit score`."""

from __future__ import annotations

import getpass
from pathlib import Path

from pipeline.audit.sample import STRATA, draw, load_sample, parse_per_stratum, population, quotas, write_sample
from pipeline.audit.score import write_score
from pipeline.errors import InfirError
from pipeline.progress import console
from pipeline.validate import check_safe_name


def _safe(value: str, flag: str) -> str:
    try:
        return check_safe_name(value)
    except ValueError as e:
        raise InfirError(f"{flag}: {e}") from None


def default_annotator() -> str:
    try:
        return check_safe_name(getpass.getuser())
    except (ValueError, OSError, KeyError):
        return "annotator"


def prepare(run: Path, *, rows: int, seed: int, name: str | None, per_stratum: str | None) -> Path:
    """The audit folder with its sample: drawn now, or the existing one of that name (never drawn
    again over answers already given)."""
    run = Path(run)
    if not run.is_dir():
        raise InfirError(f"{run}: no such run directory")
    if rows < 1:
        raise InfirError(f"--rows {rows}: expected a number >= 1")
    name = _safe(name or f"seed{seed}", "--name")
    audit_dir = run / "audit" / name
    if (audit_dir / "sample.json").is_file():
        old = load_sample(audit_dir)
        console.print(f"reusing the sample in {audit_dir} ({len(old['rows'])} rows, seed {old['seed']}); "
                      "a new draw needs a new --name")
        return audit_dir
    sizes = parse_per_stratum(per_stratum) if per_stratum else None
    sample = draw(run, sizes or _default_sizes(run, rows), seed)
    if not sample["rows"]:
        raise InfirError(f"{run}: verify holds no judged row to sample")
    write_sample(sample, audit_dir / "sample.json")
    st = sample["strata"]
    console.print(f"drew {len(sample['rows'])} rows (seed {seed}) into {audit_dir}/sample.json: "
                  + ", ".join(f"{s} {st[s]['drawn']} of {st[s]['population']}" for s in STRATA))
    return audit_dir


def _default_sizes(run: Path, rows: int) -> dict[str, int]:
    return quotas(rows, population(run))


def serve(audit_dir: Path, annotator: str | None, port: int) -> None:
    """Serve the page until Ctrl-C; every answer is on disk when the page hears back."""
    from pipeline.audit.server import AuditApp, make_server, url_of

    app = AuditApp(audit_dir, _safe(annotator or default_annotator(), "--annotator"))
    mine, notes = app.labels()
    for n in notes:
        console.print(f"[yellow]note[/]: {n}")
    httpd = make_server(app, port)
    console.print(f"{len(mine)} of {len(app.rows)} rows labelled by {app.annotator}; answers go to {app.writer.path}")
    # Plain print, flushed: the URL must reach a terminal (or a test reading the pipe) whole, unwrapped.
    print(f"open {url_of(httpd)}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        console.print(f"stopped; the answers are in {app.writer.path}")
    finally:
        httpd.server_close()


def run_audit(args: list[str], *, rows: int, seed: int, name: str | None, annotator: str | None, port: int,
              per_stratum: str | None) -> None:
    if len(args) == 2 and args[0] == "score":
        for line in write_score(_audit_dir(Path(args[1])))[1]:
            console.print(line, soft_wrap=True)
        return
    if len(args) != 1:
        raise InfirError("expected `infir audit runs/<run>` (draw and label) or `infir audit score runs/<run>/audit/<name>`")
    if not 0 <= port <= 65535:
        raise InfirError(f"--port {port}: expected 0 (any free port) to 65535")
    serve(prepare(Path(args[0]), rows=rows, seed=seed, name=name, per_stratum=per_stratum), annotator, port)


def _audit_dir(path: Path) -> Path:
    if not path.is_dir():
        raise InfirError(f"{path}: no such audit folder (runs/<run>/audit/<name>)")
    return path
