"""The README's example test file, taken from README.md as it stands and run by pytest in a
subprocess (plugin loaded through its entry point), so the example cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(60)

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Testing your application with tidelog"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(# test_orders\.py\n.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "the section should hold exactly one ```python block starting '# test_orders.py'"
    return blocks[0]


def test_the_readme_example_runs_as_written(pytester, monkeypatch, tmp_path):
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    temp_root = tmp_path / "tempdirs"
    temp_root.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp_root))
    code = readme_example()
    assert "tidelog_bootstrap" in code and "sync." in code and "async def" in code
    pytester.makepyfile(test_orders=code)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=45)
    result.assert_outcomes(passed=2)
    assert list(temp_root.iterdir()) == []
