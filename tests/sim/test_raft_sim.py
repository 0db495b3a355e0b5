"""Randomized, deterministic simulation of the Raft core (see tests/sim/engine.py).

CI runs SIM_SEEDS seeds of SIM_STEPS events each. A failure prints its seed and a one-line
replay command; environment knobs:

    TIDELOG_SIM_SEED=1234 python -m pytest tests/sim -k replay      # replay one seed
    TIDELOG_SIM_TRACE=1 ...                                          # ... printing every event (-s)
    TIDELOG_SIM_SEEDS=2000 TIDELOG_SIM_FIRST_SEED=10000 python -m pytest tests/sim   # soak
    TIDELOG_SIM_STEPS=20000 ...                                      # longer runs per seed
"""

from __future__ import annotations

import os

import pytest

from tests.sim.engine import SimParams, Simulation

pytestmark = pytest.mark.timeout(300)

DEFAULT_STEPS = 8000
SIM_STEPS = int(os.environ.get("TIDELOG_SIM_STEPS", DEFAULT_STEPS))
SIM_SEEDS = int(os.environ.get("TIDELOG_SIM_SEEDS", 250))
FIRST_SEED = int(os.environ.get("TIDELOG_SIM_FIRST_SEED", 0))


def run_seed(seed: int, trace: bool = False):
    params = SimParams.from_seed(seed, SIM_STEPS)
    return Simulation(params, default_steps=DEFAULT_STEPS, trace=trace).run()


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + SIM_SEEDS))
def test_sim_seed(seed: int) -> None:
    run_seed(seed)


def test_replay() -> None:
    seed = os.environ.get("TIDELOG_SIM_SEED")
    if seed is None:
        pytest.skip("set TIDELOG_SIM_SEED=<seed> to replay one simulation")
    result = run_seed(int(seed), trace=os.environ.get("TIDELOG_SIM_TRACE") == "1")
    print(result)


def test_same_seed_same_run() -> None:
    """Determinism is what makes a printed seed worth anything."""
    assert run_seed(7) == run_seed(7)
