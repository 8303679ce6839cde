"""The checkout's top level has the layout the design names: `prompts/`, `configs/` and `data/sample`
beside `pipeline/`, each a link into the package (the wheel needs the files there), committed as a
link (git mode 120000) so that a fresh clone has them; and `infir --prompts prompts` runs on them."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import REPO, SAMPLE, run_infir
from pipeline.llm.prompts import load_prompt

LINKS = {"prompts": "pipeline/prompts", "configs": "pipeline/configs", "data/sample": "pipeline/sample_data"}


@pytest.mark.parametrize("link, target", sorted(LINKS.items()))
def test_top_level_folders_link_into_the_package(link, target):
    assert (REPO / link).is_symlink(), f"{link} is not a link"
    assert (REPO / link).resolve() == (REPO / target).resolve()
    if shutil.which("git") and (REPO / ".git").exists():
        staged = subprocess.run(["git", "ls-files", "-s", "--", link], cwd=REPO, capture_output=True, text=True)
        assert staged.stdout.startswith("120000 "), f"{link} is not committed as a link: {staged.stdout!r}"


def test_ls_prompts_lists_the_packaged_prompts():
    top = sorted(p.name for p in (REPO / "prompts").glob("*.md"))
    assert top and top == sorted(p.name for p in (REPO / "pipeline" / "prompts").glob("*.md"))


def test_infir_prompts_prompts_runs_on_the_top_level_prompts(tmp_path):
    """`infir --prompts prompts` from the checkout (here its absolute path: the test runs elsewhere)
    generates with those files, whose hash is the packaged prompt's."""
    code, _, err = run_infir("--prompts", str(REPO / "prompts"), "build", "--until", "generate",
                             "--set", f'source.path="{SAMPLE}"', "--set", "source.sample_queries=8", cwd=tmp_path)
    assert code == 0, err
    run = tmp_path / "runs" / "sample"
    assert json.loads((run / "generate" / "_SUCCESS.json").read_text())["prompt_hashes"] == {
        "generate_instruction": load_prompt("generate_instruction").sha}
    assert f'prompts_dir = "{REPO / "prompts"}"' in (run / "config.toml").read_text()
