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
stamp=.venv/.installed-$(sha256sum < pyproject.toml | cut -c1-16)
if ! [ -f "$stamp" ]; then
  echo "installing llm-gateway and its dev tools into .venv (log: .venv/install.log)"
  if ! { .venv/bin/python -m pip install --upgrade pip \
         && .venv/bin/python -m pip install -e '.[dev]'; } > .venv/install.log 2>&1; then
    tail -30 .venv/install.log >&2
    echo "install failed; full log in .venv/install.log" >&2
    exit 1
  fi
  rm -f .venv/.installed-* && touch "$stamp"
fi
