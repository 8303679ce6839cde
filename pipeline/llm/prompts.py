"""Prompt files: `pipeline/prompts/<name>.md` (shipped in the package), one system and one user Jinja2 template each.

File format::

    optional header: free notes, and `key: value` lines read into `Prompt.meta`
    (e.g. `expected_output_tokens: 200`, used by cost estimates). Never sent.
    ### system
    <system template>
    ### user
    <user template>

Templates use Jinja2 with `StrictUndefined` (a missing variable is an error, never an empty
string), no autoescape, `keep_trailing_newline=False`. Untrusted text (passages, queries) goes
through the `block` filter::

    {{ passage | block("passage") }}  ->  <data label="passage">\\n...escaped...\\n</data>

which escapes `&`, `<`, `>` so that the text can never close its block or open another one.
`Prompt.sha` is the first 12 hex digits of the sha256 of the file's bytes: the prompt's version.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from pipeline.errors import InfirError

# The bundled prompts ship inside the package (found through importlib.resources, so an installed
# wheel finds them wherever site-packages is); `run.prompts_dir` / `--prompts DIR` overrides them.
# The hash is of the file's bytes, so the same text gives the same hash from either place.
DEFAULT_PROMPTS_DIR = importlib.resources.files("pipeline") / "prompts"

_SECTION_RE = re.compile(r"^###[ \t]+(system|user)[ \t]*$", re.MULTILINE)
_META_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)[ \t]*:[ \t]*(.+?)[ \t]*$")


def escape_data(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def block(text: Any, label: str) -> str:
    """Jinja filter: wrap untrusted `text` in a `<data label=...>` block it cannot escape from."""
    safe_label = escape_data(str(label)).replace('"', "&quot;")
    return f'<data label="{safe_label}">\n{escape_data(str(text))}\n</data>'


def _make_env() -> jinja2.Environment:
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )
    env.filters["block"] = block
    return env


_ENV = _make_env()


@functools.lru_cache(maxsize=256)
def _compile(path: str, text: str) -> tuple[jinja2.Template, jinja2.Template]:
    system_src, user_src, _meta = _split(path, text)
    section = "system"
    try:
        system_t = _ENV.from_string(system_src)
        section = "user"
        user_t = _ENV.from_string(user_src)
    except jinja2.TemplateSyntaxError as e:
        raise InfirError(
            f"prompt {path}: template syntax error in '### {section}' (line {e.lineno} of the section): {e.message}"
        ) from None
    return system_t, user_t


def _split(path: str, text: str) -> tuple[str, str, dict[str, str]]:
    marks = list(_SECTION_RE.finditer(text))
    names = [m.group(1) for m in marks]
    if names.count("system") != 1 or names.count("user") != 1 or names != ["system", "user"]:
        found = ", ".join(f"'### {n}'" for n in names) or "none"
        raise InfirError(
            f"prompt {path}: expected one '### system' section followed by one '### user' section "
            f"(found: {found})"
        )
    header = text[: marks[0].start()]
    system_src = text[marks[0].end() : marks[1].start()].strip("\r\n")
    user_src = text[marks[1].end() :].strip("\r\n")
    meta: dict[str, str] = {}
    for line in header.splitlines():
        m = _META_RE.match(line.strip())
        if m:
            meta[m.group(1)] = m.group(2)
    return system_src, user_src, meta


@dataclass(frozen=True)
class Prompt:
    name: str
    path: Path
    text: str
    sha: str
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_text(cls, name: str, text: str, path: Path | None = None) -> Prompt:
        """A prompt from a string (tests, generated prompts). Validated like a file."""
        path = path or Path(f"<{name}>")
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        _, _, meta = _split(str(path), text)
        _compile(str(path), text)
        return cls(name=name, path=path, text=text, sha=sha, meta=meta)

    def render(self, **variables: Any) -> list[dict[str, str]]:
        system_t, user_t = _compile(str(self.path), self.text)
        try:
            system = system_t.render(**variables).strip()
            user = user_t.render(**variables).strip()
        except jinja2.UndefinedError as e:
            raise InfirError(f"prompt {self.path}: undefined variable: {e.message}") from None
        except jinja2.TemplateError as e:
            raise InfirError(f"prompt {self.path}: render error: {e}") from None
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    @property
    def expected_output_tokens(self) -> int | None:
        raw = self.meta.get("expected_output_tokens")
        try:
            return int(raw) if raw is not None else None
        except ValueError:
            return None


def load_prompt(name: str, prompts_dir: Path | None = None) -> Prompt:
    """Read `<prompts_dir>/<name>.md` (default: the package's bundled `pipeline/prompts/`)."""
    base = Path(prompts_dir) if prompts_dir is not None else DEFAULT_PROMPTS_DIR
    path = base.joinpath(f"{name}.md")
    if ".." in Path(name).parts or Path(name).is_absolute():
        raise InfirError(f"prompt name {name!r} must be a plain name inside {base}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InfirError(f"prompt {path}: file not found") from None
    except OSError as e:
        raise InfirError(f"prompt {path}: cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InfirError(f"prompt {path}: not UTF-8 (byte {e.start})") from None
    sha = hashlib.sha256(data).hexdigest()[:12]
    _, _, meta = _split(str(path), text)
    _compile(str(path), text)  # syntax errors surface at load, naming the file
    return Prompt(name=name, path=path, text=text, sha=sha, meta=meta)
