# MANGOS build farm. Two commands matter:
#   make demo   all set-up on a fresh Debian 12 machine, then build the demo recipes
#   make test   all set-up, then every test (ruff, mypy, pytest)
# Set-up is a fast no-op when everything is already installed.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export MANGOS_FARM_HOME ?= $(CURDIR)/.mangos

# Debian packages the farm and its tests use (installed as root; others get the command to run).
APT_PACKAGES := git bubblewrap build-essential python3-venv ca-certificates openssl dpkg redis-server \
	chromium chromium-driver prometheus

.PHONY: setup apt venv demo-sources demo test lint pytest bench clean

setup: apt venv demo-sources

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${db:Status-Abbrev}' $$p 2>/dev/null | grep -q '^ii' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing -- run: sudo apt-get install$$missing"; exit 1; fi; \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

demo-sources: demo/git/.made

demo/git/.made: demo/make_sources.py $(shell find demo/src -type f 2>/dev/null)
	$(BIN)/python demo/make_sources.py demo/git
	touch $@

demo: setup
	$(BIN)/mangos-farm keys generate --if-missing
	$(BIN)/mangos-farm recipes check recipes
	$(BIN)/mangos-farm rebuild recipes
	@for r in recipes/*.toml; do \
	  commit=$$(sed -n 's/^commit = "\(.*\)"/\1/p' $$r); \
	  echo "$(BIN)/mangos-farm fetch --commit $$commit -o out/demo"; \
	  $(BIN)/mangos-farm fetch --commit $$commit -o out/demo || exit 1; \
	done
	$(BIN)/mangos-farm verify out/demo
	out/demo/greet MANGOS

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest

test: lint pytest

bench: setup
	$(BIN)/python -m bench.bench_plan --recipes 1000

clean:
	rm -rf $(VENV) demo/git out .mypy_cache .ruff_cache .pytest_cache
