"""Settings of the `write` stage (the `[write]` section). A leaf module: no side effects.

Everything `write` would refuse is refused here, when the config is loaded, i.e. before the first
(paid) stage of a build starts."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from pipeline.validate import SECTION_CONFIG, SafeName, Version


class WriteSettings(BaseModel):
    model_config = SECTION_CONFIG

    name: SafeName = "inf-ir-sample"  # releases_dir/<name>/<version>/
    version: Version | None = "1.0.0"
    releases_dir: Path = Path("releases")
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 13
    max_rows_per_shard: int = Field(50_000, ge=1)
    st_export: bool = True  # the `triplets` config (anchor, positive, negative_1, negative_2)
    # The dataset card's licence (a Hub licence id); the source corpus's terms decide it.
    license: str = "other"
    # Required by `infir write` when license = "other": the Hub shows them for a custom licence.
    license_name: str | None = None  # a short slug, e.g. "ms-marco-terms"
    license_link: str | None = None  # a URL or a file in the release, e.g. "LICENSE.md"

    @field_validator("split_ratios")
    @classmethod
    def _ratios(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        # The same rule as release.splits.normalize_ratios, which write applies again.
        if any(r < 0 for r in v) or sum(v) <= 0:
            raise ValueError(f"split ratios must be non-negative with a positive sum, got {list(v)}")
        return v
