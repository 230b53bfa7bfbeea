#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs the project with its dev tools into it.
# Sourced by demo.sh and test.sh; idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "llm-gateway needs Python 3.11 or newer ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
if ! [ -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    # Debian splits venv out of python3; install it once, as root or with sudo.
    sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq python3-venv >/dev/null
    "$PYTHON" -m venv .venv
  fi
fi
stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)
if ! [ -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v -E '^WARNING: Location|BuildBackendWarning' || true
  .venv/bin/python -c 'import gateway, aiohttp, pytest, openai' || { echo "install failed" >&2; exit 1; }
  rm -f .venv/.installed-* && touch "$stamp"
fi
