"""`infir train` in a log (stderr not a terminal): plain progress lines at `run.progress_interval_s`,
with the training under way, its step, ETA and loss, and a last line at the end."""

from __future__ import annotations

import time

from pipeline.progress import plain_lines
from pipeline.stages.train import _Steps


def test_train_steps_line_through_both_trainings(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    s = _Steps()
    assert s.line() == "train: loading the model and the release | elapsed 0s"
    clock[0] += 30
    s.update("finetuned", {"step": 0, "max_steps": 10})
    clock[0] += 60
    s.update("finetuned", {"step": 4, "max_steps": 10, "loss": 0.8123})
    # 4 steps in 60 s: 6 left take 90 s.
    assert s.line() == "train finetuned: step 4/10 | ETA of this training 1m30s | loss 0.8123 | elapsed 1m30s"
    s.update("finetuned", {"step": 10, "max_steps": 10, "loss": 0.5})
    assert "step 10/10 | trained; evaluating or starting the next training" in s.line()
    clock[0] += 10
    s.update("finetuned_mined", {"step": 1, "max_steps": 10, "loss": 0.9})
    clock[0] += 20  # the ETA counts from the second training's own start
    assert s.line().startswith("train finetuned_mined: step 1/10 | ETA of this training 3m00s")


def test_plain_lines_every_interval_and_at_the_end(capsys):
    n = [0]

    def line() -> str:
        n[0] += 1
        return f"line {n[0]}"

    with plain_lines(line, 0.05):
        time.sleep(0.4)
    err = capsys.readouterr().err.splitlines()
    assert len(err) >= 3 and all(x.startswith("[progress] line ") for x in err), err
    assert err[-1].endswith("(done)")
    with plain_lines(line, 0.05, quiet=True):
        time.sleep(0.15)
    assert capsys.readouterr().err == ""
