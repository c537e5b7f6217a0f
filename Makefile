# Driftline — run `make` for the list of targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
PY := .venv/bin/python
PROTOS := $(shell find proto -name '*.proto' | sort)
DATAPLANE := services/inference/dataplane/Cargo.toml

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: setup
setup: ## Build the Python environment from nothing (installs uv from PyPI if absent)
	@command -v cargo >/dev/null 2>&1 || { echo "make setup: Rust 1.85+ (cargo) builds ingestion's native fast path; install it with rustup (https://rustup.rs)"; exit 1; }
	@command -v uv >/dev/null 2>&1 || [ -x "$(UV)" ] || python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
	@$$(command -v uv || echo "$(UV)") sync --frozen --all-packages --python 3.11

.PHONY: dataplane
dataplane: ## Build inference's compiled data plane, which serves its gRPC APIs (ADR 0011)
	@cargo build --quiet --release --manifest-path $(DATAPLANE)

.PHONY: proto
proto: ## Regenerate the committed protobuf/gRPC code under libs/proto
	@find libs/proto/driftline -name '*_pb2*.py*' -delete
	@$(PY) -m grpc_tools.protoc -Iproto --python_out=libs/proto --pyi_out=libs/proto --grpc_python_out=libs/proto $(PROTOS)

.PHONY: proto-check
proto-check: proto ## Fail when the committed generated code is stale
	@git diff --exit-code --stat -- libs/proto || (echo "generated code is stale: run 'make proto' and commit" && exit 1)
	@test -z "$$(git status --porcelain -- libs/proto)" || (git status --porcelain -- libs/proto && echo "untracked generated files: run 'make proto' and commit" && exit 1)

.PHONY: settings-doc
settings-doc: ## Regenerate docs/settings.md from the services' Settings classes
	@$(PY) -m driftline.services.cli settings > docs/settings.md

.PHONY: up
up: ## Start the local stack: Kafka (KRaft), Redis, Prometheus; then create the topics
	@bash deploy/local/stack.sh up
	@$(PY) -m driftline.services.cli topics create

.PHONY: down
down: ## Stop the local stack
	@bash deploy/local/stack.sh down

.PHONY: status
status: ## Show what of the local stack is running
	@bash deploy/local/stack.sh status

.PHONY: lint
lint: ## ruff, mypy, rustfmt and clippy for the native crates, gofmt and go vet for deploy/tools
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check .
	@$(PY) -m mypy libs/kit libs/featurestore services
	@cargo fmt --check --manifest-path services/ingestion/fastgate/Cargo.toml
	@cargo clippy --quiet --release --manifest-path services/ingestion/fastgate/Cargo.toml -- -D warnings
	@cargo fmt --check --manifest-path $(DATAPLANE)
	@cargo clippy --quiet --release --all-targets --manifest-path $(DATAPLANE) -- -D warnings
	@test -z "$$(gofmt -l deploy/tools)" || { gofmt -l deploy/tools; echo "gofmt: run gofmt -w deploy/tools"; exit 1; }
	@cd deploy/tools && go vet ./...

.PHONY: test
test: setup dataplane ## Run every test (unit, contract, integration, e2e) against the real local stack
	@bash deploy/local/test.sh

.PHONY: unit
unit: ## Run the unit tests only (no stack needed)
	@$(PY) -m pytest -m "not integration and not e2e" -q

.PHONY: demo
demo: setup dataplane ## Run the whole loop end to end on the local stack, with a live view and a report
	@bash deploy/local/demo.sh

.PHONY: bench
bench: ## Run the benchmarks under bench/ (needs `make up`)
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
