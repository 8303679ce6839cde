"""`infir eval --release` and `infir train` verify the release's checksums before using it (issue #30,
point 8): a shard changed after the release was written is one line and exit 2, nothing scored or
trained. Before, both read whatever the shard held: a row edited in place (still valid Parquet)
was scored and trained on as if it were the release."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_infir
from release_fixtures import release_copy, written_release

SHARD = "data/train-00000-of-00001.parquet"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return written_release(tmp_path_factory.mktemp("pristine"), "checked")


@pytest.fixture
def release(pristine, tmp_path) -> Path:
    return release_copy(pristine, tmp_path, "checked")


def edit_a_row(release: Path) -> None:
    """One cell changed, written back as valid Parquet of the release schema: readable, not the release."""
    path = release / SHARD
    table = pq.read_table(path)
    i = table.column_names.index("document_positive")
    col = table.column(i).to_pylist()
    col[0] = "an edited passage " + col[0]
    pq.write_table(table.set_column(i, table.field(i), pa.array(col, table.field(i).type)), path)


def flip_a_bit(release: Path) -> None:
    path = release / SHARD
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _refused(code: int, out: str, err: str) -> None:
    text = out + err
    assert code == 2, text[-2000:]
    assert "Traceback" not in text and "internal error" not in text, text[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and SHARD in lines[0] and "sha256 mismatch" in lines[0], err


@pytest.mark.parametrize("damage", [edit_a_row, flip_a_bit], ids=lambda f: f.__name__)
def test_eval_release_refuses_a_changed_shard(release, damage, tmp_path):
    damage(release)
    code, out, err = run_infir("eval", "--release", str(release), "--pool-sample", "5", "--out", str(tmp_path / "rep"))
    _refused(code, out, err)
    assert not (tmp_path / "rep").exists() and "ndcg" not in out


@pytest.mark.parametrize("damage", [edit_a_row, flip_a_bit], ids=lambda f: f.__name__)
def test_train_refuses_a_changed_shard(release, damage, tmp_path):
    damage(release)
    # Small settings: on code that does not verify, this trains (and the test fails) in seconds.
    code, out, err = run_infir("train", "--release", str(release), "--set", "train.max_rows=4",
                               "--set", "train.batch_size=4", "--set", "train.max_seq_length=32",
                               "--set", "train.ablate_mined_negatives=false", "--set", "train.eval_pool_sample=5")
    _refused(code, out, err)
    assert not list(tmp_path.glob("runs/*/train/model")) and not list(tmp_path.glob("runs/*/train/_SUCCESS.json"))
