"""The judge cascade: a cheap first judge answers every check, the reasoning judge only sees the
rows it did not confidently fail. Every accepted row is still passed by the reasoning judge, so
precision cannot drop; what the cascade can cost is recall (good rows the first judge rejects),
which `calibrate` measures against the reasoning judge on a sample.

- Confidence of a check's verdict: the probability of the token that wrote its `passed` boolean
  (the answer's log-probabilities, where the endpoint returns them), else the answer's explicit
  `confidence` field. Which one was used is recorded per row (`confidence_source`).
- A row is rejected by the first judge when it fails any check with confidence at or above the
  threshold; the others go to the reasoning judge, which decides as without the cascade.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import InfirError
from pipeline.generation.models import CHECKS

FIRST_JUDGE = "first_judge"
REASONING_JUDGE = "judge"
FILTERS = "filter"
CALIBRATION_FILE = Path("calibration") / "judge.json"


@dataclass
class FirstJudgment:
    """The first judge's answer for one row: per-check records (check, passed, reason, confidence)."""

    verdicts: list[dict]
    confidence_source: str  # "logprobs" or "field"

    def failed(self, threshold: float) -> list[str]:
        """Checks it fails with confidence at or above `threshold`."""
        return [v["check"] for v in self.verdicts if not v["passed"] and v["confidence"] >= threshold]

    def rejects(self, threshold: float) -> bool:
        return bool(self.failed(threshold))

    def min_fail_confidence(self) -> float | None:
        """The threshold at or below which this row is rejected: its most confident failure."""
        fails = [v["confidence"] for v in self.verdicts if not v["passed"]]
        return max(fails) if fails else None


def judgment(value: Any, text: str | None, logprobs: list[dict] | None) -> FirstJudgment:
    """The first judge's parsed answer (`FirstJudgeVerdicts`), with each check's confidence taken
    from the log-probabilities of the boolean it wrote when they are there and match the text."""
    from_logprobs = boolean_confidences(text, logprobs) if text and logprobs else None
    records = []
    for check in CHECKS:
        v = getattr(value, check)
        conf = from_logprobs[check] if from_logprobs else min(1.0, max(0.0, float(v.confidence)))
        records.append({"check": check, "passed": bool(v.passed), "reason": v.reason, "confidence": round(conf, 6)})
    return FirstJudgment(records, "logprobs" if from_logprobs else "field")


def boolean_confidences(text: str, logprobs: list[dict]) -> dict[str, float] | None:
    """{check: probability of the token holding its `passed` value}, or None when the tokens do not
    spell the text (a provider that returns other text) or a check's boolean is not found.

    Tokens are joined through their `bytes` (UTF-8), not their strings: a token that ends inside a
    multi-byte character (é, an emoji, CJK) arrives as a partial string ("\\xe6\\x97" or "\ufffd"),
    so the strings do not spell the text while the bytes do. Offsets are byte offsets."""
    raw = _token_bytes(logprobs)
    if raw is None or b"".join(raw) != text.encode("utf-8"):
        return None
    offsets = value_offsets(text)
    starts, pos = [], 0
    for b in raw:
        starts.append(pos)
        pos += len(b)
    out: dict[str, float] = {}
    for check in CHECKS:
        at = offsets.get((check, "passed"))
        if at is None:
            return None
        i = _token_at(starts, len(text[:at].encode("utf-8")))
        try:
            p = math.exp(float(logprobs[i].get("logprob", 0.0)))
        except (TypeError, ValueError, OverflowError):
            return None
        out[check] = p
    return out


def _token_bytes(logprobs: list[dict]) -> list[bytes] | None:
    """Each token's UTF-8 bytes: its `bytes` list where given (OpenAI's field), else its string
    encoded (an endpoint without the field); None when a `bytes` list is not bytes."""
    out = []
    for t in logprobs:
        b = t.get("bytes") if isinstance(t, dict) else None
        if b is None:
            out.append(str(t.get("token", "") if isinstance(t, dict) else "").encode("utf-8"))
            continue
        if not isinstance(b, list):
            return None
        try:
            out.append(bytes(b))
        except (TypeError, ValueError):  # not a list of 0..255 integers
            return None
    return out


