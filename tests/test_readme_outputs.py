"""The command outputs README.md shows are what the commands print today: tools/readme_outputs.py
(`make docs`) runs them (the real CLI against the local server, about 20 s) and its blocks must equal
README.md's marked parts. When this fails, run `make docs` and commit README.md."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import pytest

from conftest import REPO

_spec = importlib.util.spec_from_file_location("readme_outputs", REPO / "tools" / "readme_outputs.py")
readme_outputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_outputs)


def test_readme_shows_what_the_commands_print():
    current = readme_outputs.README.read_text(encoding="utf-8")
    generated = readme_outputs.render(current, readme_outputs.generate())
    diff = "\n".join(difflib.unified_diff(current.splitlines(), generated.splitlines(), "README.md", "the commands",
                                          lineterm=""))
    assert not diff, "README.md's command outputs are stale; run `make docs`:\n" + diff


README = """# title
Prose with an inline figure: <!-- docs:begin cost -->$1.00<!-- docs:end --> stays prose.
<!-- docs:begin table -->
```
old output
```
<!-- docs:end -->
More prose, ``` and `code` untouched.
"""


def test_render_rewrites_only_the_marked_parts():
    out = readme_outputs.render(README, {"cost": "$2.07", "table": "\n```\n$ infir x\nnew output\n```\n"})
    assert out == README.replace("$1.00", "$2.07").replace("old output", "$ infir x\nnew output")


@pytest.mark.parametrize("blocks, readme, says", [
    ({"cost": "x"}, README, "no generator makes them: table"),
    ({"cost": "x", "table": "y", "extra": "z"}, README, "not marked in README.md: extra"),
    ({"cost": "x", "table": "y"}, README + "<!-- docs:begin cost -->a<!-- docs:end -->\n", "marked twice: cost"),
    ({"cost": "x", "table": "y"}, README + "<!-- docs:begin Bad -->\n", "without its docs:end"),
])
def test_render_refuses_parts_without_a_generator_or_a_place(blocks, readme, says):
    with pytest.raises(readme_outputs.DocsError) as raised:
        readme_outputs.render(readme, blocks)
    assert says in str(raised.value)


def test_only_timings_and_the_temp_folder_are_normalized(tmp_path):
    work = tmp_path / "infir-docs-x"
    line = (f"[progress] verify: 146/146 rows | spent $2.0827 | ETA 0s | elapsed 1.6s (done) {work}/runs/sample "
            "| elapsed 16m05s")
    assert readme_outputs.normalize(line, work) == (
        "[progress] verify: 146/146 rows | spent $2.0827 | ETA 0s | elapsed <t> (done) runs/sample | elapsed <t>")


def test_a_command_that_exits_otherwise_is_one_error_line(tmp_path):
    co = readme_outputs.Checkout("http://127.0.0.1:9/v1", tmp_path)
    with pytest.raises(readme_outputs.DocsError, match=r"`infir status runs/none` exited 2, expected 0: .*no such run"):
        co.run("infir status runs/none")
    assert Path(tmp_path / "data" / "sample").resolve() == (REPO / "data" / "sample").resolve()
