"""The layering of ARCHITECTURE.md, checked mechanically by import-linter's contracts in pyproject.toml."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    beside = Path(sys.executable).parent / "lint-imports"  # the one installed with this interpreter
    exe = str(beside) if beside.exists() else shutil.which("lint-imports")
    assert exe, "lint-imports is not installed (pip install -e '.[test]')"
    result = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")
