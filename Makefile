# Two commands for a fresh machine:
#   make run    install into .venv, then `dvc repro` the pipeline on the embedded default (digits)
#   make test   install into .venv, then lint (ruff) and run the test suite
VENV := .venv
BIN := $(VENV)/bin
KERAS_CACHE := $(or $(KERAS_HOME),$(HOME)/.keras)/models
OFFLINE_WEIGHTS := ../shared/keras/models
# The review-page test (tests/test_review.py) renders `dvc plots diff` in headless Chromium. DVC's page loads these
# scripts from a CDN, out of reach here: the same versions come from npm. vega-lite 5.2.0 asks for vega ^5.21 as a peer,
# but DVC's page pairs it with 5.20.2, so npm is told to keep that pairing (--legacy-peer-deps).
NPM_PREFIX := .cache/npm
VEGA := vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2

BASE ?= main
PYTHON ?= $(BIN)/python

.PHONY: run test benchmarks-smoke install keras-cache vega review

# Stage commands call `python`: put the venv first on PATH so they run with its packages.
run: install keras-cache
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: install keras-cache vega
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Every benchmark script at its smallest size (tests/test_benchmarks.py, minutes each; CI runs it after the tests)
benchmarks-smoke: install keras-cache
	$(BIN)/python -m pytest -m benchmarks tests/test_benchmarks.py

install: $(BIN)/.installed

# The review against a revision: reports/review-diff.md (params, metrics, plots changed vs BASE) and reports/comment.md
# (reports/review.md followed by it), to post with `cml comment create reports/comment.md` (docs/review.md).
review:
	PATH="$(abspath $(dir $(PYTHON))):$$PATH" $(PYTHON) -m transfer_learning.review_diff $(BASE)

# requirements.txt pins every package; then the project's own package (transfer_learning/, pyproject.toml), editable:
# its commands (transfer-learning) go on the venv's PATH and a change to its code needs no reinstall.
$(BIN)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Machines without internet: copy the ImageNet weights Keras would download into its cache.
keras-cache:
	@if [ -d $(OFFLINE_WEIGHTS) ]; then mkdir -p $(KERAS_CACHE) && cp -n $(OFFLINE_WEIGHTS)/*.h5 $(KERAS_CACHE)/; fi

# Without npm the review-page test is skipped (it fails under CI=true, which must run it).
vega: $(NPM_PREFIX)/.installed

$(NPM_PREFIX)/.installed: Makefile
	@if command -v npm >/dev/null; then \
		npm install --prefix $(NPM_PREFIX) --no-save --no-package-lock --legacy-peer-deps --ignore-scripts --no-audit --no-fund \
			--loglevel=error $(VEGA) && touch $@; \
	else echo "npm not found: the review-page test will be skipped (install Node.js and npm, then make vega)"; fi
