#!/usr/bin/env bash
# Install what bench/peers.py needs to run the peer brokers next to tidelog (Debian 12, root):
# redis-server and nats-server from Debian, and their Python clients from PyPI. Idempotent:
# anything already present is left alone. The services are NOT started here (policy-rc.d keeps
# Debian's packages from auto-starting; bench/peers.py starts and stops them itself through the
# shared start_peers.sh / stop_peers.sh, bound to 127.0.0.1 only).
set -euo pipefail
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup_peers: need root to apt-get install ${need_apt[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' init scripts from starting system-wide daemons on install.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}"
fi
PY=${PYTHON:-python3}
$PY - <<'PYEOF' || $PY -m pip install -q 'redis[hiredis]' nats-py
import importlib.util, sys
missing = [m for m in ("redis", "hiredis", "nats") if importlib.util.find_spec(m) is None]
sys.exit(1 if missing else 0)
PYEOF
echo "setup_peers: redis-server $(redis-server --version | grep -o 'v=[^ ]*'), $(nats-server --version)"
