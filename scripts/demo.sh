#!/usr/bin/env bash
# Quick start: the gateway on examples/demo.yaml with the fake upstream, on 127.0.0.1:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
exec .venv/bin/llm-gateway demo "$@"
