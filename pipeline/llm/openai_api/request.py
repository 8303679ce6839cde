"""OpenAI chat-completions request shaping: parameters per model family, the strict JSON schema
sent as `response_format`, the request body and its cache key."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel

from pipeline.errors import InfirError
from pipeline.fileio import canonical_json as _canonical_json
from pipeline.llm.families import effort_problem, family_of, rejected_params
from pipeline.llm.families import is_reasoning_model  # noqa: F401  (re-exported: it lives in families now)
from pipeline.llm.types import CACHE_KEY_VERSION, LLMTask


def default_params(
    model: str,
    *,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    reasoning_effort: str = "medium",
) -> dict[str, Any]:
    """The right parameter set for `model` (its family: pipeline.llm.families).

    Reasoning models: {reasoning_effort (where the family takes one), max_completion_tokens
    (default 4096: reasoning tokens count against it)}; others: {temperature, max_tokens (default 1024)}.
    """
    fam = family_of(model)
    if fam.reasoning:
        effort = {"reasoning_effort": reasoning_effort} if fam.efforts else {}
        return {**effort, "max_completion_tokens": max_tokens or 4096}
    return {"temperature": temperature, "max_tokens": max_tokens or 1024}


_SCHEMA_CHILD_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SCHEMA_CHILD_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SCHEMA_CHILD_ONE = ("items", "not", "additionalProperties", "contains")


def _resolve_ref(root: dict[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise InfirError(f"unsupported JSON schema $ref {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _strictify(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    # A $ref with siblings (e.g. a description) is not allowed in strict mode: inline it.
    if "$ref" in node and len(node) > 1:
        merged = {**copy.deepcopy(_resolve_ref(root, node.pop("$ref"))), **node}
        node.clear()
        node.update(merged)
    node.pop("title", None)
    node.pop("default", None)
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict):
        # pydantic wraps a described $ref as allOf[{$ref}]: flatten it (strict mode needs plain nodes)
        node.pop("allOf")
        inner = all_of[0]
        if set(inner) == {"$ref"} and not node:
            node.update(inner)
            return node
        if "$ref" in inner:
            inner = {**copy.deepcopy(_resolve_ref(root, inner["$ref"])), **{k: v for k, v in inner.items() if k != "$ref"}}
        merged = {**inner, **node}
        node.clear()
        node.update(merged)
        return _strictify(node, root)
    for k in _SCHEMA_CHILD_MAPS:
        if isinstance(node.get(k), dict):
            for sub in node[k].values():
                if isinstance(sub, dict):
                    _strictify(sub, root)
    for k in _SCHEMA_CHILD_LISTS:
        if isinstance(node.get(k), list):
            for sub in node[k]:
                if isinstance(sub, dict):
                    _strictify(sub, root)
    for k in _SCHEMA_CHILD_ONE:
        if isinstance(node.get(k), dict):
            _strictify(node[k], root)
    if isinstance(node.get("properties"), dict):
        node["required"] = list(node["properties"])
        node.setdefault("additionalProperties", False)
    elif node.get("type") == "object":
        node.setdefault("additionalProperties", False)
    return node


@functools.lru_cache(maxsize=256)
def _strict_schema_json(model: type[BaseModel]) -> str:
    schema = copy.deepcopy(model.model_json_schema())
    # Declaration order is kept: the model writes fields in this order (put reasoning first).
    return json.dumps(_strictify(schema, schema))


def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A strict-mode JSON schema for `model`: additionalProperties false and every property
    required on every object, titles/defaults dropped, $defs kept (refs with siblings inlined).
    Our own code, not the SDK's private helper, so cache keys don't move with SDK upgrades."""
    return json.loads(_strict_schema_json(model))


@functools.lru_cache(maxsize=256)
def response_format_for(model: type[BaseModel], form: str = "json_schema") -> dict[str, Any]:
    """The `response_format` of a request in the form the server speaks (`llm.structured_output`):
    "json_schema" (OpenAI's strict structured outputs) or "json_object" with the same strict schema
    in a `schema` field (llama-cpp-python's server enforces it by grammar). The form is part of the
    body, so of the cache key. Shared, read-only: never mutate the returned dict."""
    if form == "json_object":
        return {"type": "json_object", "schema": strict_json_schema(model)}
    if form != "json_schema":
        raise InfirError(f"llm.structured_output = {form!r}: expected \"json_schema\" or \"json_object\"")
    name = re.sub(r"[^A-Za-z0-9_-]", "_", model.__name__)[:64] or "output"
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "strict": True, "schema": strict_json_schema(model)},
    }


_RESERVED_PARAMS = {"model", "messages", "response_format", "stream", "n"}


def build_body(task: LLMTask) -> dict[str, Any]:
    """The request body: model, rendered messages, params (None values dropped), response_format."""
    bad = _RESERVED_PARAMS & set(task.params)
    if bad:
        raise InfirError(f"LLM task {task.key_id}: params may not set {sorted(bad)}")
    # What the service would answer 400 to (pipeline.llm.families): refused here, per request, as
    # well as at config load, so a caller that builds its own params cannot send it either.
    wrong = rejected_params(task.model, task.params)
    if wrong:
        raise InfirError(
            f"LLM task {task.key_id}: {task.model} does not take {wrong} "
            f"(reasoning models take reasoning_effort and max_completion_tokens; use default_params)"
        )
    effort = task.params.get("reasoning_effort")
    problem = effort_problem(task.model, effort) if effort is not None else None
    if problem:
        raise InfirError(f"LLM task {task.key_id}: reasoning_effort {problem}")
    body: dict[str, Any] = {"model": task.model, "messages": task.prompt.render(**task.variables)}
    body.update((k, v) for k, v in task.params.items() if v is not None)
    body["response_format"] = response_format_for(task.output_model, task.structured_output)
    return body


def request_of(task: LLMTask) -> tuple[dict[str, Any], str]:
    """The task's request body and cache key, built on first use and kept on the task."""
    if task._request is None:
        body = build_body(task)
        task._request = (body, cache_key(body))
    return task._request


def canonical_json(obj: Any) -> str:
    # 0.0 and 0 (TOML float vs int) must give the same key.
    return _canonical_json(obj, integral_floats_as_int=True)


def cache_key(body: dict[str, Any]) -> str:
    """"v1:" + sha256(canonical JSON of the body). The body never holds the key or headers."""
    return f"{CACHE_KEY_VERSION}:" + hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()
