"""Every ```python block of the docs pages below runs: a page's blocks in order, in one namespace.

A block may use what an earlier block of its page defined; nothing else is given to it. The run
directories the examples write go to a temporary working directory.
"""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ("python.md", "topologies.md", "flax.md", "scaling.md")


def blocks(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (DOCS / page).read_text(encoding="utf-8"), flags=re.M | re.S)


@pytest.mark.slow  # end-to-end: the pages train small models
@pytest.mark.parametrize("page", PAGES)
def test_every_python_block_of_the_page_runs_in_order(page, tmp_path, monkeypatch, capsys):
    found = blocks(page)
    assert found, f"{page} has no python blocks"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page[:-3]}"}
    for i, block in enumerate(found):
        exec(compile(block, f"{page}[block {i + 1} of {len(found)}]", "exec"), namespace)  # noqa: S102
    capsys.readouterr()
