# One entry point. `make serve`: set up and serve the committed model; `make test`: set up and run every test.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup serve test browser lint bench train protos clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[ml,dev]"
	touch $(STAMP)

setup: $(STAMP) protos

protos: $(STAMP)
	$(PY) -m gateway.protos_build

serve: setup
	$(PY) -m gateway

# Debian's chromium + chromium-driver for tests/test_demo_page.py (needs root for apt; without it those tests skip).
# Only those two and their dependencies, without recommended packages (26 new packages, none upgraded on Debian 12,
# measured with `apt-get install -s`; with recommends: 132, upgrading systemd and perl-base).
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver) || echo "chromium unavailable: browser tests will skip"

test: setup browser
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) -m bench

train: setup
	$(PY) -m exporter all --gsd-m 10

clean:
	rm -rf $(VENV) gateway/_proto .pytest_cache
