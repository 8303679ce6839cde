"""An ordered list of stages: each one's upstream is the stage before it, its schema is its
upstream's plus the columns it adds. The CLI, `build`, `--until`, `status`, the dry run and the
Make targets all read the one declaration (`pipeline/declaration.py`)."""

from __future__ import annotations


import pyarrow as pa

from pipeline.columns import fields
from pipeline.errors import InfirError
from pipeline.runner.shape import LLMStage, Stage


class Pipeline:
    def __init__(self, stages: list[Stage]):
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names repeat: {names}")
        self.stages = list(stages)
        self._by_name = {s.name: s for s in stages}

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def __getitem__(self, name: str) -> Stage:
        if name not in self._by_name:
            raise InfirError(f"no stage '{name}': expected one of {', '.join(self.names)}")
        return self._by_name[name]

    def __iter__(self):
        return iter(self.stages)

    def upstream_of(self, stage: Stage) -> Stage | None:
        i = self.stages.index(stage)
        return self.stages[i - 1] if i else None

    def until(self, name: str | None) -> list[Stage]:
        if name is None:
            return list(self.stages)
        if name not in self._by_name:
            raise InfirError(f"--until {name!r}: expected one of {', '.join(self.names)}")
        return self.stages[: self.names.index(name) + 1]

    def llm_stages(self) -> list[LLMStage]:
        return [s for s in self.stages if isinstance(s, LLMStage)]

    def schema_of(self, stage: Stage) -> pa.Schema:
        """Upstream's schema plus the stage's own columns (only row stages carry rows on)."""
        cols: list[pa.Field] = []
        for s in self.stages[: self.stages.index(stage) + 1]:
            cols += fields(s.adds)
        return pa.schema(cols)

    def collection_stage(self) -> Stage | None:
        return next((s for s in self.stages if s.provides_collection), None)

    def sections(self, upto: Stage | None = None) -> list[str]:
        """Config sections of the stages up to `upto` (all of them by default), in order."""
        stages = self.stages if upto is None else self.stages[: self.stages.index(upto) + 1]
        return [s.section for s in stages if s.section]
