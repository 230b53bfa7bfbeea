#!/bin/sh
# Entrypoint of the llm-gateway image (deploy/Dockerfile).
#
# No arguments, or `serve` and options: runs the gateway from these variables (the image
# sets their defaults; a container's environment overrides them):
#   GATEWAY_CONFIG   the configuration file        image default /etc/llm-gateway/config/config.yaml
#   GATEWAY_HOST     the address to listen on      image default 0.0.0.0 (every interface of the
#                                                  container: 127.0.0.1 would be unreachable)
#   GATEWAY_PORT     the port                      image default 8080 (overrides server.port)
#   GATEWAY_WORKERS  worker processes per container (serve --workers); unset or empty: the
#                    option is not passed
# Options after `serve` come last and win (e.g. `serve --port 9000`).
# Any other first argument is another llm-gateway command, run as given:
#   check-config FILE, hash-key, fake-upstream --host 0.0.0.0 ...
#
# exec: the gateway replaces this shell, so it is the container's PID 1 and receives the
# stop signal (SIGTERM) itself, and drains.
set -eu

if [ "$#" -eq 0 ] || [ "$1" = serve ]; then
  [ "$#" -eq 0 ] || shift
  if [ -n "${GATEWAY_WORKERS:-}" ]; then
    set -- --workers "$GATEWAY_WORKERS" "$@"
  fi
  set -- serve \
    --config "${GATEWAY_CONFIG:?GATEWAY_CONFIG: the configuration file}" \
    --host "${GATEWAY_HOST:?GATEWAY_HOST: the address to listen on}" \
    --port "${GATEWAY_PORT:?GATEWAY_PORT: the port}" \
    "$@"
fi
exec llm-gateway "$@"
