# The same commands on a laptop, in CI (.ci/run) and in the hook.
# `make demo` and `make test` install everything they need on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOKETI := tools/soketi/node_modules/.bin/soketi

.PHONY: demo test lint bench install clean

demo: install  ## the worker on local defaults with a demo stream and a terminal view
	$(BIN)/python -m devtools demo $(DEMO_ARGS)

test: install  ## every test, against real RabbitMQ, Soketi and the MongoDB stand-in
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install  ## the benchmark (bench/README.md); BENCH_ARGS="--events 20000 --runs 3"
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: install  ## ruff, mypy --strict and the import contracts (pyproject.toml)
	$(BIN)/ruff check worker handlers schemas devtools tests bench setup.py
	$(BIN)/ruff format --check worker handlers schemas devtools tests bench setup.py
	$(BIN)/mypy
	$(BIN)/lint-imports

install: $(VENV)/.installed $(SOKETI) clients/node/node_modules/.installed bench/node/node_modules/.installed

# The editable install copies the console's assets from clients/js (setup.py): npm first.
$(VENV)/.installed: pyproject.toml setup.py requirements.lock clients/js/node_modules/.installed clients/js/src/*.js
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $@

$(SOKETI): tools/soketi/package.json tools/soketi/package-lock.json
	npm ci --prefix tools/soketi --no-audit --no-fund --loglevel=error
	touch $@

clients/node/node_modules/.installed: clients/node/package.json clients/node/package-lock.json
	npm ci --prefix clients/node --no-audit --no-fund --loglevel=error
	touch $@

# The bench's node-direct baseline: the pusher npm package (bench/node/direct.js).
bench/node/node_modules/.installed: bench/node/package.json bench/node/package-lock.json
	npm ci --prefix bench/node --no-audit --no-fund --loglevel=error
	touch $@

clients/js/node_modules/.installed: clients/js/package.json clients/js/package-lock.json
	npm ci --prefix clients/js --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf $(VENV) tools/soketi/node_modules
