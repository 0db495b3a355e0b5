"""Shared fixtures: real broker processes that are always cleaned up (see tests/brokerproc.py)."""

from __future__ import annotations

import pytest

from tests.brokerproc import BrokerProcess


@pytest.fixture
def broker_factory(tmp_path):
    """`make(name="b1", **settings) -> started BrokerProcess`; every process made is killed at the end."""
    made: list[BrokerProcess] = []

    def make(name: str = "b1", *, node_id: int = 1, start: bool = True, **settings) -> BrokerProcess:
        proc = BrokerProcess(tmp_path / name, node_id=node_id, settings=settings, log_path=tmp_path / f"{name}.log")
        made.append(proc)
        return proc.start() if start else proc

    yield make
    for proc in made:
        proc.close()


@pytest.fixture
def broker_process(broker_factory) -> BrokerProcess:
    """One started single-node broker with default settings on a free port."""
    return broker_factory()
