# driftloop — `make help` lists the targets. Quickstart: `make demo`, then `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := redis-server prometheus docker-compose
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help install system-deps demo sizes test test-unit test-integration test-e2e up down status schemas dashboards docs docs-serve lint format clean bench bench-governance bench-inference bench-http bench-inference-s3 bench-data bench-handlers bench-drift bench-faults bench-cli bench-learning bench-learning-live bench-stack bench-broker bench-scale

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-17s %s\n", $$1, $$2}'

install: system-deps $(VENV)/.installed ## install everything: system packages (apt) and the uv workspace

system-deps: ## apt-get install redis-server, prometheus, docker-compose, stunnel4, chromium where missing
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v stunnel >/dev/null || missing="$$missing stunnel4"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: uv.lock pyproject.toml shared/pyproject.toml $(wildcard services/*/pyproject.toml)
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen
	@touch $@

demo: install ## run the closed-loop drift demo on the embedded local stack (summary + plot)
	$(BIN)/driftloop demo

test: install ## run every test: unit, integration (real broker + redis), end-to-end loop
	$(BIN)/pytest

test-unit: install ## unit tests and docstring examples (no I/O)
	$(BIN)/pytest tests/unit shared/driftloop services

test-integration: install ## integration tests against a real broker and redis-server
	$(BIN)/pytest tests/integration

test-e2e: install ## the whole loop through real processes
	$(BIN)/pytest tests/e2e

up: install ## start the local stack (broker, redis, prometheus, six services) in .driftloop/
	$(BIN)/driftloop up

down: ## stop the local stack started by `make up`
	@[ -x $(BIN)/driftloop ] && $(BIN)/driftloop down || true

status: ## processes of the local stack and the champion per model
	$(BIN)/driftloop status

schemas: install ## regenerate schemas/ (JSON Schema per message, AsyncAPI per service)
	$(BIN)/python schemas/generate.py

dashboards: install ## regenerate the Grafana dashboards (infra/grafana/dashboards/*.json)
	$(BIN)/python infra/grafana/dashboards.py

docs: install ## build the docs site into var/site (mkdocs --strict; the reference is generated from the code)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: install ## serve the docs site at http://127.0.0.1:8000 while you edit
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

lint: install ## ruff (lint + format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared/driftloop services

format: install ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: down ## remove the local stack's run directory and demo output
	rm -rf .driftloop var

bench: bench-governance bench-inference bench-http bench-inference-s3 bench-data bench-handlers bench-broker bench-stack bench-drift bench-faults bench-cli bench-learning ## run every benchmark (tables printed, JSON in bench/results/)

bench-inference: install ## inference vs a batched echo ceiling: throughput, latency at 1k/5k req/s, RSS, swap
	$(BIN)/python -m bench.inference

bench-http: install ## the v2 HTTP API: answers/s and p99 vs a no-model handler in the same server and vs MLServer (installed on first use)
	$(BIN)/python -m bench.http

bench-inference-s3: install ## bench-inference with the artifacts on a local S3-protocol server
	$(BIN)/python -m bench.inference --object-store s3

bench-data: install ## ingest -> feature -> Redis + Parquet vs the echo ceiling: events/s, p99, bytes/row
	$(BIN)/python -m bench.data

bench-handlers: install ## the data path's handlers in process: CPU per record of ingest and feature vs parsing the JSON
	$(BIN)/python -m bench.handlers

bench-faults: install ## faults under load on the whole local stack: lost, duplicates, recovery, RSS
	$(BIN)/python -m bench.faults

bench-drift: install ## drift detection through the running system: 8 streams (6 concept drifts, 2 covariate shifts), 100k stationary samples each
	$(BIN)/python -m bench.drift

bench-scale: install ## inference 1 -> 2 -> 3 -> 2 -> 1 instances on 6 partitions under load: results/s per step, lost, repeated
	$(BIN)/python -m bench.scale

sizes: install ## installed size of each image's dependency closure, from the lock (bench/results/sizes.json)
	$(BIN)/python -m bench.sizes

bench-cli: install ## start-up of `driftloop --help` and subcommand helps vs `python -c pass`: wall, CPU
	$(BIN)/python -m bench.cli

bench-broker: install ## the embedded broker as it fills: one hop's latency and the broker's CPU, fresh and full
	$(BIN)/python -m bench.broker

bench-stack: install ## the whole local stack under labelled traffic vs an echo: burst, latency, sustained rate, CPU, lag
	$(BIN)/python -m bench.stack

bench-learning: install ## retraining policies backtested on real and synthetic drifting streams, labels late
	$(BIN)/python -m bench.learning

bench-learning-live: install ## the live loop on two real streams vs their backtest, the recommended policy
	$(BIN)/python -m bench.learning_live weather
	$(BIN)/python -m bench.learning_live bikeshare

bench-governance: install ## TrainModel -> new version serving, p50 of 5 runs on 20k SEA rows
	$(BIN)/python -m bench.governance
