# The two commands a newcomer needs are `make local` and `make test`; both set up first.
.PHONY: setup local test lint format preview bench

setup:
	@bash scripts/setup.sh

## Set up, then run the platform's main job locally: the offline preview of the dev stack,
## then the service plane on loopback (S3, tracking server, example pipeline, model server,
## Prometheus, Alertmanager, drift receiver), the retraining loop once with demo timings
## (drift noticed in seconds, not the platform's 30 minutes), then everything until Ctrl-C.
local: setup
	.venv/bin/python -m infra.cli preview --stack dev --counts-only --json build/inventory-dev.json
	.venv/bin/python -m infra.cli local --retrain-demo --scrape-interval 2s --drift-interval 2 --drift-for 10s

## Set up, lint (ruff, mypy), then run every test. `pytest -m "not slow"` skips the load tests locally.
test: lint
	.venv/bin/python -m pytest

## Lint: ruff (pyflakes, pycodestyle, import order, bugbear; code formatted as `make format`
## leaves it) over the tree, then mypy over infra/, components/ and services/ (settings in
## pyproject.toml).
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

## Format: ruff format over the tree, at the line length in pyproject.toml (120).
format: setup
	.venv/bin/ruff format .

preview: setup
	.venv/bin/python -m infra.cli preview --stack $(or $(STACK),dev)

## Benchmark: this model server against `mlflow models serve` (wrk, loopback).
bench: setup
	.venv/bin/python -m benchmarks.serving
