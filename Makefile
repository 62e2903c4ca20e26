# The two commands: `make run` (set up and run the registry on its embedded
# default) and `make test` (set up and run the whole test suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/registry migrate
	$(BIN)/registry serve --host $(HOST) --port $(PORT) $(ARGS)

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	-$(BIN)/python benchmarks/freeze_vs_freeze_graph.py
	-$(BIN)/python benchmarks/push_to_ready.py
	-$(BIN)/python benchmarks/upload_memory.py
	-$(BIN)/python benchmarks/conversion_memory.py
	-$(BIN)/python benchmarks/label_service.py
	-$(BIN)/python benchmarks/label_memory.py
	-$(BIN)/python benchmarks/fuzz_api.py
	-$(BIN)/python benchmarks/load.py
	-$(BIN)/python benchmarks/model_page.py
	-$(BIN)/python benchmarks/scale.py
	-$(BIN)/python benchmarks/metrics_overhead.py
	-$(BIN)/python benchmarks/tf_serving_api.py
	-$(BIN)/python benchmarks/gc_pauses.py
	-$(BIN)/python benchmarks/search.py
	-$(BIN)/python benchmarks/compare.py
	-$(BIN)/python benchmarks/shadow_overhead.py
	-$(BIN)/python benchmarks/floors.py

clean:
	rm -rf $(VENV) registry-data .pytest_cache .import_linter_cache benchmarks/.work
