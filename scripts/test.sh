#!/usr/bin/env bash
# The whole test suite: lint, format, types, tests. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh

# Debian packages some tests run: redis-server (rate-limit tests run a real one on a
# loopback port), redis-cli, package redis-tools (creates the tests' Redis Cluster of six),
# haproxy (`haproxy -c` on deploy/haproxy.cfg), kubectl, package kubernetes-client
# (`kubectl kustomize` renders deploy/kubernetes), and the benchmark's nginx (package
# nginx-light: `nginx -t` on its configurations, its upstream answers), wrk, and promtool
# (package prometheus: `promtool test rules` on deploy/prometheus/alerts.yaml), and logrotate
# (runs deploy/logrotate/llm-gateway against a serving gateway).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v logrotate >/dev/null 2>&1 || [ -x /usr/sbin/logrotate ] || missing+=(logrotate)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== ruff check";        .venv/bin/ruff check gateway tests scripts bench
echo "== ruff format";       .venv/bin/ruff format --check gateway tests scripts bench
echo "== mypy --strict";     .venv/bin/mypy --strict gateway tests bench
echo "== pytest";            .venv/bin/pytest -q -p no:cacheprovider "$@"