def _token_at(starts: list[int], offset: int) -> int:
    import bisect

    return bisect.bisect_right(starts, offset) - 1


def value_offsets(text: str) -> dict[tuple, int]:
    """{path: char offset} of every scalar value of a JSON text (path: the keys/indexes to it).
    Our own small scanner because the json module gives no offsets; strings are decoded by the
    json module's own `scanstring`, so escapes inside reasons cannot mislead it."""
    from json.decoder import scanstring

    out: dict[tuple, int] = {}
    ws = " \t\n\r"

    def skip(i: int) -> int:
        while i < len(text) and text[i] in ws:
            i += 1
        return i

    def value(i: int, path: tuple) -> int:
        i = skip(i)
        c = text[i]
        if c == "{":
            i = skip(i + 1)
            while text[i] != "}":
                key, i = scanstring(text, i + 1)
                i = skip(skip(i) + 1)  # past ':'
                i = skip(value(i, path + (key,)))
                if text[i] == ",":
                    i = skip(i + 1)
            return i + 1
        if c == "[":
            i, k = skip(i + 1), 0
            while text[i] != "]":
                i = skip(value(i, path + (k,)))
                k += 1
                if text[i] == ",":
                    i = skip(i + 1)
            return i + 1
        out[path] = i
        if c == '"':
            return scanstring(text, i + 1)[1]
        j = i
        while j < len(text) and text[j] not in ",}] \t\n\r":
            j += 1
        return j

    try:
        value(0, ())
    except (IndexError, ValueError):
        return {}
    return out


# -- calibration ----------------------------------------------------------------------------------


Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """95% Wilson score interval of k successes in n; None when n = 0. Five lines, so no statistics
    package in the core install for it (runner/plan.py has the same for the pilot's acceptance; this
    package may not import the runner)."""
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)


def _rate(k: int, n: int) -> dict:
    return {"k": k, "n": n, "rate": round(k / n, 4) if n else None, "interval": wilson(k, n)}


def row_figures(pairs: list[tuple[FirstJudgment, list[str]]], threshold: float) -> dict:
    """Row-level figures of the cascade at `threshold`, against the reasoning judge's failed checks:
    false rejects (rows it accepts that the first judge rejects), false accepts (rows it rejects that
    the first judge lets through), and the share of rows still sent to it (`survival`)."""
    good = [f for f, failed in pairs if not failed]
    bad = [f for f, failed in pairs if failed]
    fr = sum(f.rejects(threshold) for f in good)
    fa = sum(not f.rejects(threshold) for f in bad)
    survive = sum(not f.rejects(threshold) for f, _ in pairs)
    return {
        "threshold": threshold,
        "false_reject": _rate(fr, len(good)),
        "false_accept": _rate(fa, len(bad)),
        "survival": round(survive / len(pairs), 4) if pairs else None,
        "saving": round(1 - survive / len(pairs), 4) if pairs else None,
    }


def check_figures(pairs: list[tuple[FirstJudgment, list[str]]], threshold: float) -> dict:
    """Per check, at `threshold`: false-reject rate (the reasoning judge passes it, the first judge
    fails it confidently) and false-accept rate (it fails it, the first judge does not)."""
    out = {}
    for check in CHECKS:
        fr = fa = good = bad = 0
        for f, failed in pairs:
            first_fails = check in f.failed(threshold)
            if check in failed:
                bad += 1
                fa += not first_fails
            else:
                good += 1
                fr += first_fails
        out[check] = {"false_reject": _rate(fr, good), "false_accept": _rate(fa, bad)}
    return out


def recommend(pairs: list[tuple[FirstJudgment, list[str]]], max_false_reject: float) -> dict:
    """The threshold with the largest saving whose measured row false-reject rate is at most
    `max_false_reject`. Candidates are the rows' failure confidences (the only points where the
    decision changes); none qualifying: 1.01, the cascade rejects nothing."""
    candidates = sorted({c for f, _ in pairs if (c := f.min_fail_confidence()) is not None})
    best = row_figures(pairs, 1.01)
    for t in candidates:  # ascending: the first that qualifies saves the most
        fig = row_figures(pairs, t)
        rate = fig["false_reject"]["rate"]
        if rate is None or rate <= max_false_reject:
            best = fig
            break
    return best


