"""`infir init DIR`: a starter project outside any checkout: a config, the bundled sample corpus and,
on request, copies of the prompts to edit. Everything comes from the installed package."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from pipeline.errors import InfirError

PACKAGE = importlib.resources.files("pipeline")


def _copy_tree(src, dst: Path) -> int:
    """Copy a package resource folder (a Traversable) to `dst`; returns the number of files."""
    dst.mkdir(parents=True, exist_ok=True)
    n = 0
    for item in src.iterdir():
        if item.name.startswith((".", "__")):
            continue
        if item.is_dir():
            n += _copy_tree(item, dst / item.name)
        else:
            (dst / item.name).write_bytes(item.read_bytes())
            n += 1
    return n


def _toml_str(path: Path) -> str:
    return '"' + path.as_posix().replace("\\", "\\\\").replace('"', '\\"') + '"'


def starter_config(root: Path, prompts: bool) -> str:
    """The bundled sample config with every path made absolute under `root`: paths in a config are
    relative to the working directory, so these keep working from wherever `infir` is started."""
    text = PACKAGE.joinpath("configs", "sample.toml").read_text(encoding="utf-8")
    swaps = {
        'path = "data/sample"': f"path = {_toml_str(root / 'data' / 'sample')}",
        'runs_dir = "runs"': f"runs_dir = {_toml_str(root / 'runs')}",
        'cache_path = ".cache/llm.sqlite3"': f"cache_path = {_toml_str(root / '.cache' / 'llm.sqlite3')}",
    }
    for old, new in swaps.items():
        if old not in text:
            raise InfirError(f"bundled configs/sample.toml no longer has `{old}`; infir init needs updating")
        text = text.replace(old, new, 1)
    text = text.replace("[write]\n", f"[write]\nreleases_dir = {_toml_str(root / 'releases')}\n", 1)
    if prompts:
        text = text.replace("[run]\n", f"[run]\nprompts_dir = {_toml_str(root / 'prompts')}\n", 1)
    header = (
        "# Written by `infir init`. Paths are absolute because paths in a config are relative to the\n"
        "# working directory. Run: infir build --config <this file> (offline; no key, no network).\n"
    )
    return header + text


def init_project(root: Path, prompts: bool = False, force: bool = False) -> list[Path]:
    """Write `root/config.toml`, `root/data/sample/` and (prompts=True) `root/prompts/`."""
    root = Path(root).resolve()
    config = root / "config.toml"
    if config.exists() and not force:
        raise InfirError(f"{config}: already exists; pass --force to overwrite it")
    root.mkdir(parents=True, exist_ok=True)
    written = [config]
    _copy_tree(PACKAGE.joinpath("sample_data"), root / "data" / "sample")
    written.append(root / "data" / "sample")
    if prompts:
        _copy_tree(PACKAGE.joinpath("prompts"), root / "prompts")
        written.append(root / "prompts")
    config.write_text(starter_config(root, prompts), encoding="utf-8")
    return written
