"""Model families: what the service accepts of each model, known by its name.

Which models reason (they take `reasoning_effort` and `max_completion_tokens`, not `temperature`),
the `reasoning_effort` values each family accepts, and the request parameters it answers 400 to.
The LLM package's own knowledge of model names, nothing of the domain: the settings modules check
the config against it at load, and `openai_api/request.py` shapes and checks every body with it.

Facts (OpenAI API reference and reasoning guide, as of 2025; third-party copies of the reference
agree: learn.microsoft.com ReasoningEffort, docs.rs openai-tools ReasoningEffort):
- o1, o3, o3-mini, o4-mini: reasoning_effort low / medium / high.
- gpt-5, gpt-5-mini, gpt-5-nano: minimal / low / medium / high. gpt-5-pro: high only. gpt-5.1:
  none / low / medium / high ("minimal" answered 400: "Unsupported value: 'minimal' is not supported
  with the 'gpt-5.1' model", openai/openai-agents-python#2089). gpt-5-chat-* does not reason.
- Reasoning models answer 400 to temperature, top_p, logprobs / top_logprobs, presence /
  frequency penalties, and max_tokens ("Use 'max_completion_tokens' instead").
- o1-mini and o1-preview take no reasoning_effort, no system or developer message and no
  json_schema response_format (community.openai.com, "developer role not accepted for o1 / o1-mini /
  o3-mini", the parameter table): every request infir sends them would be refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Parameters every reasoning model of the chat completions API answers 400 to.
REASONING_REJECTS = frozenset(
    {"temperature", "top_p", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty", "max_tokens"}
)
O_SERIES_EFFORTS = ("low", "medium", "high")


@dataclass(frozen=True)
class Family:
    name: str
    reasoning: bool
    #: reasoning_effort values the service accepts; () for a model that takes no reasoning_effort.
    efforts: tuple[str, ...] = ()
    rejects: frozenset[str] = frozenset()
    #: False: infir's requests (a system message, a json_schema response_format) cannot be served.
    serves_infir: bool = True
    #: Set for a name infir does not know: what it is assumed to be ("an o-series reasoning model").
    assumed: str | None = None

    def accepts(self, param: str) -> bool:
        return param not in self.rejects

    def takes_effort(self, effort: str) -> bool:
        return effort in self.efforts


CHAT = Family("chat", reasoning=False)
_O_SERIES = Family("o-series", True, O_SERIES_EFFORTS, REASONING_REJECTS)
_O1_MINI = Family("o1-mini / o1-preview", True, (), REASONING_REJECTS | {"reasoning_effort"}, serves_infir=False)
_GPT5 = Family("gpt-5", True, ("minimal", "low", "medium", "high"), REASONING_REJECTS)
_GPT5_PRO = Family("gpt-5 pro", True, ("high",), REASONING_REJECTS)
_GPT51 = Family("gpt-5.1", True, ("none", "low", "medium", "high"), REASONING_REJECTS)

# A dated snapshot (-2025-01-31) or a short date (-0125) is the family of its alias.
_SNAP = r"(-\d{4}-\d{2}-\d{2}|-\d{4})?$"
_KNOWN: tuple[tuple[re.Pattern, Family], ...] = tuple(
    (re.compile(p + _SNAP), f)
    for p, f in (
        (r"^gpt-5-chat(-latest)?", CHAT),
        (r"^o1-(mini|preview)", _O1_MINI),
        (r"^(o1|o3|o3-mini|o4-mini)", _O_SERIES),
        (r"^gpt-5(-mini|-nano)?", _GPT5),
        (r"^gpt-5-pro", _GPT5_PRO),
        (r"^gpt-5\.1", _GPT51),
    )
)
_O_LIKE = re.compile(r"^o\d")
_GPT5_LIKE = re.compile(r"^gpt-5")


def _name(model: str) -> str:
    return model.rsplit("/", 1)[-1].lower()  # provider-prefixed names, e.g. "openai/o3-mini"


def family_of(model: str | None) -> Family:
    """The family of `model`; an unknown name that looks like a reasoning model gets the family it
    most likely belongs to, with `assumed` saying so. Any other unknown name is a chat model."""
    name = _name(model or "")
    for pattern, family in _KNOWN:
        if pattern.match(name):
            return family
    if _GPT5_LIKE.match(name) and "chat" not in name:
        return Family("gpt-5", True, O_SERIES_EFFORTS, REASONING_REJECTS, assumed="a gpt-5 reasoning model")
    if _O_LIKE.match(name):
        return Family("o-series", True, O_SERIES_EFFORTS, REASONING_REJECTS, assumed="an o-series reasoning model")
    return CHAT


def is_reasoning_model(model: str) -> bool:
    """o1*, o3*, o4*, gpt-5* (not gpt-5-chat*): they take reasoning_effort, not temperature."""
    return family_of(model).reasoning


def accepts(model: str, param: str) -> bool:
    """Whether the service takes request parameter `param` (e.g. "logprobs") for `model`."""
    return family_of(model).accepts(param)


def effort_problem(model: str, effort: str) -> str | None:
    """Why the service would refuse `reasoning_effort = effort` for `model` (None: it accepts it;
    a model that does not reason is never sent one)."""
    fam = family_of(model)
    if not fam.reasoning or fam.takes_effort(effort):
        return None
    if not fam.efforts:
        return f"{model} takes no reasoning_effort"
    what = f"not a model infir knows: assumed {fam.assumed}" if fam.assumed else fam.name
    return f"{model} ({what}) accepts reasoning_effort {_or(fam.efforts)}, not {effort!r}"


def _or(values: tuple[str, ...]) -> str:
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


def model_problem(model: str) -> str | None:
    """Why no request infir sends could be served by `model` (None: it can be)."""
    fam = family_of(model)
    if fam.serves_infir:
        return None
    return (f"{model} takes no system message and no json_schema response_format, which every infir "
            "request has; use o3-mini, o4-mini or a gpt-5 model")


def rejected_params(model: str, params: dict) -> list[str]:
    """The parameters of a request body (set, not None) that the service refuses for `model`."""
    fam = family_of(model)
    return sorted(k for k, v in params.items() if v is not None and not fam.accepts(k))


def assumption(model: str) -> str | None:
    """One line saying what is assumed of a model infir does not know (None: known, or a plain
    chat model, which is what every other name is taken for)."""
    fam = family_of(model)
    if not fam.assumed:
        return None
    return (f"{model}: not a model infir knows; assumed {fam.assumed}: reasoning_effort {_or(fam.efforts)}, "
            "max_completion_tokens, no temperature, top_p, logprobs or max_tokens")
