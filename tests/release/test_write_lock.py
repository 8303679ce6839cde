"""`infir write` against another `infir write`: the stage lock refuses the second with one line
while the first is mid-release, and a temp folder left by a killed writer is removed by the next
one (pipeline/release/versions.py `remove_stale_temp_dirs`), while a live writer's is left alone.

Each test stops a real `infir write` process at the moment its temp folder appears (SIGSTOP or
SIGKILL), so what it holds is certain, not a matter of timing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SAMPLE, make_config
from pipeline.release import verify_release
from stage_helpers import run_until

NAME_DIR = Path("releases/inf-ir-sample")
WRITE = [sys.executable, "-m", "pipeline.cli", "write", "--set", f'source.path="{SAMPLE}"']
ENV = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's code, whatever the venv's install points at


@pytest.fixture
def judged(tmp_path):
    """A run up to the judge (offline backend), ready for `infir write`."""
    run_until(make_config(), "verify")
    return tmp_path


def temp_dirs() -> list[Path]:
    return sorted(NAME_DIR.glob(".tmp-*")) if NAME_DIR.is_dir() else []


def stop_when_writing(sig: int) -> tuple[subprocess.Popen, Path]:
    """Start `infir write`; send `sig` the moment its temp release folder exists (it holds the stage
    lock by then: run_stage takes it before anything else)."""
    proc = subprocess.Popen(WRITE, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        found = [p for p in temp_dirs() if f"-{proc.pid}-" in p.name]
        if found:
            proc.send_signal(sig)
            return proc, found[0]
        time.sleep(0.001)
    raise AssertionError(f"infir write ended (rc {proc.returncode}) before its temp folder was seen: "
                         f"{proc.stderr.read()[-800:]}")


def write() -> subprocess.CompletedProcess:
    return subprocess.run(WRITE, env=ENV, capture_output=True, text=True, timeout=300)


def test_second_write_is_refused_with_one_line_while_the_first_writes(judged):
    first, tmp = stop_when_writing(signal.SIGSTOP)
    try:
        second = write()
        assert first.poll() is None  # still mid-release: the refusal was not a race it lost
        lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert second.returncode == 2, second.stderr
        assert lines == [f"error: runs/sample/write: stage is being written by pid {first.pid}; "
                         "wait for it or stop it"], second.stderr
        assert tmp.is_dir() and not (NAME_DIR / "1.0.0").exists()  # the refused one touched nothing
    finally:
        first.send_signal(signal.SIGCONT)
        first.wait(timeout=300)
    assert first.returncode == 0, first.stderr.read()[-800:]
    first.stderr.close()
    assert verify_release(NAME_DIR / "1.0.0").rows > 0
    assert sorted(p.name for p in NAME_DIR.iterdir()) == ["1.0.0"]  # its own temp folder renamed, no other


def test_a_killed_writers_temp_folder_is_removed_by_the_next_write(judged):
    killed, tmp = stop_when_writing(signal.SIGKILL)
    killed.wait()
    killed.stderr.close()
    assert killed.returncode == -9 and tmp.is_dir() and not (NAME_DIR / "1.0.0").exists()
    done = write()
    assert done.returncode == 0, done.stderr[-800:]
    assert not tmp.exists()
    assert sorted(p.name for p in NAME_DIR.iterdir()) == ["1.0.0"]
    assert verify_release(NAME_DIR / "1.0.0").rows > 0


def test_a_live_writers_temp_folder_is_left_alone(judged):
    """A temp folder whose writer (by the pid in its name) is alive is another process's release in
    progress, not a leftover: the next write must not remove it."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # a live pid
    try:
        NAME_DIR.mkdir(parents=True)
        other = NAME_DIR / f".tmp-1.0.0-{live.pid}-0123456789ab"
        other.mkdir()
        (other / "manifest.json").write_text("{}")
        dead = NAME_DIR / f".tmp-1.0.0-{2**22 + 12345}-0123456789ab"  # a pid above Linux's maximum
        dead.mkdir()
        done = write()
        assert done.returncode == 0, done.stderr[-800:]
        assert other.is_dir() and (other / "manifest.json").read_text() == "{}"
        assert not dead.exists()
        assert verify_release(NAME_DIR / "1.0.0").rows > 0
    finally:
        live.kill()
        live.wait()
