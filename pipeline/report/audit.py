"""The human audits of a run (`runs/<run>/audit/<name>/audit.json`, written by `infir audit score`)
as the report and the dataset card show them.

Only the figures read here are checked (a pydantic model of them); what else `audit score` writes is
left alone, so the scorer can add figures without breaking the report or `write`. A file that does
not hold these figures is one line naming the file and the key: a card must not publish a guess.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import InfirError
from pipeline.llm.completion import summarize_validation

AUDIT_FILE = "audit.json"
#: The strata `infir audit` samples, in the order they are shown.
STRATA = ("accepted", "rejected_judge", "rejected_first_judge", "rejected_filter")
STRATUM_DOC = {
    "accepted": "accepted rows (the judge's precision)",
    "rejected_judge": "rejected by the judge (its false rejects)",
    "rejected_first_judge": "rejected by the cascade's first judge (its false rejects)",
    "rejected_filter": "rejected by a filter (the filters' false rejects)",
}
NONE_MADE = "No human audit was made: every quality figure here comes from the LLM judge that built the corpus."


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class Share(_Model):
    """`valid` of `n` labelled rows judged valid, its share and Wilson 95% interval (None when n = 0)."""

    valid: int = Field(ge=0)
    n: int = Field(ge=0)
    share: Optional[float] = Field(default=None, ge=0, le=1)
    low: Optional[float] = Field(default=None, ge=0, le=1)
    high: Optional[float] = Field(default=None, ge=0, le=1)


class Estimate(_Model):
    population: Optional[int] = Field(default=None, ge=0)  # rows of the run the estimate stands for
    share: Optional[float] = Field(default=None, ge=0, le=1)
    low: Optional[float] = Field(default=None, ge=0, le=1)
    high: Optional[float] = Field(default=None, ge=0, le=1)


class Question(_Model):
    agreement: Optional[float] = Field(default=None, ge=0, le=1)
    n: int = Field(ge=0)


class Audit(_Model):
    version: Literal[1]
    name: str
    sample_size: int = Field(ge=0)
    labelled: int = Field(ge=0)
    annotators: list[str]
    precision: Share
    strata: dict[str, Share]
    questions: dict[str, Question] = {}
    reweighted_valid_share: Estimate
    kappa: dict = {}


def audit_files(run_dir: Path) -> list[Path]:
    """Every scored audit of the run, by name (a deterministic order: the card's bytes depend on it)."""
    root = Path(run_dir) / "audit"
    return sorted(p for p in root.glob(f"*/{AUDIT_FILE}") if p.is_file()) if root.is_dir() else []


def load_audit(path: Path) -> Audit:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InfirError(f"{path}: unreadable audit ({e}); rerun `infir audit score {path.parent}`") from None
    try:
        return Audit.model_validate(raw)
    except ValidationError as e:
        raise InfirError(f"{path}: not an audit score: {summarize_validation(e)}; "
                         f"rerun `infir audit score {path.parent}`") from None


def audit_figures(audit: Audit) -> dict:
    """What the card and report.json carry of one audit. Annotators are counted, not named: the card
    is published, and their names are people's names."""
    return {
        "name": audit.name,
        "sample_size": audit.sample_size,
        "labelled": audit.labelled,
        "annotators": len(audit.annotators),
        "precision": audit.precision.model_dump(),
        # Strata nobody labelled (or the run does not have) are left out rather than shown as n/a.
        "strata": {s: audit.strata[s].model_dump() for s in STRATA if s in audit.strata and audit.strata[s].n},
        "reweighted_valid_share": audit.reweighted_valid_share.model_dump(),
        "questions": {q: v.model_dump() for q, v in audit.questions.items()},  # the scorer's order
        "kappa": _kappa(audit.kappa),
    }


def _kappa(kappa: dict) -> dict[str, float]:
    """Cohen's kappa per question, where the scorer wrote a number (or {"kappa": number}) for it."""
    out = {}
    for q, v in sorted(kappa.items()):
        v = v.get("kappa") if isinstance(v, dict) else v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[str(q)] = round(float(v), 4)
    return out


def _sampled_from(audit_dir: Path) -> str | None:
    """sha256 of the verify/_SUCCESS.json the audit's sample was drawn from (`sample.json`'s
    `created_from`), when it says."""
    try:
        sample = json.loads((audit_dir / "sample.json").read_text(encoding="utf-8"))
        found = sample["created_from"]["verify"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if isinstance(found, str) else None


def run_audits(run_dir: Path) -> tuple[list[dict], list[str]]:
    """(the figures of every audit of the run's current verify output, warnings).

    An audit whose sample was drawn from another verify output (verify rerun since) labelled rows
    that may no longer be the corpus: it is left out with a warning, never shown as this corpus's."""
    success = Path(run_dir) / "verify" / "_SUCCESS.json"
    current = hashlib.sha256(success.read_bytes()).hexdigest() if success.is_file() else None
    audits, warnings = [], []
    for path in audit_files(run_dir):
        audit = load_audit(path)
        drawn_from = _sampled_from(path.parent)
        if drawn_from and current and drawn_from != current:
            warnings.append(f"{path.parent}: its sample was drawn from an earlier verify output; left out "
                            "(audit the current rows: infir audit)")
            continue
        audits.append(audit_figures(audit))
    return audits, warnings


def share_text(s: dict, digits: int = 1) -> str:
    """"93.0% [85.6%, 96.7%] (93/100)": the share, its Wilson 95% interval and the counts."""
    if not s.get("n") or s.get("share") is None:
        return f"n/a ({s.get('valid', 0)}/{s.get('n', 0)})"
    interval = "" if s.get("low") is None or s.get("high") is None else \
        f" [{s['low']:.{digits}%}, {s['high']:.{digits}%}]"
    return f"{s['share']:.{digits}%}{interval} ({s['valid']}/{s['n']})"


def estimate_text(e: dict, digits: int = 1) -> str:
    if e.get("share") is None:
        return "n/a"
    interval = "" if e.get("low") is None or e.get("high") is None else f" [{e['low']:.{digits}%}, {e['high']:.{digits}%}]"
    return f"{e['share']:.{digits}%}{interval}"
