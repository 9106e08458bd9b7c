# Two entry points for a fresh machine:
#   make train   creates .venv, installs ddpm_ms, trains configs/fashion_cpu.yaml
#   make test    creates .venv, installs ddpm_ms[dev], runs the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/fashion_cpu.yaml
TRAIN_ARGS ?=   # e.g. --overwrite (start the run over) or --resume latest
SHARED_DATA := $(abspath ../shared/data/fashion-mnist)
ifneq ($(wildcard $(SHARED_DATA)/train-images-idx3-ubyte),)
export DDPM_MS_DATA_DIR ?= $(SHARED_DATA)
endif

.PHONY: venv train test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

train: venv
	$(PY) scripts/train.py --config $(CONFIG) $(TRAIN_ARGS)

test: venv
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests

bench: venv
	$(PY) bench/bench.py

clean:
	rm -rf $(VENV) runs
