"""The pipeline, declared once: its stages in order. Each stage's upstream is the one before it.

The CLI subcommands, `build` and `--until`, `status`, the dry run and the Make targets (which
read the lines below) all come from this list. A new stage is one module and one line here.
"""

from __future__ import annotations

from pipeline.runner.pipeline import Pipeline
from pipeline.stages import filter, generate, mine, source, train, verify, write

PIPELINE = Pipeline(
    [
        source.STAGE,
        generate.STAGE,
        mine.STAGE,
        filter.STAGE,
        verify.STAGE,
        write.STAGE,
        train.STAGE,
    ]
)
