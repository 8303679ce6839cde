"""The local executor: today's chunk loop in this process (`pipeline.runner.chunks`), unchanged."""

from pipeline.runner.chunks import run_chunks

__all__ = ["run_chunks"]