def calibrate(pairs: list[tuple[FirstJudgment, list[str]]], max_false_reject: float) -> dict:
    """What `infir calibrate-judge` writes: the recommendation and the figures behind it."""
    best = recommend(pairs, max_false_reject)
    return {
        "rows": len(pairs),
        "judge_accepts": sum(1 for _, failed in pairs if not failed),
        "max_false_reject": max_false_reject,
        "recommended_threshold": best["threshold"],
        "at_recommended": best,
        "per_check": check_figures(pairs, best["threshold"]),
        "confidence_sources": sorted({f.confidence_source for f, _ in pairs}),
        "curve": [row_figures(pairs, t) for t in sorted({round(x / 20, 2) for x in range(10, 21)})],
        # Per sampled row: its most confident first-judge failure (None: none) and whether the judge
        # accepts it, so the survival at any configured threshold can be read back (the dry run).
        "points": [[f.min_fail_confidence(), not failed] for f, failed in pairs],
    }


def calibration_path(run_dir: Path) -> Path:
    return Path(run_dir) / CALIBRATION_FILE


def load_calibration(run_dir: Path) -> dict | None:
    p = calibration_path(run_dir)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InfirError(f"{p}: unreadable judge calibration ({e}); rerun `infir calibrate-judge`") from None


def effective_threshold(settings, run_dir: Path) -> float:
    """`verify.cascade_threshold`, else the calibration's recommendation; neither: an error."""
    if settings.cascade_threshold is not None:
        return float(settings.cascade_threshold)
    cal = load_calibration(run_dir)
    if cal is None:
        raise InfirError(
            f"verify.cascade = true needs a threshold: run `infir calibrate-judge` (writes "
            f"{calibration_path(run_dir)}) or set verify.cascade_threshold"
        )
    return float(cal["recommended_threshold"])


def expected_survival(settings, run_dir: Path) -> tuple[float, str]:
    """The share of rows expected to reach the reasoning judge, and where it comes from."""
    cal = load_calibration(run_dir)
    if cal is not None and settings.cascade_threshold is None:
        return float(cal["at_recommended"]["survival"]), f"the calibration, {calibration_path(run_dir)}"
    if cal is not None and cal.get("points"):
        t = float(settings.cascade_threshold)
        through = sum(1 for conf, _ in cal["points"] if conf is None or conf < t)
        return through / len(cal["points"]), f"the calibration's sample at threshold {t:g}"
    return float(settings.cascade_expected_survival), "verify.cascade_expected_survival"


def sample_key(seed: int, row_id: str) -> str:
    """A row's place in the seeded calibration sample: the rows with the smallest keys are taken,
    so the sample does not depend on shard sizes or order, and a larger sample contains a smaller."""
    import hashlib

    return hashlib.sha256(f"{seed}\x1f{row_id}".encode()).hexdigest()


def summary_lines(cal: dict) -> list[str]:
    """The calibration, as `status` (and the report) show it."""
    at = cal["at_recommended"]
    fr, fa = at["false_reject"], at["false_accept"]

    def pct(r: dict) -> str:
        if r["rate"] is None:
            return "n/a"
        lo, hi = r["interval"]
        return f"{r['rate']:.1%} [{lo:.1%}, {hi:.1%}] ({r['k']}/{r['n']})"

    lines = [
        f"judge cascade calibration: {cal.get('first_model')} vs {cal.get('judge_model')} on {cal['rows']} rows "
        f"(seed {cal.get('seed')}; confidence from {', '.join(cal['confidence_sources']) or 'n/a'})",
        f"  recommended threshold {at['threshold']:g}: saves {at['saving']:.1%} of judge requests; "
        f"false rejects {pct(fr)} (target <= {cal['max_false_reject']:.0%}); false accepts {pct(fa)}",
    ]
    for check, f in cal["per_check"].items():
        lines.append(f"  {check}: false reject {pct(f['false_reject'])}, false accept {pct(f['false_accept'])}")
    return lines
