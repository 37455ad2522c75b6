# Two commands for a fresh machine:
#   make run    install into .venv, then `dvc repro` the pipeline on the embedded default (digits)
#   make test   install into .venv, then run the test suite
VENV := .venv
BIN := $(VENV)/bin
KERAS_CACHE := $(or $(KERAS_HOME),$(HOME)/.keras)/models
OFFLINE_WEIGHTS := ../shared/keras/models

.PHONY: run test install keras-cache

# Stage commands call `python`: put the venv first on PATH so they run with its packages.
run: install keras-cache
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: install keras-cache
	$(BIN)/python -m pytest

install: $(BIN)/.installed

$(BIN)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

# Machines without internet: copy the ImageNet weights Keras would download into its cache.
keras-cache:
	@if [ -d $(OFFLINE_WEIGHTS) ]; then mkdir -p $(KERAS_CACHE) && cp -n $(OFFLINE_WEIGHTS)/*.h5 $(KERAS_CACHE)/; fi
