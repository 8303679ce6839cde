"""Stage name -> function, in pipeline order."""

from __future__ import annotations

from typing import Callable


def _source(cfg, force=False):
    from pipeline.stages.source import run_source

    return run_source(cfg, force=force)


def _generate(cfg, force=False):
    from pipeline.stages.generate import run_generate

    return run_generate(cfg, force=force)


def _mine(cfg, force=False):
    from pipeline.stages.mine import run_mine

    return run_mine(cfg, force=force)


def _verify(cfg, force=False):
    from pipeline.stages.verify import run_verify

    return run_verify(cfg, force=force)


def _write(cfg, force=False):
    from pipeline.stages.write import run_write

    return run_write(cfg, force=force)


def _train(cfg, force=False):
    from pipeline.stages.train import run_train

    return run_train(cfg, force=force)


STAGES: dict[str, Callable] = {
    "source": _source,
    "generate": _generate,
    "mine": _mine,
    "verify": _verify,
    "write": _write,
    "train": _train,
}
ORDER = list(STAGES)
