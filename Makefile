# make train   — install scorelab (what training needs) into .venv and run the default
#                experiment (MNIST-5k, CPU, < 10 min)
# make test    — install scorelab with the test extras (.[dev]) and run the default tests
# Each install is done once (a stamp file in .venv), again only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: install install-dev train test test-slow clean

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# the package and what training needs
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -e .
	touch $@

# plus pytest, diffusers and the sweeper / launcher plugins the tests cover
$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -e '.[dev]'
	touch $@

train: install
	$(PY) train.py

test: install-dev
	$(PY) -m pytest

test-slow: install-dev
	$(PY) -m pytest -m slow

clean:
	rm -rf outputs multirun .pytest_cache
