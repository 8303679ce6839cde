"""Hugging Face datasets as a source: a Hub name (revision pinned, streamed), a local dataset
folder, or a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from pipeline.errors import InfirError
from pipeline.progress import console
from pipeline.sources.settings import HFSource


def is_saved_to_disk(name: str) -> bool:
    """A folder `save_to_disk` wrote: `load_dataset` refuses it ("use load_from_disk")."""
    p = Path(name)
    return p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file())


def is_hub_name(name: str) -> bool:
    return not Path(name).exists()


def _from_disk(spec: HFSource, where: str):
    import datasets

    try:
        ds = datasets.load_from_disk(spec.name)
    except Exception as e:  # datasets raises many types; the user needs the message
        raise InfirError(f"{where}: cannot read the save_to_disk folder {spec.name!r}: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if spec.split not in ds:
            raise InfirError(
                f"{where}: split {spec.split!r} not in {spec.name!r} (has: {', '.join(ds)}); set {where}.split"
            )
        ds = ds[spec.split]
    return ds  # memory-mapped Arrow: iterating it does not load the table into memory


def _from_hub_or_folder(spec: HFSource, where: str):
    import datasets

    if is_hub_name(spec.name) and spec.revision is None:
        console.print(
            f"[yellow]warning[/]: {where}: Hub dataset {spec.name!r} without a revision: set {where}.revision "
            "to a commit sha or tag so that the run can be reproduced"
        )
    try:
        return datasets.load_dataset(
            spec.name, spec.config, split=spec.split, revision=spec.revision, streaming=spec.streaming
        )
    except FileNotFoundError as e:
        raise InfirError(f"{where}: hf dataset {spec.name!r}: not found ({e})") from None
    except Exception as e:  # datasets raises many types; the user needs the message, not the type
        raise InfirError(
            f"{where}: hf dataset {spec.name!r} (config {spec.config}, split {spec.split}, "
            f"revision {spec.revision or 'unpinned'}): {e}"
        ) from None


def hf_rows(spec: HFSource, where: str) -> Iterator[tuple[int, dict]]:
    """Rows of one configured dataset, numbered from 1. `where` is its config key (source.hf_corpus)."""
    ds = _from_disk(spec, where) if is_saved_to_disk(spec.name) else _from_hub_or_folder(spec, where)
    for n, row in enumerate(ds, 1):
        yield n, row


def provenance(spec: HFSource | None) -> str | None:
    """How the summary records a dataset: name, config, split and revision."""
    if spec is None:
        return None
    kind = "save_to_disk" if is_saved_to_disk(spec.name) else ("hub" if is_hub_name(spec.name) else "folder")
    name = spec.name if kind == "hub" else Path(spec.name).name  # no local absolute paths in outputs
    return f"{name} ({kind}; config {spec.config}, split {spec.split}, revision {spec.revision or 'unpinned'})"
