"""What every stage shares: the run directory, its effective config, and the stage result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import to_toml
from pipeline.progress import console


@dataclass
class StageResult:
    stage: str
    skipped: bool
    success: dict


def run_dir(cfg) -> Path:
    return Path(cfg.run.runs_dir) / cfg.run.name


def save_effective_config(cfg) -> Path:
    d = run_dir(cfg)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "config.toml"
    path.write_text(to_toml(cfg))
    return path


def skipped(stage: str, success: dict) -> StageResult:
    console.print(f"[green]{stage}[/]: already complete ({success['rows']:,} rows); nothing to do (--force redoes it)")
    return StageResult(stage, True, success)
