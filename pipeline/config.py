"""Run configuration: one TOML file, parsed into pydantic models, overridden by CLI flags.

Unknown keys and wrong types are rejected naming the key, so a typo never silently falls back
to a default.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from pipeline.errors import InfirError
from pipeline.generation.settings import FilterSettings, GenerateSettings, MineSettings, VerifySettings
from pipeline.llm.settings import LLMSettings
from pipeline.release.settings import WriteSettings
from pipeline.sources.settings import ColumnMap, HFSource, SourceSettings  # noqa: F401  (re-exported)
from pipeline.train.settings import TrainSettings
from pipeline.validate import SECTION_CONFIG, SafeName

# Shipped in the package (pipeline/configs/; the repository's configs/ links to it), so an
# installed wheel has a default too. Its relative paths are relative to the working directory.
DEFAULT_CONFIG = importlib.resources.files("pipeline") / "configs" / "sample.toml"


class Section(BaseModel):
    model_config = SECTION_CONFIG


class RunSettings(Section):
    name: SafeName = "sample"  # a folder under runs_dir: one safe path component
    runs_dir: Path = Path("runs")
    seed: int = 13
    # None: the bundled pipeline/prompts/ folder (`infir --prompts DIR` sets this). Prompt hashes are
    # part of every cache key and row.
    prompts_dir: Path | None = None
    # Where row stages run: "local" (this process, the default) or "ray" (one Ray task per shard;
    # `pip install 'infir[ray]'`). Not part of any stage's identity: both write the same bytes.
    executor: Literal["local", "ray"] = "local"
    # None: start a local Ray for the run (stopped at exit); "auto" or "ray://host:10001": join a cluster.
    ray_address: str | None = None
    # Seconds between plain progress lines when stderr is not a terminal (a log file, a cluster job).
    progress_interval_s: float = Field(30.0, gt=0)
    # `infir build` runs consecutive row stages at once, chunk k entering the next stage as soon as it
    # is written (runner/stream.py); false: one stage after another. The same bytes either way. Not
    # part of any stage's identity. Batch mode and the Ray executor always go stage by stage.
    stream: bool = True


class RunConfig(Section):
    """The whole run: one section per stage that has settings, plus `run` and `llm`.
    Each section's model lives beside the code it configures (a leaf module with no side effects)."""

    run: RunSettings = RunSettings()
    source: SourceSettings = SourceSettings()
    llm: LLMSettings = LLMSettings()
    generate: GenerateSettings = GenerateSettings()
    mine: MineSettings = MineSettings()
    filter: FilterSettings = FilterSettings()
    verify: VerifySettings = VerifySettings()
    write: WriteSettings = WriteSettings()
    train: TrainSettings = TrainSettings()

    @model_validator(mode="after")
    def _batch_needs_the_openai_backend(self) -> "RunConfig":
        # At load, with the rest of the config: found when the first LLM stage starts, it came after
        # `source` had run (and `build` had saved a config that can never run).
        if self.llm.mode == "batch" and self.llm.backend != "openai":
            raise ValueError(
                f"llm.mode = 'batch' needs llm.backend = 'openai' (the Batch API of an OpenAI-compatible server), "
                f"not {self.llm.backend!r}: add --backend openai, or leave --mode out"
            )
        return self


def config_model() -> type[BaseModel]:
    return RunConfig


def _format_validation(err: ValidationError, origin: str) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
        elif e["type"] == "value_error":  # our validators' messages, without pydantic's "Value error, "
            parts.append(f"'{key}': {e['ctx']['error']}" if key else str(e["ctx"]["error"]))  # no key: across sections
        else:
            parts.append(f"'{key}': {e['msg']}")
    return f"{origin}: invalid config: " + "; ".join(parts)


def parse_value(raw: str) -> Any:
    """A CLI override value: TOML syntax when it parses (numbers, booleans, lists), else a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


_KEY_PART = re.compile(r'"([^"]*)"|([^."]+)')


def split_key(dotted: str) -> list[str]:
    """A dotted config key's parts, TOML-style: a quoted part may hold dots, so a model name such
    as gpt-4.1 can be a key (`llm.prices."gpt-4.1".input`)."""
    parts, pos = [], 0
    while True:
        m = _KEY_PART.match(dotted, pos)
        if m is None:
            raise InfirError(f"override {dotted!r}: not a dotted key (quote a part that holds dots: a.\"b.c\".d)")
        parts.append(m.group(1) if m.group(1) is not None else m.group(2))
        pos = m.end()
        if pos == len(dotted):
            return parts
        if dotted[pos] != ".":
            raise InfirError(f"override {dotted!r}: not a dotted key (quote a part that holds dots: a.\"b.c\".d)")
        pos += 1


def apply_override(data: dict, dotted: str, value: Any) -> None:
    node = data
    keys = split_key(dotted)
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise InfirError(f"override {dotted!r}: '{k}' is not a section")
    node[keys[-1]] = value


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None):
    """Load a TOML config (default: the bundled sample.toml), apply dotted overrides, validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise InfirError(f"{path}: config file not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise InfirError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise InfirError(f"{path}: invalid TOML: {e}") from None
    for key, value in (overrides or {}).items():
        if value is not None:
            apply_override(data, key, value)
    try:
        return config_model().model_validate(data)
    except ValidationError as e:
        raise InfirError(_format_validation(e, str(path))) from None


def to_toml(cfg) -> str:
    """Serialise the effective config as TOML (the run directory keeps it)."""
    return _dump_toml(json.loads(cfg.model_dump_json()))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _toml_key(k: str) -> str:
    # A bare key is letters, digits, '_' and '-'; others (a model name with a dot) are quoted.
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k, ensure_ascii=False)


def _dump_toml(data: dict, prefix: str = "") -> str:
    lines, tables = [], []
    for k, v in data.items():
        if v is None:
            lines.append(f"# {k} = (none)")  # TOML has no null
        elif isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    out = "\n".join(lines)
    for k, v in tables:
        name = f"{prefix}{_toml_key(k)}"
        body = _dump_toml(v, name + ".")
        out += f"\n\n[{name}]\n{body}" if out or prefix else f"[{name}]\n{body}"
    return out.strip() + "\n"
