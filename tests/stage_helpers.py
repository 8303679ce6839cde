"""Stages by name, run through the pipeline's runner as the CLI runs them (tests call
`run_generate(cfg)` etc. instead of spelling out `run_stage(PIPELINE, "generate", cfg)`)."""

from __future__ import annotations

from pipeline.declaration import PIPELINE
from pipeline.runner.run import run_stage


def runner(name: str):
    def run(cfg, force: bool = False, **options):
        return run_stage(PIPELINE, name, cfg, force=force, options=options)

    run.__name__ = f"run_{name}"
    return run


run_source = runner("source")
run_generate = runner("generate")
run_mine = runner("mine")
run_verify = runner("verify")
run_write = runner("write")
run_train = runner("train")


def names_between(first: str, last: str) -> list[str]:
    """The declared stages from `first` to `last`, both included, in pipeline order."""
    names = PIPELINE.names
    return names[names.index(first) : names.index(last) + 1]


def run_between(cfg, first: str, last: str, force: bool = False) -> list:
    return [run_stage(PIPELINE, n, cfg, force=force) for n in names_between(first, last)]


def run_until(cfg, last: str, force: bool = False) -> list:
    """Every stage up to `last` in declared order (a test never lists the stages itself, so a new
    stage in the declaration needs no test edit)."""
    return run_between(cfg, PIPELINE.names[0], last, force=force)
