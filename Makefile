# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each builds its own environment in .venv/ from the pinned requirements first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -c requirements.lock
PYTEST_ARGS ?=

.PHONY: demo ui test test-fast bench system-deps lock clean

$(VENV)/.runtime: requirements.txt requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check pip==25.3
	$(PIP) -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PIP) -r requirements-dev.txt
	touch $@

## demo: train 10 epochs on the synthetic data, tracked to ./mlflow.db, and say where to look
demo: $(VENV)/.runtime
	$(BIN)/python -m train train.epochs=10

## ui: the MLflow UI over the runs `make demo` and `python -m train` recorded in ./mlflow.db, at http://127.0.0.1:5000
ui: $(VENV)/.runtime
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

## test: the whole suite, with the real servers and browser it starts itself
test: $(VENV)/.dev system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## test-fast: the unit tests only (seconds)
test-fast: $(VENV)/.dev
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

## bench: every CPU benchmark (about 50 minutes on 2 cores), written to bench/results/; `python -m bench.gpu` on a CUDA machine
bench: $(VENV)/.dev
	$(BIN)/python -m bench

## system-deps: Debian packages the tests drive (Chromium, Docker engine and registry, debootstrap)
system-deps:
	scripts/install-system-deps.sh

## lock: re-pin every transitive dependency after changing requirements*.txt
lock: $(VENV)/.dev
	{ echo "# Every package of the environment, pinned: make lock regenerates it."; \
	  $(BIN)/pip freeze --all --exclude pip; } > requirements.lock

clean:
	rm -rf outputs multirun mlruns mlflow.db .pytest_cache
