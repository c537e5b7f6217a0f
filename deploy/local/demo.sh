#!/usr/bin/env bash
# `make demo`: bring up the local stack, then run the whole loop with a live view and a report.
# The services run as tracked processes (logs and PID files under .run/); Ctrl-C stops them.
# Users with Docker can run the same stack with `docker compose up` instead of stack.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash deploy/local/stack.sh up
# A Prometheus left running from an earlier `make up` may predate the current alert rules.
set -a; . ./.env; set +a
curl -fsS -X POST "http://127.0.0.1:${PROMETHEUS_PORT}/-/reload" >/dev/null || true
exec .venv/bin/python -m driftline.services.demo "$@"
