#!/usr/bin/env bash
# The whole test suite: lint, format, types, tests. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  # Rate-limit tests run a real redis-server on a loopback port, and a Redis Cluster of six,
  # which redis-cli (package redis-tools) creates.
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq redis-server redis-tools >/dev/null
fi

echo "== ruff check";        .venv/bin/ruff check gateway tests scripts
echo "== ruff format";       .venv/bin/ruff format --check gateway tests scripts
echo "== mypy --strict";     .venv/bin/mypy --strict gateway tests
echo "== pytest";            .venv/bin/pytest -q -p no:cacheprovider "$@"
