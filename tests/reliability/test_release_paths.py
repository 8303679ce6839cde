"""A release never reaches outside its own folder (issue #30, point 3).

A release's manifest and card are data from whoever handed the folder over. Each hostile release
below names a file outside the folder (a `..` path with that file's sha256, an absolute path, a file
or folder of the release replaced by a symbolic link, a card link or `data_files` pattern leading
out) and each must be refused, with one line naming the offending path, by `infir write --verify`,
`infir publish` (`--dry-run` included: it must not list the file for upload), `infir eval --release`
and `infir train` (which verify first). Before: `../../../../etc/passwd` with its sha256 verified as
"all checksums match", and a symlinked plot was listed for upload.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import run_infir
from pipeline.errors import InfirError
from pipeline.release import publish_release, verify_release, write_release
from release_fixtures import release_copy, synthetic_accepted_table, synthetic_stats, written_release

SECRET = b"a file outside the release that must never be read or uploaded\n"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return written_release(tmp_path_factory.mktemp("pristine"), "paths")


@pytest.fixture
def release(pristine, tmp_path) -> Path:
    return release_copy(pristine, tmp_path, "paths")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _edit_manifest(release: Path, edit) -> None:
    path = release / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m, indent=2))


def _list_file(release: Path, rel: str, data: bytes) -> None:
    _edit_manifest(release, lambda m: m["files"].append({"path": rel, "sha256": _sha(data), "bytes": len(data)}))


def _rewrite_card(release: Path, old: str, new: str) -> None:
    """Edit README.md and record its new sha256, as a hostile author would."""
    card = release / "README.md"
    text = card.read_text()
    assert old in text
    card.write_text(text.replace(old, new, 1))
    data = card.read_bytes()

    def fix(m):
        entry = next(f for f in m["files"] if f["path"] == "README.md")
        entry.update(sha256=_sha(data), bytes=len(data))

    _edit_manifest(release, fix)


def _outside(release: Path) -> Path:
    secret = release.parents[2] / "outside" / "secret.txt"
    secret.parent.mkdir(exist_ok=True)
    secret.write_bytes(SECRET)
    return secret


# Each case damages a copy of a good release and returns the path the refusal must name.
def dotdot_entry(release: Path) -> str:
    rel = os.path.relpath(_outside(release), release)  # ../../../outside/secret.txt
    _list_file(release, rel, SECRET)
    return rel


def etc_passwd_entry(release: Path) -> str:
    """The issue's case, as written."""
    if not Path("/etc/passwd").is_file():
        pytest.skip("no /etc/passwd here")
    rel = "../" * 12 + "etc/passwd"
    _list_file(release, rel, Path("/etc/passwd").read_bytes())
    return rel


def absolute_entry(release: Path) -> str:
    secret = str(_outside(release))
    _list_file(release, secret, SECRET)
    return secret


def shard_path_leaving(release: Path) -> str:
    """A shard entry pointing at a copy of itself outside the release, checksum and rows intact."""
    outside = _outside(release).parent / "train.parquet"
    shutil.copy(release / "data" / "train-00000-of-00001.parquet", outside)
    rel = os.path.relpath(outside, release)
    _edit_manifest(release, lambda m: m["shards"][0].update(path=rel))
    _rewrite_card(release, "data/train-", rel.removesuffix("train.parquet") + "train")
    return rel


def symlinked_file(release: Path) -> str:
    """A plot replaced by a link to a byte-identical copy outside: the checksum matches."""
    plot = release / "plots" / "lengths.png"
    copy = _outside(release).parent / "lengths.png"
    shutil.copy(plot, copy)
    plot.unlink()
    plot.symlink_to(copy)
    return "plots/lengths.png"


def symlinked_folder(release: Path) -> str:
    moved = _outside(release).parent / "plots"
    shutil.move(release / "plots", moved)
    (release / "plots").symlink_to(moved, target_is_directory=True)
    return "plots"


def symlinked_manifest(release: Path) -> str:
    copy = _outside(release).parent / "manifest.json"
    shutil.move(release / "manifest.json", copy)
    (release / "manifest.json").symlink_to(copy)
    return "manifest.json"


def card_link_leaving(release: Path) -> str:
    rel = os.path.relpath(_outside(release), release)
    _rewrite_card(release, "](plots/lengths.png)", f"]({rel})")
    return rel


def card_pattern_leaving(release: Path) -> str:
    """The card's `triplets` config (read by `datasets` from a local folder) pointed outside."""
    rel = os.path.relpath(_outside(release).parent, release) + "/*.parquet"
    _rewrite_card(release, "path: triplets/train.parquet", f"path: {rel}")
    return rel


