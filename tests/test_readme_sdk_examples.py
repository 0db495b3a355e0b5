"""The README's "Using tidelog from Python" examples run as written, against a real broker."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from broker import ThreadedBroker

pytestmark = pytest.mark.timeout(60)
README = Path(__file__).resolve().parent.parent / "README.md"


def _section_blocks(title: str) -> list[str]:
    text = README.read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_sdk_examples_run_as_written():
    blocks = _section_blocks("Using tidelog from Python")
    assert len(blocks) == 2
    outputs = []
    with ThreadedBroker() as broker:
        for code in blocks:
            code = code.replace("127.0.0.1:9292", broker.bootstrap_servers)
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=45)
            assert result.returncode == 0, result.stderr
            outputs.append(result.stdout)
    assert "b'customer-7' b'first'" in outputs[0]  # the seek landed on the first record
    # the topic now holds both examples' records: the first example's two and this one
    assert sorted(outputs[1].splitlines()) == ["b'first'", "b'from a thread'", "b'second'"]
