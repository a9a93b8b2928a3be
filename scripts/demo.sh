#!/usr/bin/env bash
# Run the whole pipeline on the embedded broker with a live view.
#
#   bash scripts/demo.sh [tradestream demo options, e.g. --duration 60 --rate 100]
#
# Creates .venv and installs the project on first use; needs no servers.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ ! -x .venv/bin/python ]; then
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    echo "demo.sh: installing python3-venv with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  echo "demo.sh: creating .venv" >&2
  python3 -m venv .venv
fi
stamp="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f .venv/.tradestream-install ] || [ "$(cat .venv/.tradestream-install)" != "$stamp" ]; then
  echo "demo.sh: installing the project into .venv (first run takes a minute)" >&2
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$stamp" >.venv/.tradestream-install
fi
exec .venv/bin/tradestream demo "$@"
