# Two commands on a fresh Debian machine (as root, or with the Debian packages already installed):
#   make demo   set up, then run sweeps/demo.yaml on Fashion-MNIST with the local executor and print its table
#   make test   set up, start the single-node Slurm test cluster and a PostgreSQL server, run the whole test suite
# Set-up is idempotent: a second `make demo` reuses .venv and re-runs nothing that finished.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Debian packages: venv support, and Fashion-MNIST at /usr/share/datasets/fashion-mnist
# (without them the loader downloads Fashion-MNIST into ~/.cache/seedrun instead).
APT_PACKAGES := python3-venv dataset-fashion-mnist

.PHONY: setup demo test bench clean-demo

$(VENV)/.installed: pyproject.toml
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "apt-get install $$missing"; \
	    apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1; apt-get install -y -q --no-install-recommends $$missing >/dev/null; } || \
	    echo "warning: apt-get could not install $$missing; Fashion-MNIST will be downloaded instead"; \
	  fi; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	# compat: a plain path in a .pth file; the default editable finder costs every start 20 ms of imports
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,wandb]' --config-settings editable_mode=compat
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/seedrun sweep sweeps/demo.yaml

test: setup
	tests/cluster/start-slurm.sh
	tests/cluster/start-postgres.sh
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/cli_latency.py
	$(BIN)/python benchmarks/knn.py

clean-demo:
	rm -rf .seedrun
