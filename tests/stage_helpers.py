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
