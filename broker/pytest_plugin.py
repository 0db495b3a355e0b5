"""tidelog's pytest plugin: a real broker for the tests of an application that uses tidelog.

Installed with the package (entry point `pytest11: tidelog`), so it needs no configuration:

    def test_round_trip(tidelog_bootstrap):          # "127.0.0.1:PORT"
        with Producer(bootstrap_servers=tidelog_bootstrap) as producer: ...

- `tidelog_broker`: a started `ThreadedBroker` (broker/embedded.py): the broker runs on its own
  event loop in a thread, so sync and async tests alike can use it. Temporary data, removed at
  teardown. Scope: `function` by default (every test starts with an empty broker, in about
  10 ms); `--tidelog-scope=module|session` or the ini option `tidelog_scope` shares one broker
  per module or per run (faster, but tests then see each other's topics).
- `tidelog_bootstrap`: `tidelog_broker.bootstrap_servers`, same scope.
- `tidelog_cluster`: a factory, function-scoped: `tidelog_cluster(3)` starts 3 broker
  processes (`python -m broker`, broker/testing.py) and returns a `LocalCluster` with
  `.bootstrap_servers` and `.brokers` (each `.kill9()`, `.terminate()`, `.pause()`,
  `.resume()`, `.restart()`). Every process group is killed and the temp dirs removed at
  teardown, whether the test passed or not.

Nothing happens unless a test asks for a fixture: the plugin only registers its option, and it
imports the broker itself on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from broker.embedded import ThreadedBroker
    from broker.testing import LocalCluster

SCOPES = ("function", "module", "session")
_OPTION = "--tidelog-scope"
_INI = "tidelog_scope"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tidelog")
    group.addoption(
        _OPTION, dest="tidelog_scope", choices=SCOPES, default=None,
        help="scope of the tidelog_broker/tidelog_bootstrap fixtures (default: ini tidelog_scope, else function)",
    )
    parser.addini(_INI, default="function",
                  help="scope of the tidelog_broker/tidelog_bootstrap fixtures: function, module or session")


def _broker_scope(fixture_name: str, config: pytest.Config) -> str:
    scope = config.getoption("tidelog_scope") or config.getini(_INI) or "function"
    if scope not in SCOPES:
        raise pytest.UsageError(f"{_INI} must be one of {', '.join(SCOPES)}, got {scope!r}")
    return scope


@pytest.fixture(scope=_broker_scope)
def tidelog_broker() -> Iterator[ThreadedBroker]:
    """A started single-node tidelog broker (ThreadedBroker) on 127.0.0.1, temp data removed after."""
    from broker.embedded import ThreadedBroker

    broker = ThreadedBroker().start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope=_broker_scope)
def tidelog_bootstrap(tidelog_broker: ThreadedBroker) -> str:
    """The `tidelog_broker`'s address, "127.0.0.1:PORT", for bootstrap_servers=."""
    return tidelog_broker.bootstrap_servers


@pytest.fixture
def tidelog_cluster() -> Iterator[Callable[..., LocalCluster]]:
    """`tidelog_cluster(n, **settings) -> LocalCluster` of n broker processes, started and ready.

    Each process gets --voters naming all n, so they form one cluster (a shared Raft metadata
    quorum; partition data is not replicated yet). Everything started is killed at teardown.
    """
    from broker.testing import LocalCluster

    made: list[LocalCluster] = []

    def make(size: int = 3, *, timeout_s: float = 20.0, **settings: Any) -> LocalCluster:
        cluster = LocalCluster(size, settings=settings)
        made.append(cluster)  # before start(): a failed start is closed by start(), again here
        return cluster.start(timeout_s)

    try:
        yield make
    finally:
        for cluster in made:
            cluster.close()
