#!/usr/bin/env bash
# `make test`: start the real local stack, run every test tier against it, stop the stack even
# when tests fail. Tiers run in order so a broken foundation fails fast:
#   1. generated code is current (make proto-check) and ruff is clean
#   2. unit and contract tests (no stack needed), and the Rust crate's own tests
#   3. integration tests (real Kafka, Redis, Prometheus, PostgreSQL)
#   4. end-to-end tests (the whole loop)
#   5. tests that restart a shared server (the broker), last so nothing else feels it
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=.venv/bin/python
# The services' and tests' settings for the local stack (ports, credentials, registry token).
set -a
# shellcheck source=/dev/null
. ./.env
set +a
PYTEST=(.venv/bin/python -m pytest -p no:cacheprovider)

started_here=0
cleanup() {
    local rc=$?
    if ((started_here)); then
        echo "== stopping the local stack"
        bash deploy/local/stack.sh down || true
    fi
    exit "$rc"
}
trap cleanup EXIT INT TERM

# The tests build deploy/tools (Go) to check docker-compose.yml and the Dockerfile.
command -v go >/dev/null || { echo "make test: Go 1.24+ (go) is needed to check docker-compose.yml and the Dockerfile" >&2; exit 1; }

echo "== generated code is current"
make --no-print-directory proto-check
echo "== lint"
$PY -m ruff check --quiet .

echo "== unit and contract tests"
"${PYTEST[@]}" -m "not integration and not e2e" -q
echo "== native unit tests (cargo)"
cargo test --quiet --release --manifest-path services/ingestion/fastgate/Cargo.toml
cargo test --quiet --release --manifest-path services/inference/dataplane/Cargo.toml

echo "== starting the local stack (Kafka, Redis, Prometheus, PostgreSQL)"
if ! bash deploy/local/stack.sh status >/dev/null 2>&1; then
    started_here=1
fi
STACK_WITH_POSTGRES=1 bash deploy/local/stack.sh up
$PY -m driftline.services.cli topics create

# The broker's own start-up log says which Kafka runs (the tests' header repeats it).
echo "== broker: $(grep -ho 'Kafka version: [^ ,]*' "${DRIFTLINE_RUN_DIR:-.run}/logs/kafka.log" | tail -n 1)"
echo "== integration tests"
"${PYTEST[@]}" -m "integration and not disruptive"
echo "== end-to-end tests"
"${PYTEST[@]}" -m e2e -q
echo "== disruptive tests (restart shared servers)"
"${PYTEST[@]}" -m disruptive -q
