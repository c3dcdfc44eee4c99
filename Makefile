# Two commands matter: `make run` (the main job on the embedded demo data) and `make test`.
# Every target sets up .venv from the committed lock first; nothing is installed by hand.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := run

PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.synced

export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON := $(PYTHON)
export UV_LINK_MODE := copy
# Precompile bytecode at install: some environments set PYTHONDONTWRITEBYTECODE, and then every
# stage process would recompile torch, mlflow and dvc from source (about 10 s each).
export UV_COMPILE_BYTECODE := 1
export DVC_NO_ANALYTICS := 1
# Without PREFECT_API_URL a flow run starts Prefect's temporary local server (~15 s here);
# give it room on a busy machine.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup run serve test test-fast lint typecheck format bench bench-gpu bench-int8 bench-science check-arm image clean

## setup: create or update .venv from uv.lock (quick when nothing changed)
setup: $(STAMP)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-extras
	touch $@

# The key pair that signs the bundles (`aider-edge keygen`), made once; not when
# AIDER_EDGE_SIGNING_KEY names a key kept elsewhere.
SIGNING_KEY := keys/bundle-signing.key
SIGNING := $(if $(AIDER_EDGE_SIGNING_KEY),,$(SIGNING_KEY))

$(SIGNING_KEY): | $(STAMP)
	$(BIN)/aider-edge keygen

## run: the main job on the embedded default: the retraining flow once (DVC stages, registry,
## promotion, signed drone bundle in dist/bundle); `dvc repro` alone runs just the stages
run: setup $(SIGNING)
	$(BIN)/python flows/retrain.py

## serve: the retraining flow on its cron schedule (flow.cron in params.yaml) until stopped
serve: setup $(SIGNING)
	$(BIN)/python flows/retrain.py --serve

## test: lint, then the whole test suite (the slow integration tests included)
test: setup lint
	$(BIN)/python -m pytest

## test-fast: the suite without the tests marked slow (real DVC/git repos, Prefect server,
## clean-venv installs, a trained and exported model); a few minutes
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

## lint: ruff lint + format check, mypy over src/ and flows/, hadolint on the Dockerfile
lint: setup typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint --config .hadolint.yaml Dockerfile

## typecheck: mypy over src/ and flows/ (settings in pyproject.toml)
typecheck: setup
	$(BIN)/mypy

## format: apply ruff's fixes and formatting
format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## bench: the performance benchmarks (results in benchmarks/results/)
bench: setup
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(BIN)/python $$script; done

## bench-gpu: training on a CUDA GPU (img/s per AMP mode and batch size, CPU/GPU parity, the
## paper setup's wall time) into benchmarks/results/gpu.{json,md}; without CUDA it says so and stops
bench-gpu: setup
	$(BIN)/python benchmarks/bench_gpu.py

## bench-int8: why INT8 loses accuracy on the demo model and what each remedy does (trains the
## demo's selected run first, about 5 min) into benchmarks/results/int8.{json,md};
## ARGS=--study: the same run trained 30 epochs (about 15 min), into int8_study.{json,md}
bench-int8: setup
	$(BIN)/python benchmarks/bench_int8.py $(ARGS)

## bench-science: the seeded study on Fashion-MNIST and the synthetic data (about 40-90 min on
## 2 cores; resumable; installs the Debian package dataset-fashion-mnist when missing)
bench-science: setup
	$(BIN)/python benchmarks/science/study.py

## check-arm: the bundle and the exported models under emulated drone CPUs (qemu-user, a Debian arm64
## sysroot and the lock's aarch64 wheels, built once under .cache/arm/) against this host on the test
## split: logit parity, argmax agreement, G-Mean, kernels; benchmarks/results/arm.{json,md}. Needs
## `make run` first and root the first time (apt-get, debootstrap); about 5 minutes
check-arm: setup
	$(BIN)/python benchmarks/check_arm.py $(ARGS)

## image: build the Dockerfile's runtime image with buildah (chroot isolation, vfs storage, no Docker
## engine; a local Debian base when python:3.11-slim cannot be pulled), run `predict` in it on
## dist/bundle (or BUNDLE=dir) and record its size in benchmarks/results/image.{json,md}. Needs root;
## installs buildah and debootstrap when missing; a few minutes, so not part of `make test`
image: setup
	$(BIN)/python tools/image/build.py $(BUNDLE)

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .ruff_cache
