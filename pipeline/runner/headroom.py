"""What the max tokens a stage asks for cost in rate limit, from the usage its answers showed.

OpenAI counts a request against a model's tokens-per-minute limit as its prompt plus the max tokens it
asks for (`max_tokens` / `max_completion_tokens`), not what the answer used. A judge asking 4,000 while
its answers use ~2,000 (reasoning included) spends half its token budget on room it never fills: under
a TPM limit, a smaller setting lets proportionally more requests through. The dry run and `plan` say so
per LLM stage, from the usage the stage's finished shards recorded (a pilot's, for `plan`), for two
settings: just above the longest answer seen (nothing observed would have been cut), and 10% above the
99th percentile (the share of answers that would have been cut is said: each is a failed row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.runner.shape import LLMStage

#: Answers observed before a suggestion is made: fewer say too little about the longest answer.
MIN_ANSWERS = 20
#: Room kept above the longest answer observed, and above the 99th percentile.
ABOVE_LONGEST, ABOVE_P99 = 1.05, 1.10
#: Gains smaller than this are not worth a line.
MIN_GAIN = 1.05


@dataclass(frozen=True)
class Headroom:
    stage: str
    key: str  # the config key of the max tokens
    asked: int
    answers: int
    mean_prompt: float
    mean_completion: float
    p99_completion: int
    max_completion: int
    safe: int  # a setting above the longest answer seen
    tight: int  # a setting 10% above the 99th percentile
    cut: int  # answers seen longer than `tight`

    def gain(self, setting: int) -> float:
        """Requests per minute under a TPM limit at `setting`, over the current one."""
        return (self.mean_prompt + self.asked) / (self.mean_prompt + setting)

    def line(self) -> str:
        return f"{self.stage}: {self.note()}"

    def note(self) -> str:
        out = (
            f"asks {self.asked:,} max tokens per request; its {self.answers:,} answers used "
            f"{self.mean_completion:,.0f} on average (p99 {self.p99_completion:,}, longest {self.max_completion:,}, "
            f"reasoning included). Under a tokens-per-minute limit a request counts its prompt (~{self.mean_prompt:,.0f}) "
            f"plus the max: {self.key} = {self.safe:,} (above the longest answer) would let {self.gain(self.safe):.2f}x "
            f"as many requests through"
        )
        if self.tight < self.safe:
            out += (f"; = {self.tight:,} {self.gain(self.tight):.2f}x, but {self.cut:,} of the {self.answers:,} answers "
                    f"({self.cut / self.answers:.1%}) were longer (a cut answer is a failed row)")
        return out


def observed(stage_dir: Path, column: str) -> list[tuple[int, int]]:
    """(prompt, completion) tokens of every answer a stage's shards recorded (cache hits included)."""
    out: list[tuple[int, int]] = []
    for path in sorted(Path(stage_dir).glob("part-*.parquet")):
        try:
            schema = pq.read_schema(path)
            if column not in schema.names:
                continue
            values = pq.read_table(path, columns=[column]).column(column).to_pylist()
        except (OSError, ValueError):
            continue  # a damaged shard says nothing reliable about usage; the stage redoes it
        out += [(int(u["prompt_tokens"]), int(u["completion_tokens"])) for u in values if u]
    return out


def headroom(stage: LLMStage, ctx) -> Headroom | None:
    """The stage's suggestion (`ctx` prepared: its params known), or None when there is nothing to say."""
    asked = ctx.params.get("max_completion_tokens") or ctx.params.get("max_tokens")
    if not asked:
        return None
    seen = observed(ctx.run_dir / stage.name, stage.usage_column)
    if len(seen) < MIN_ANSWERS:
        return None
    completions = sorted(c for _, c in seen)
    longest = completions[-1]
    p99 = completions[min(len(completions) - 1, math.ceil(0.99 * len(completions)) - 1)]

    def setting(tokens: float) -> int:
        return min(int(asked), max(100, math.ceil(tokens / 100) * 100))

    safe, tight = setting(longest * ABOVE_LONGEST), setting(p99 * ABOVE_P99)
    settings = stage.settings(ctx.cfg)
    key = f"{stage.section}.{'max_completion_tokens' if hasattr(settings, 'max_completion_tokens') else 'max_tokens'}"
    h = Headroom(
        stage=stage.name, key=key, asked=int(asked), answers=len(seen),
        mean_prompt=sum(p for p, _ in seen) / len(seen), mean_completion=sum(completions) / len(seen),
        p99_completion=p99, max_completion=longest, safe=safe, tight=tight,
        cut=sum(1 for c in completions if c > tight),
    )
    return h if h.gain(h.tight) >= MIN_GAIN else None
