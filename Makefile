# tfship: export Keras models, serve them with TensorFlow Serving, validate what the server answers.
# `make help` lists the targets. Every target creates the virtual environment it needs.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TFSHIP := $(VENV)/bin/tfship
STAMP := $(VENV)/.tfship-installed

DEFAULT_MODEL := examples/build/digits_cnn.h5
MODEL ?= $(DEFAULT_MODEL)
NAME ?= digits
REPO ?= models
KEYS ?= keys
ENGINE ?= auto
HOST ?= 127.0.0.1
GRPC_PORT ?= 8500
REST_PORT ?= 8501
REPORT ?= reports/validate
EXPORT_ARGS ?=
SERVE_ARGS ?=
PYTEST_ARGS ?=
SAMPLES := $(if $(filter $(DEFAULT_MODEL),$(MODEL)),--samples examples/build/digits_samples.npz,)

.DEFAULT_GOAL := help
PACKAGE_DIRS := tfship exporter serving client

.PHONY: help install lint test demo example keys export serve reload stop status validate bench clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  Variables: MODEL=path NAME=name REPO=$(REPO) ENGINE=auto|docker|local KEYS=$(KEYS) GRPC_PORT=$(GRPC_PORT)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install tfship with everything it needs

lint: $(STAMP) ## ruff and mypy over the package (part of make test)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy $(PACKAGE_DIRS)

test: lint ## Lint, then run the test suite (PYTEST_ARGS='-m "not slow"' for the quick run)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP) ## Train the example, export it signed, serve it on the local engine, validate over gRPC, stop
	@bash examples/demo.sh

example: $(STAMP) ## Train the example digits CNN (scikit-learn's bundled data) into examples/build
	$(PY) examples/train_digits.py

keys: $(STAMP) ## Create a signing key pair in KEYS (kept if it exists)
	@test -f $(KEYS)/signing_key.pem || $(TFSHIP) keys generate --out $(KEYS)

$(DEFAULT_MODEL): | $(STAMP)
	$(PY) examples/train_digits.py

export: $(STAMP) keys $(if $(filter $(DEFAULT_MODEL),$(MODEL)),$(DEFAULT_MODEL)) ## Export MODEL as a new signed version of NAME in REPO
	$(TFSHIP) export $(MODEL) --name $(NAME) --repo $(REPO) --sign-key $(KEYS)/signing_key.pem $(SAMPLES) $(EXPORT_ARGS)

serve: $(STAMP) ## Verify and serve REPO (ENGINE=auto: Docker when an engine answers, else the local engine)
	$(TFSHIP) serve up --repo $(REPO) --engine $(ENGINE) --host $(HOST) --grpc-port $(GRPC_PORT) --rest-port $(REST_PORT) --public-key $(KEYS)/signing_key.pub --detach $(SERVE_ARGS)

reload: $(STAMP) ## Verify REPO again and have the running engine serve what passes (refuses unverified versions)
	$(TFSHIP) serve reload --repo $(REPO) --public-key $(KEYS)/signing_key.pub

stop: $(STAMP) ## Stop the engine serving REPO
	$(TFSHIP) serve down --repo $(REPO)

status: $(STAMP) ## Show which engine serves REPO and every version's state
	$(TFSHIP) serve status --repo $(REPO)

validate: $(STAMP) ## Validate the served NAME against its latest golden set (report in REPORT)
	$(TFSHIP) validate --target $(HOST):$(GRPC_PORT) --model $(NAME) --golden $(REPO)/$(NAME)/$$(ls $(REPO)/$(NAME) | grep -E '^[0-9]+$$' | sort -n | tail -1)/golden.npz --report $(REPORT)

bench: $(STAMP) ## Latency and throughput of the served NAME
	$(TFSHIP) bench --target $(HOST):$(GRPC_PORT) --model $(NAME) --concurrency 1,4,16 --duration 5 --report reports/bench

IMAGE ?= tfship-model-server
.PHONY: image test-images

image: ## Build tfship's server image IMAGE (tensorflow/serving's contract) from python:3.11-slim; needs Docker Hub
	docker build -f docker/model-server.Dockerfile -t $(IMAGE) .

test-images: $(STAMP) ## Build tfship-test-base and tfship-model-server with no registry (Debian packages + a wheelhouse)
	bash docker/build-test-images.sh all

clean: ## Remove the example build, reports and the demo folder (not models/ or keys/)
	rm -rf examples/build reports build/demo
