"""A scripted backend: deterministic answers from plain Python functions, with no key and no network.

It speaks the same protocol as a real model (a chat.completion whose content is the function's
JSON), so every layer above it (cache, parsing, stages) runs unchanged. It knows nothing of what
the functions answer: the domain registers them per prompt name (`register_script`), and
`llm.backend = "<name>"` selects a registered script, as `"offline"` selects infir's own rules.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from pipeline.llm.types import LLMTask

Handler = Callable[[dict[str, Any]], Any]


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class ScriptedBackend:
    """Same request, same answer; the task's prompt name selects the handler."""

    def __init__(self, name: str, handlers: dict[str, Handler]):
        self.name = name
        self.handlers = dict(handlers)

    async def complete(self, body: dict, task: LLMTask) -> dict:
        handler = self.handlers.get(task.prompt.name)
        if handler is None:
            content = json.dumps({"error": f"the {self.name} backend has no handler for prompt '{task.prompt.name}'"})
        else:
            content = json.dumps(handler(task.variables), ensure_ascii=False)
        prompt_tokens = sum(_tokens(m["content"]) for m in body["messages"])
        completion_tokens = _tokens(content)
        return {
            "id": f"{self.name}-" + hashlib.sha256(content.encode()).hexdigest()[:16],
            "object": "chat.completion",
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        }
