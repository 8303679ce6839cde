"""The judge cascade's calibration (`infir calibrate-judge`, runs/<run>/calibration/judge.json) as
the report shows it: the threshold it recommends and the first judge's agreement with what it was
measured against (the reasoning judge, or people's labels with `--labels`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import InfirError
from pipeline.generation import cascade
from pipeline.llm.completion import summarize_validation


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Rate(_Model):
    k: int = Field(ge=0)
    n: int = Field(ge=0)
    rate: Optional[float] = None
    interval: Optional[tuple[float, float]] = None


class AtThreshold(_Model):
    threshold: float
    false_reject: Rate
    false_accept: Rate
    survival: Optional[float] = None
    saving: Optional[float] = None


class Checks(_Model):
    false_reject: Rate
    false_accept: Rate


class Calibration(_Model):
    rows: int = Field(ge=0)
    max_false_reject: float
    recommended_threshold: float
    at_recommended: AtThreshold
    per_check: dict[str, Checks] = {}
    confidence_sources: list[str] = []
    first_model: Optional[str] = None
    judge_model: Optional[str] = None
    seed: Optional[int] = None
    # "judge" (the reasoning judge, the default) or "labels" (`calibrate-judge --labels`).
    against: str = "judge"
    labels: Optional[str] = None


def judge_calibration(run_dir: Path, config: dict) -> dict | None:
    """The calibration's figures for report.json, or None when `calibrate-judge` was never run."""
    raw = cascade.load_calibration(run_dir)
    if raw is None:
        return None
    try:
        cal = Calibration.model_validate(raw)
    except ValidationError as e:
        raise InfirError(f"{cascade.calibration_path(run_dir)}: not a judge calibration: {summarize_validation(e)}; "
                         "rerun `infir calibrate-judge`") from None
    out = cal.model_dump()
    verify = config.get("verify") or {}
    # The run's config can name its own threshold; the calibration's is then only a recommendation.
    out["configured_threshold"] = verify.get("cascade_threshold")
    out["cascade_on"] = bool(verify.get("cascade"))
    return out
