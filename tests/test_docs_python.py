"""docs/python.md: every ```python block runs, each ``##`` section in order in a fresh namespace."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def _sections() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    for part in re.split(r"^## ", DOC.read_text(encoding="utf-8"), flags=re.MULTILINE)[1:]:
        title = part.splitlines()[0].strip()
        blocks = re.findall(r"^```python\n(.*?)^```", part, flags=re.MULTILINE | re.DOTALL)
        if blocks:
            sections[title] = blocks
    return sections


def test_the_page_has_examples():
    assert "Character-level language model" in _sections()


@pytest.mark.slow
@pytest.mark.parametrize("title", sorted(_sections()))
def test_examples_run(title, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the examples' run directories go here
    namespace: dict = {"__name__": "docs_python"}
    for i, block in enumerate(_sections()[title]):
        exec(compile(block, f"{DOC.name}[{title}][{i}]", "exec"), namespace)  # noqa: S102
    capsys.readouterr()
