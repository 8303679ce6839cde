"""Backends by name (`llm.backend`): `openai` is built in; scripted ones are registered by whoever
owns their answers (the domain registers `offline`), as plugins register with simonw/llm. The LLM
layer therefore never imports the domain."""

from __future__ import annotations


from pipeline.errors import InfirError
from pipeline.llm.scripted import Handler, ScriptedBackend
from pipeline.llm.settings import LLMSettings
from pipeline.llm.types import Backend

_SCRIPTS: dict[str, dict[str, Handler]] = {}


def register_script(name: str, handlers: dict[str, Handler]) -> None:
    """Make `llm.backend = name` answer each prompt name with its handler (variables -> JSON-able)."""
    _SCRIPTS[name] = dict(handlers)


def scripted(name: str) -> ScriptedBackend:
    if name not in _SCRIPTS:
        raise InfirError(f"llm.backend = {name!r}: no scripted backend of that name is registered")
    return ScriptedBackend(name, _SCRIPTS[name])


def backend_for(settings: LLMSettings) -> Backend:
    if settings.backend == "openai":
        from pipeline.llm.openai_api.backend import OpenAIBackend

        return OpenAIBackend(settings)
    return scripted(settings.backend)


