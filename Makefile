# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv, installs what it needs (Debian's chromium for the browser tests), then runs.
# The demo HTML keeps no widget state, so it shows the widgets' static fallbacks (thumbnails inline).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready

.PHONY: demo test lint bench clean chromium stubs

$(READY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

chromium:
	@command -v chromium >/dev/null || { \
	  echo "Installing Debian's chromium for the browser tests..."; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq chromium >/dev/null; }

demo: $(READY)
	mkdir -p build
	$(BIN)/jupyter nbconvert --to html --execute notebooks/01_quickstart.ipynb \
	  --output-dir build --ExecutePreprocessor.timeout=300 \
	  --ExecutePreprocessor.store_widget_state=False
	@echo "Demo written to build/01_quickstart.html"

lint: $(READY)
	$(BIN)/ruff check .

test: $(READY) chromium lint
	$(BIN)/pytest

bench: $(READY)
	$(BIN)/python benchmarks/polling.py
	$(BIN)/python benchmarks/comfyui_ws.py
	$(BIN)/python benchmarks/load_ext.py
	$(BIN)/python benchmarks/sweep.py
	$(BIN)/python benchmarks/journal.py

stubs: $(READY)  # runcomfy_nb/facade.pyi, the blocking facade's types, from the async classes
	$(BIN)/python scripts/make_stubs.py

clean:
	rm -rf $(VENV) build
