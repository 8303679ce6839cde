"""Token estimates before a request is sent (tiktoken when installed, else ~4 characters a token):
the budget's reservation, the rate limiter's TPM and the dry run."""

from __future__ import annotations

from typing import Any, Sequence

_tiktoken_encoders: dict[str, Any] = {}


def _encoder(model: str) -> Any:
    if model in _tiktoken_encoders:
        return _tiktoken_encoders[model]
    enc = None
    try:  # optional; offline installs without BPE files fall back to chars/4
        import tiktoken  # type: ignore[import-not-found]

        try:
            enc = tiktoken.encoding_for_model(model)
        except KeyError:
            enc = tiktoken.get_encoding("o200k_base")
    except Exception:
        enc = None
    _tiktoken_encoders[model] = enc
    return enc


def estimate_prompt_tokens(messages: Sequence[dict[str, Any]], model: str | None = None, exact: bool = False) -> int:
    """chars/4 (+4 per message); tiktoken when `exact` and installed."""
    enc = _encoder(model or "") if exact else None
    total = 3
    for m in messages:
        content = m.get("content") or ""
        total += 4 + (len(enc.encode(content)) if enc is not None else (len(content) + 3) // 4)
    return total


def max_output_tokens(body: dict[str, Any]) -> int:
    v = body.get("max_completion_tokens") or body.get("max_tokens")
    return int(v) if isinstance(v, (int, float)) else 0
