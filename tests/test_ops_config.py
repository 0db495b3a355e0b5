"""Every broker setting, not a sample: each one is read from a TOML file, an environment variable
and a flag with flags > env > file > defaults; a bad value from any source stops with one line
naming the setting and the source; the table in docs/operating.md is the generated one; and a
broker process refuses a bad setting with that line and exit status 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from broker.config import SETTINGS, ConfigError, load_config, settings_table_markdown
from tests.brokerproc import REPO_ROOT

pytestmark = pytest.mark.timeout(30)


def kind_of(name: str) -> str:
    spec = SETTINGS[name]
    return spec.type if isinstance(spec.type, str) else spec.type.__name__


def candidates(name: str, tmp_path: Path) -> tuple[Any, Any, Any]:
    """Three valid values of `name` for the file, the environment and the flag, each different
    from the one before it (and the file's from the default where possible). Derived from the
    setting's type, its check (the choices it names) or the example in its meaning, so a new
    setting is covered without editing this test; one none of these fit fails here."""
    spec = SETTINGS[name]
    default, check, kind = spec.default, spec.metadata.get("check"), kind_of(name)
    if name in ("listen", "advertise", "metrics"):
        return "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"
    if name == "voters":
        return "1@a:1", "1@b:2", "1@c:3"
    if kind.startswith("bool"):
        return (not default), default, (not default)
    if kind.startswith("int"):
        base = 1000 if default is None else max(default, 1)
        return base + 1, base + 2, base + 3
    if check is None:  # any text
        return "from-file", "from-env", "from-flag"
    problem = check("\x00 not valid") or ""
    choices = re.search(r"must be one of (.+)$", problem)
    if choices:
        options = [c.strip() for c in choices.group(1).split(",")]
        others = [c for c in options if c != default] or options
        return others[0], (default if default in options else others[-1]), others[-1]
    if "readable file" in problem:
        paths = [tmp_path / f"{name}-{source}.pem" for source in ("file", "env", "flag")]
        for path in paths:
            path.write_text("not checked here\n")
        return tuple(str(path) for path in paths)  # type: ignore[return-value]
    example = re.search(r"e\.g\. (\S+)", spec.metadata["meaning"])
    if example:
        items = example.group(1).split(",")
        values = (items[0], items[-1], example.group(1))
        if len(items) > 1 and not any(check(v) for v in values):
            return values
    raise AssertionError(f"no test values for setting {name} ({kind}): teach candidates() about it")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int) else f'"{value}"'


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_setting_takes_flags_over_env_over_file_over_default(name, tmp_path):
    in_file, in_env, in_flag = candidates(name, tmp_path)
    path = tmp_path / "broker.toml"
    path.write_text(f"{name} = {toml_value(in_file)}\n")
    env_name = "TIDELOG_" + name.upper()
    env_text = str(in_env).lower() if isinstance(in_env, bool) else str(in_env)

    assert getattr(load_config(environ={}), name) == SETTINGS[name].default
    assert getattr(load_config(file=path, environ={}), name) == in_file
    assert getattr(load_config(file=path, environ={env_name: env_text}), name) == in_env
    flag_text = str(in_flag).lower() if isinstance(in_flag, bool) else str(in_flag)
    assert getattr(load_config(file=path, environ={env_name: env_text}, flags={name: flag_text}), name) == in_flag
    # The file also accepts the dashed spelling of the name (as the flags have it).
    path.write_text(f"{name.replace('_', '-')} = {toml_value(in_file)}\n")
    assert getattr(load_config(file=path, environ={}), name) == in_file


def bad_value(name: str) -> str | None:
    """A value `name` refuses, or None for a setting that takes any text (data_dir, a user name)."""
    kind = kind_of(name)
    if kind.startswith("bool"):
        return "maybe"
    if kind.startswith("int"):
        return "many"
    if SETTINGS[name].metadata.get("check") is None:
        return None
    return "not valid here"


CHECKED = [name for name in sorted(SETTINGS) if bad_value(name) is not None]


@pytest.mark.parametrize("name", CHECKED)
def test_a_bad_value_from_any_source_names_the_setting_and_the_source_in_one_line(name, tmp_path):
    bad = bad_value(name)
    path = tmp_path / "broker.toml"
    path.write_text(f'{name} = "{bad}"\n')
    sources = [
        ({"file": path, "environ": {}}, f"config file {path}"),
        ({"environ": {"TIDELOG_" + name.upper(): bad}}, f"environment variable TIDELOG_{name.upper()}"),
        ({"environ": {}, "flags": {name: bad}}, f"flag --{name.replace('_', '-')}"),
    ]
    for kwargs, source in sources:
        with pytest.raises(ConfigError) as info:
            load_config(**kwargs)
        message = str(info.value)
        assert f"setting {name} from {source}" in message and "\n" not in message, message


@pytest.mark.parametrize("name", sorted(n for n, s in SETTINGS.items() if s.metadata.get("check") and kind_of(n).startswith("int")))
def test_out_of_range_numbers_are_refused_naming_the_setting(name):
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, flags={name: "-2"})
    assert str(info.value).startswith(f"setting {name} from flag --{name.replace('_', '-')}: -2 must be")


def test_unknown_settings_are_refused_from_each_source(tmp_path):
    path = tmp_path / "broker.toml"
    path.write_text("replica_lag_max_ms = 5\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'replica_lag_max_ms'$"):
        load_config(file=path, environ={})
    with pytest.raises(ConfigError, match="TIDELOG_RAFT_TICKS: unknown setting 'raft_ticks'"):
        load_config(environ={"TIDELOG_RAFT_TICKS": "3"})
    # Client-side variables of the same prefix are not broker settings and are let through.
    assert load_config(environ={"TIDELOG_BOOTSTRAP": "h:1", "TIDELOG_CONFIG": "x"}).node_id == 1


def test_the_documented_table_is_the_generated_one():
    text = (REPO_ROOT / "docs" / "operating.md").read_text()
    table = settings_table_markdown()
    assert table in text, "docs/operating.md: paste broker.config.settings_table_markdown() into 'Configure'"


def test_a_broker_process_refuses_a_bad_setting_with_one_line(tmp_path):
    path = tmp_path / "broker.toml"
    path.write_text("min_insync_replicas = 0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_")}
    env["TIDELOG_REPLICA_LAG_TIME_MAX_MS"] = "5000"
    done = subprocess.run(
        [sys.executable, "-m", "broker.cli", "broker", "--config", str(path), "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert f"setting min_insync_replicas from config file {path}: 0 must be > 0" in done.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was opened
