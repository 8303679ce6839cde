"""labels.jsonl: whole lines, a cut last line skipped with a note, repeats counted once, a later
answer superseding, unknown rows and layouts named."""

from __future__ import annotations

import json

import pytest

from pipeline.audit.labels import Label, LabelWriter, read_labels
from pipeline.errors import InfirError

IDS = {"r1", "r2", "r3"}
ALL_YES = {"p_fits": "yes", "hn1_fits": "yes", "hn2_fits": "yes", "edits_minimal": "yes"}


def _label(rid: str, valid: bool = True, who: str = "alice", at: str = "2026-12-07T10:00:00+00:00", **answers) -> Label:
    return Label(row_id=rid, annotator=who, answers={**ALL_YES, **answers}, valid=valid, note="", at=at)


def test_each_answer_is_one_whole_line_and_a_later_one_supersedes(tmp_path):
    w = LabelWriter(tmp_path)
    w.append(_label("r1", True))
    w.append(_label("r2", False, p_fits="no"))
    w.append(_label("r1", False, at="2026-12-07T10:05:00+00:00"))  # went back and answered again
    lines = (tmp_path / "labels.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(x)["annotator"] == "alice" for x in lines)
    latest, notes = read_labels(tmp_path, IDS)
    assert notes == []
    assert latest[("r1", "alice")].valid is False and latest[("r2", "alice")].answers["p_fits"] == "no"


def test_a_cut_last_line_is_skipped_with_one_note_and_nothing_else_lost(tmp_path):
    w = LabelWriter(tmp_path)
    w.append(_label("r1"))
    w.append(_label("r2"))
    path = tmp_path / "labels.jsonl"
    whole = path.read_bytes()
    cut = json.dumps(_label("r3").model_dump()).encode()[:40]
    path.write_bytes(whole + cut)  # a kill in the middle of a write
    latest, notes = read_labels(tmp_path, IDS)
    assert set(latest) == {("r1", "alice"), ("r2", "alice")}
    assert len(notes) == 1 and "line 3: the last line is cut short" in notes[0]
    # the next answer starts on a fresh line: it is read back whole, the cut line stays skipped
    w.append(_label("r3"))
    latest, notes = read_labels(tmp_path, IDS)
    assert set(latest) == {("r1", "alice"), ("r2", "alice"), ("r3", "alice")}
    assert len(notes) == 1 and "line 3: not a whole line" in notes[0]


def test_a_repeated_line_is_noted_and_counted_once_and_an_unknown_row_is_named(tmp_path):
    line = json.dumps(_label("r1").model_dump())
    other = json.dumps(_label("zz9").model_dump())
    (tmp_path / "labels.jsonl").write_text(f"{line}\n{line}\n{other}\n")
    latest, notes = read_labels(tmp_path, IDS)
    assert list(latest) == [("r1", "alice")]
    assert notes == [f"{tmp_path / 'labels.jsonl'}: line 2: repeats line 1 exactly; counted once",
                     f"{tmp_path / 'labels.jsonl'}: line 3: row id 'zz9' is not in the sample; skipped"]


def test_a_bad_line_is_one_error_naming_file_line_and_key(tmp_path):
    bad = _label("r1").model_dump()
    bad["answers"]["p_fits"] = "maybe"
    (tmp_path / "labels.jsonl").write_text(json.dumps(_label("r2").model_dump()) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(InfirError, match=r"labels.jsonl: line 2: answers.p_fits: Input should be 'yes', 'no' or 'unsure'"):
        read_labels(tmp_path, IDS)
    (tmp_path / "labels.jsonl").write_text(json.dumps({**_label("r2").model_dump(), "at": "yesterday"}) + "\n")
    with pytest.raises(InfirError, match=r"line 1: at: "):
        read_labels(tmp_path, IDS)


def test_one_file_per_annotator_and_unknown_layouts(tmp_path):
    (tmp_path / "labels.jsonl").write_text(json.dumps(_label("r1").model_dump()) + "\n")
    (tmp_path / "labels-bob.jsonl").write_text(json.dumps(_label("r1", False, who="bob").model_dump()) + "\n")
    (tmp_path / "sample.json").write_text("{}")  # the audit's own files are no label layout
    (tmp_path / ".#labels.jsonl").write_text("alice@host.123")  # nor is an editor's hidden lock file
    latest, _ = read_labels(tmp_path, IDS)
    assert latest[("r1", "alice")].valid and not latest[("r1", "bob")].valid
    (tmp_path / "labels-carol.jsonl").write_text(json.dumps(_label("r2", who="bob").model_dump()) + "\n")
    with pytest.raises(InfirError, match="annotator 'bob' in labels-carol.jsonl, which holds the labels of 'carol'"):
        read_labels(tmp_path, IDS)
    (tmp_path / "labels-carol.jsonl").unlink()
    (tmp_path / "labels.csv").write_text("r1,yes\n")
    with pytest.raises(InfirError, match=r"labels.csv: unknown label layout: labels go in labels.jsonl"):
        read_labels(tmp_path, IDS)
