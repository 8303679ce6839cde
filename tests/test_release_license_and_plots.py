"""Dataset card options that depend on the config or the install: a custom licence's name and link
(the Hub expects both with `license: other`), and a release written without matplotlib."""

from __future__ import annotations

import json

import pytest

from conftest import make_config
from pipeline.errors import InfirError
from pipeline.release import plots, write_release
from pipeline.release.card import linked_files, parse_front_matter
from pipeline.release.sample import synthetic_accepted_table, synthetic_stats


def test_license_other_card_carries_name_and_link(tmp_path):
    table = synthetic_accepted_table(20, 15)
    stats = {**synthetic_stats(table.num_rows), "license_name": "ms-marco-terms",
             "license_link": "https://microsoft.github.io/msmarco/"}
    res = write_release(table, stats, tmp_path / "releases", "x", license="other")
    meta = parse_front_matter((res.path / "README.md").read_text())
    assert (meta["license"], meta["license_name"], meta["license_link"]) == (
        "other", "ms-marco-terms", "https://microsoft.github.io/msmarco/")


def test_write_refuses_license_other_without_name_and_link(tmp_path):
    from stage_helpers import run_write

    cfg = make_config(**{"write.license": "other"})
    with pytest.raises(InfirError, match=r'write.license = "other": set write.license_name and write.license_link'):
        run_write(cfg)


def test_release_without_matplotlib_says_so_in_the_card(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "available", lambda: False)
    table = synthetic_accepted_table(20, 15)
    res = write_release(table, synthetic_stats(table.num_rows), tmp_path / "releases", "x")
    card = (res.path / "README.md").read_text()
    assert not (res.path / "plots").exists()
    assert not [f for f in linked_files(card) if f.startswith("plots/")]
    assert card.count("plot not drawn (matplotlib is not installed; pip install 'infir[plots]')") == 2
    manifest = json.loads((res.path / "manifest.json").read_text())
    assert manifest["plots_skipped"].startswith("matplotlib is not installed")
