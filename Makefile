# Backa broker — the two commands of the README, and the targets they use.
#
#   make demo   keys for the demo area, then the demo scenario (sets everything up)
#   make test   lint, types and the whole test suite against real services
#
# Each target does its own set-up: the virtual environment (.venv), the
# package with pinned versions (constraints.txt), and the services it needs.

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export BACKA_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/
export BACKA_TEST_PG_URL ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: demo test venv rabbitmq postgres services lint typecheck pytest bench schemas lock clean \
	cluster-up cluster-down cluster-test faults fuzz bench-state

demo: venv rabbitmq
	$(BIN)/backa demo

test: venv services lint typecheck pytest

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt deploy/dev/bootstrap-venv.sh
	deploy/dev/bootstrap-venv.sh $(VENV)

rabbitmq: venv
	deploy/dev/ensure-rabbitmq.sh

postgres: venv
	deploy/dev/ensure-postgres.sh

services: rabbitmq postgres

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv
	deploy/dev/run-pytest.sh $(BIN)/pytest $(PYTEST_ARGS)

# The state at national scale: 1,000,000 consents and 10,000,000 audit entries in a fresh
# PostgreSQL database (about 20 minutes here); bench/results/state_scale.json.
bench-state: venv postgres
	$(BIN)/python -m bench.state_scale

# The full round trip runs long (it is CPU-bound at about 110 messages a second here):
# ROUND_TRIP_ARGS sets its counts (its own defaults: 100,000 for memory, 50,000 backlog).
ROUND_TRIP_ARGS ?= --memory-messages 20000 --backlog 20000
bench: venv
	$(BIN)/python -m bench.envelope
	deploy/dev/ensure-rabbitmq.sh
	$(BIN)/python -m bench.broker_hop
	$(BIN)/python -m bench.round_trip $(ROUND_TRIP_ARGS)
	$(BIN)/python -m bench.audit

# A three-node RabbitMQ cluster on this machine (deploy/cluster/README.md), and the
# scale-out test on its own cluster with a longer stream than `make test` sends.
cluster-up:
	deploy/cluster/cluster.sh start

cluster-down:
	deploy/cluster/cluster.sh stop --purge

CLUSTER_MESSAGES ?= 3000
cluster-test: venv services
	BACKA_CLUSTER_MESSAGES=$(CLUSTER_MESSAGES) deploy/dev/run-pytest.sh $(BIN)/pytest -s -m cluster $(PYTEST_ARGS)

# The fault tests (tests/test_faults.py) with a long stream; `make test` sends 200 a test.
FAULT_MESSAGES ?= 5000
faults: venv services
	BACKA_FAULT_MESSAGES=$(FAULT_MESSAGES) deploy/dev/run-pytest.sh $(BIN)/pytest -s tests/test_faults.py $(PYTEST_ARGS)

# Fuzzing from the OpenAPI documents (schemathesis, against a live broker and five live
# adapters) and of the envelope parser and every mapping (hypothesis); `make test` runs a
# few examples each.
FUZZ_EXAMPLES ?= 1000
fuzz: venv rabbitmq
	BACKA_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) deploy/dev/run-pytest.sh $(BIN)/pytest tests/test_fuzz_openapi.py \
		tests/test_fuzz_adapter_api.py tests/test_fuzz_parsers.py $(PYTEST_ARGS)

# Regenerate the exported JSON Schema after changing a model in schemas/.
schemas: venv
	$(BIN)/python -m schemas.export

# Re-pin constraints.txt from what the current virtual environment resolved.
lock: venv
	$(BIN)/pip freeze --exclude-editable --exclude backa-broker > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis var