CASES = [dotdot_entry, etc_passwd_entry, absolute_entry, shard_path_leaving, symlinked_file, symlinked_folder,
         symlinked_manifest, card_link_leaving, card_pattern_leaving]


def _one_error_line(code: int, out: str, err: str, named: str) -> str:
    text = out + err
    assert code == 2, text[-2000:]
    assert "Traceback" not in text and "internal error" not in text, text[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert named in lines[0], lines[0]
    return lines[0]


def test_a_good_release_still_verifies_and_publishes_dry(release):
    code, out, err = run_infir("write", "--verify", str(release))
    assert code == 0 and "all checksums match" in out + err, out + err
    listed = [rel for rel, _ in publish_release(release, "ns/paths", dry_run=True).files]
    assert "plots/lengths.png" in listed and "manifest.json" in listed


def test_a_release_below_a_symlinked_folder_verifies(release, tmp_path):
    """The links refused are those below the release folder: a release reached through a linked
    releases/ folder (a disk layout) is the user's choice, not the release's."""
    link = tmp_path / "linked-releases"
    link.symlink_to(tmp_path / "releases", target_is_directory=True)
    assert verify_release(link / "paths" / "1.0.0").rows == 40


@pytest.mark.parametrize("damage", CASES, ids=lambda f: f.__name__)
def test_write_verify_refuses(release, damage):
    named = damage(release)
    code, out, err = run_infir("write", "--verify", str(release))
    _one_error_line(code, out, err, named)
    assert "all checksums match" not in out + err


@pytest.mark.parametrize("damage", CASES, ids=lambda f: f.__name__)
def test_publish_refuses_before_listing_anything(release, damage):
    named = damage(release)
    with pytest.raises(InfirError, match=re.escape(named)):
        publish_release(release, "ns/paths", dry_run=True)


def test_publish_dry_run_cli_does_not_list_a_symlinked_file(release):
    named = symlinked_file(release)
    code, out, err = run_infir("publish", str(release), "--repo", "ns/paths", "--dry-run")
    _one_error_line(code, out, err, named)
    assert "lengths.png" not in out


@pytest.mark.parametrize("damage", [dotdot_entry, symlinked_file], ids=lambda f: f.__name__)
def test_eval_release_refuses_before_scoring(release, damage, tmp_path):
    named = damage(release)
    code, out, err = run_infir("eval", "--release", str(release), "--out", str(tmp_path / "rep"))
    _one_error_line(code, out, err, named)
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("damage", [dotdot_entry, symlinked_file], ids=lambda f: f.__name__)
def test_train_refuses_before_training(release, damage, tmp_path):
    named = damage(release)
    code, out, err = run_infir("train", "--release", str(release), "--set", "train.max_rows=4",
                               "--set", "train.ablate_mined_negatives=false")
    _one_error_line(code, out, err, named)
    assert not list(tmp_path.glob("runs/*/train/model"))


@pytest.mark.parametrize("entry", [{"sha256": "0" * 64}, {"path": 7, "sha256": "0" * 64}, "data/x.parquet"],
                         ids=["no-path", "path-not-text", "not-an-object"])
def test_a_malformed_manifest_entry_is_one_line(release, entry):
    _edit_manifest(release, lambda m: m["files"].append(entry))
    code, out, err = run_infir("write", "--verify", str(release))
    _one_error_line(code, out, err, "manifest.json")


def test_the_shared_check_refuses_a_link_on_the_way(release):
    """`release_path` itself: verify walks the folder first, the writer's "same content already
    there" check names its shard paths directly."""
    from pipeline.release.paths import release_path

    assert release_path(release, "plots/lengths.png", "manifest.json").is_file()
    symlinked_folder(release)
    with pytest.raises(InfirError, match=r"plots/lengths\.png: named in manifest\.json but plots is a symbolic link"):
        release_path(release, "plots/lengths.png", "manifest.json")


def test_writing_the_same_content_over_a_linked_shard_is_refused(tmp_path):
    """Before, the writer hashed the link's target and answered "already holds this content"."""
    table = synthetic_accepted_table(rows=40, queries=30)
    res = write_release(table, synthetic_stats(40), tmp_path / "r", "paths")
    shard = res.path / "data" / "train-00000-of-00001.parquet"
    copy = tmp_path / "elsewhere.parquet"
    shutil.copy(shard, copy)
    shard.unlink()
    shard.symlink_to(copy)
    with pytest.raises(InfirError, match=r"data/train-00000-of-00001\.parquet is a symbolic link"):
        write_release(table, synthetic_stats(40), tmp_path / "r", "paths")
