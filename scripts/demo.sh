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
# The demo needs only the runtime dependencies; scripts/test.sh adds the dev tools.
stamp="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f .venv/.tradestream-runtime ] || [ "$(cat .venv/.tradestream-runtime)" != "$stamp" ]; then
  echo "demo.sh: installing the project into .venv (about half a minute on first run)" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -e .
  echo "$stamp" >.venv/.tradestream-runtime
fi
exec .venv/bin/tradestream demo "$@"
