# Every target creates the virtual environment on first use, so a fresh clone needs
# nothing beyond Python 3.11+ (and Node.js/npm for `buf`, used by `make lint`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUF := node_modules/.bin/buf
LEDGER_GRPC_ADDRESS ?= 127.0.0.1:50051

.PHONY: install run test lint protos protos-check demo bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(BUF): package.json
	npm install --silent --no-audit --no-fund
	touch $(BUF)

run: $(STAMP)
	$(BIN)/ledger serve --dev --address $(LEDGER_GRPC_ADDRESS)

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP) $(BUF)
	$(BIN)/ruff check ledger tests scripts
	$(BIN)/ruff format --check ledger tests scripts
	$(BIN)/mypy
	$(BUF) lint

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

protos-check: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check

demo: $(STAMP)
	$(BIN)/ledger demo --address $(LEDGER_GRPC_ADDRESS)

# Every scenario in quick mode on PostgreSQL, then those that also apply to the embedded
# SQLite store; one JSON line per result (see docs/performance.md).
bench: $(STAMP)
	$(BIN)/ledger bench all --quick --backend postgres
	$(BIN)/ledger bench rebuild verify append --quick --backend sqlite

clean:
	rm -rf $(VENV) node_modules var .pytest_cache .mypy_cache .ruff_cache
