"""`python -m pipeline.cli`: the same as the `infir` command."""

from pipeline.cli import entrypoint

entrypoint()
