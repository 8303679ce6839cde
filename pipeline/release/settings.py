"""Settings of the `write` stage (the `[write]` section). A leaf module: no side effects."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict


class WriteSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = "inf-ir-sample"
    version: str | None = "1.0.0"
    releases_dir: Path = Path("releases")
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 13
    max_rows_per_shard: int = 50_000
    st_export: bool = False
    # The dataset card's licence (a Hub licence id); the source corpus's terms decide it.
    license: str = "other"
    # Required by `infir write` when license = "other": the Hub shows them for a custom licence.
    license_name: str | None = None  # a short slug, e.g. "ms-marco-terms"
    license_link: str | None = None  # a URL or a file in the release, e.g. "LICENSE.md"
