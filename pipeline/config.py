"""Run configuration: one TOML file, parsed into pydantic models, overridden by CLI flags.

Unknown keys and wrong types are rejected naming the key, so a typo never silently falls back
to a default.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import InfirError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "sample.toml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSettings(Section):
    name: str = "sample"
    runs_dir: Path = Path("runs")
    seed: int = 13
    # None: the bundled prompts/ folder. Prompt hashes are part of every cache key and row.
    prompts_dir: Path | None = None


class ColumnMap(Section):
    """Column names for jsonl / parquet / Hugging Face inputs."""

    id: str = "_id"
    text: str = "text"
    title: str | None = "title"
    qrel_query_id: str = "query-id"
    qrel_passage_id: str = "corpus-id"
    qrel_score: str | None = "score"


class HFSource(Section):
    name: str
    config: str | None = None
    split: str = "train"


class SourceSettings(Section):
    format: Literal["beir", "msmarco", "jsonl", "parquet", "hf"] = "beir"
    path: Path | None = Path("data/sample")
    name: str | None = None  # the `source` column; defaults to the input folder's name
    # File names inside `path` (beir/msmarco defaults apply when left empty).
    corpus_file: str | None = None
    queries_file: str | None = None
    qrels_file: str | None = None
    qrels_split: str = "test"
    columns: ColumnMap = ColumnMap()
    hf_corpus: HFSource | None = None
    hf_queries: HFSource | None = None
    hf_qrels: HFSource | None = None
    sample_queries: int = Field(0, ge=0, description="0 keeps every query")
    seed: int | None = None  # None: run.seed
    min_query_words: int = Field(1, ge=1)
    max_query_words: int = Field(40, ge=1)
    min_passage_words: int = Field(5, ge=1)
    max_passage_words: int = Field(400, ge=1)
    min_relevance: int = 1
    dedup_threshold: float = Field(95.0, ge=0, le=100)
    decontaminate: list[Path] = []
    decontam_threshold: float = Field(95.0, ge=0, le=100)
    shard_rows: int = Field(50_000, ge=1)
    collection_shard_rows: int = Field(200_000, ge=1)


class GenerateSettings(Section):
    model: str = "gpt-4o-mini"
    temperature: float = 0.7
    max_tokens: int = 300
    prompt: str = "generate_instruction"
    # Hand the retriever's near misses to the prompt so that I+ excludes them.
    use_near_misses: bool = True
    near_misses: int = Field(8, ge=0, le=50)
    shard_rows: int = Field(1000, ge=1)


class VerifySettings(Section):
    model: str = "o3-mini"
    reasoning_effort: Literal["minimal", "low", "medium", "high"] = "medium"
    max_completion_tokens: int = 4000
    prompt: str = "judge"
    # Cheap deterministic pre-filters, applied before any judge call.
    max_instruction_words: int = 80
    max_query_words: int = 40
    max_passage_words: int = 400
    shard_rows: int = Field(1000, ge=1)
    near_equal_threshold: float = 95.0
    near_copy_threshold: float = 90.0
    answer_copy_threshold: float = 90.0


class WriteSettings(Section):
    name: str = "inf-ir-sample"
    version: str | None = "1.0.0"
    releases_dir: Path = Path("releases")
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 13
    max_rows_per_shard: int = 50_000
    st_export: bool = True  # the `triplets` config (anchor, positive, negative_1, negative_2)
    # The dataset card's licence (a Hub licence id); the source corpus's terms decide it.
    license: str = "other"


def _section_models() -> dict[str, type[BaseModel]]:
    # Imported here so that config stays importable while a subsystem is broken.
    from pipeline.llm.settings import LLMSettings
    from pipeline.retrieval import MiningSettings
    from pipeline.train import TrainSettings

    class MineSettings(Section):
        model: str = "gpt-4o-mini"
        temperature: float = 0.7
        max_tokens: int = 900
        prompt: str = "poison"
        # Retrieved passages shown to the poison prompt (style examples; offline: HN sources).
        candidates: int = Field(8, ge=0, le=50)
        shard_rows: int = Field(1000, ge=1)
        retrieval: MiningSettings = MiningSettings(num_negatives=8)

    return {
        "llm": LLMSettings,
        "mine": MineSettings,
        "train": TrainSettings,
    }


def _build_config_model() -> type[BaseModel]:
    extra = _section_models()

    class RunConfig(Section):
        run: RunSettings = RunSettings()
        source: SourceSettings = SourceSettings()
        llm: extra["llm"] = extra["llm"]()  # type: ignore[valid-type]
        generate: GenerateSettings = GenerateSettings()
        mine: extra["mine"] = extra["mine"]()  # type: ignore[valid-type]
        verify: VerifySettings = VerifySettings()
        write: WriteSettings = WriteSettings()
        train: extra["train"] = extra["train"]()  # type: ignore[valid-type]

    return RunConfig


_MODEL: type[BaseModel] | None = None


def config_model() -> type[BaseModel]:
    global _MODEL
    if _MODEL is None:
        _MODEL = _build_config_model()
    return _MODEL


def _format_validation(err: ValidationError, origin: str) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
        else:
            parts.append(f"'{key}': {e['msg']}")
    return f"{origin}: invalid config: " + "; ".join(parts)


def parse_value(raw: str) -> Any:
    """A CLI override value: TOML syntax when it parses (numbers, booleans, lists), else a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_override(data: dict, dotted: str, value: Any) -> None:
    node = data
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise InfirError(f"override {dotted!r}: '{k}' is not a section")
    node[keys[-1]] = value


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None):
    """Load a TOML config (default: configs/sample.toml), apply dotted overrides, validate."""
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


def _dump_toml(data: dict, prefix: str = "") -> str:
    lines, tables = [], []
    for k, v in data.items():
        if v is None:
            lines.append(f"# {k} = (none)")  # TOML has no null
        elif isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    out = "\n".join(lines)
    for k, v in tables:
        name = f"{prefix}{k}"
        body = _dump_toml(v, name + ".")
        out += f"\n\n[{name}]\n{body}" if out or prefix else f"[{name}]\n{body}"
    return out.strip() + "\n"
