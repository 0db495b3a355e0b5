"""Hypothesis profiles of the fuzz suite (see tests/fuzz/__init__.py).

The profiles are registered here but never loaded globally: each fuzz test takes its settings
from `fuzz_settings(weight)`, so the Hypothesis defaults of every other test stay untouched.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

PROFILE_ENV = "TIDELOG_FUZZ_PROFILE"
EXAMPLES_ENV = "TIDELOG_FUZZ_MAX_EXAMPLES"  # overrides the profile's count for a time-boxed run
_REPO = Path(__file__).resolve().parents[2]
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "tidelog-fuzz-ci",
    max_examples=200,
    derandomize=True,  # CI runs the same examples every time: a red build is reproducible
    database=None,
    deadline=None,
    suppress_health_check=_SLOW_OK,
    print_blob=True,
)
settings.register_profile(
    "tidelog-fuzz-long",
    max_examples=20_000,
    derandomize=False,
    database=DirectoryBasedExampleDatabase(str(_REPO / ".hypothesis" / "examples")),
    deadline=None,
    suppress_health_check=_SLOW_OK,
    print_blob=True,
)

PROFILE = os.environ.get(PROFILE_ENV, "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"{PROFILE_ENV} must be 'ci' or 'long', got {PROFILE!r}")


def fuzz_settings(weight: float = 1.0) -> settings:
    """Settings of the active profile; `weight` scales max_examples for slow (file I/O) targets."""
    base = settings.get_profile(f"tidelog-fuzz-{PROFILE}")
    override = os.environ.get(EXAMPLES_ENV)
    examples = int(override) if override else base.max_examples
    return settings(base, max_examples=max(1, int(examples * weight)))


def fuzz_timeout(seconds: float) -> float:
    """A module's pytest-timeout: `seconds` for CI, scaled up with the example count otherwise."""
    base = settings.get_profile(f"tidelog-fuzz-{PROFILE}").max_examples
    override = os.environ.get(EXAMPLES_ENV)
    examples = int(override) if override else base
    return seconds * max(1.0, examples / 200)
